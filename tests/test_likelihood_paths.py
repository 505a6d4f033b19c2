"""Which path likelihood scoring takes on each engine, what it costs in tokens, and vLLM's
start-up self-check of its prefix cache (real engines on the tiny model, float32)."""

import logging
from dataclasses import replace
from typing import Any

import pytest

from itdr_batch.datasets import SAMPLE, read_movielens
from itdr_batch.engines import Engine
from itdr_batch.engines import vllm as vllm_module
from itdr_batch.engines.vllm import VllmEngine
from itdr_batch.prompts.build import PromptConfig, build_prompts
from itdr_batch.scoring import Row, Scorer, ScoringConfig, rows_from_prompts
from itdr_batch.tasks import Mode, Task

AGREEMENT = 1e-4


@pytest.fixture(scope="module")
def rows() -> list[Row]:
    """TKR prompts of 6 real users, 5 candidates each, scored with adapter a1."""
    data = read_movielens(SAMPLE)
    assert data.interactions is not None
    users = data.interactions.select("user_id").unique().sort("user_id").head(6)
    config = PromptConfig(task=Task.TKR, chat="qwen", history_len=5, candidates=5, seed=5)
    return rows_from_prompts(build_prompts(users, data.interactions, data.items, config), "a1")


def likelihood(engine: Engine, tokenizer: Any, rows: list[Row]) -> list[list[float]]:
    scorer = Scorer(engine, tokenizer, ScoringConfig(Task.TKR, Mode.LIKELIHOOD, "qwen"))
    scored = scorer.score(rows)
    failed = [(s.status, s.detail) for s in scored if s.status != "ok" or not s.scores]
    assert not failed
    return [s.scores or [] for s in scored]


def assert_close(a: list[list[float]], b: list[list[float]]) -> None:
    diffs = [abs(x - y) for p, q in zip(a, b, strict=True) for x, y in zip(p, q, strict=True)]
    assert max(diffs) < AGREEMENT


@pytest.mark.slow
def test_transformers_reads_each_prompt_once_plus_the_answers(
    hf_engine: Engine, tokenizer: Any, rows: list[Row]
) -> None:
    before = replace(hf_engine.tokens)
    likelihood(hf_engine, tokenizer, rows)
    spent = hf_engine.tokens.since(before)
    scorer = Scorer(hf_engine, tokenizer, ScoringConfig(Task.TKR, Mode.LIKELIHOOD, "qwen"))
    prompts = scorer.encoder.prompts([r.prompt for r in rows])
    answers = scorer.encoder.text([f"1. {t}" for r in rows for t in r.candidates])
    # One tree per user: its prompt once, every answer but its last token once (a last token is
    # only predicted); padding only to the longest tree.
    assert spent["sent"] == sum(map(len, prompts)) + sum(map(len, answers))
    tree_tokens = sum(map(len, prompts)) + sum(len(a) - 1 for a in answers)
    assert tree_tokens <= spent["computed"] < 1.5 * tree_tokens
    assert spent["cached"] == 0
    assert scorer.path.startswith("likelihood, hf: shared-prefix tree")


@pytest.mark.slow
def test_vllm_self_check_passes_and_the_prefix_cache_serves_the_prompts(
    vllm_engine: Engine, tokenizer: Any, rows: list[Row], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert isinstance(vllm_engine, VllmEngine)
    monkeypatch.setattr(vllm_engine, "check", None)
    vllm_engine.forget()
    before = replace(vllm_engine.tokens)
    likelihood(vllm_engine, tokenizer, rows)
    spent = vllm_engine.tokens.since(before)
    assert vllm_engine.check is not None
    assert vllm_engine.check.passed
    assert vllm_engine.check.max_abs_diff < 1e-3
    assert "self-check passed" in vllm_engine.likelihood_path
    assert vllm_engine.block_size == vllm_module.BLOCK_SIZES["cpu"]
    # Candidates read their prompt's full blocks from the cache.
    assert spent["cached"] > 0
    assert spent["computed"] == spent["sent"] - spent["cached"]


@pytest.mark.slow
def test_vllm_turns_cache_reads_off_when_the_self_check_fails(
    vllm_engine: Engine,
    hf_engine: Engine,
    tokenizer: Any,
    rows: list[Row],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A check that cannot pass (tolerance below zero) stands in for a vLLM whose cached blocks
    give other log-probabilities: the run goes on, correct, without cache reads."""
    assert isinstance(vllm_engine, VllmEngine)
    monkeypatch.setattr(vllm_engine, "check", None)
    monkeypatch.setattr(vllm_engine, "_cache_reads", True)
    monkeypatch.setitem(vllm_module.CHECK_TOLERANCE, "float32", -1.0)
    vllm_engine.forget()
    with caplog.at_level(logging.WARNING, logger="itdr_batch.engines.vllm"):
        first = likelihood(vllm_engine, tokenizer, rows)
    assert vllm_engine.check is not None
    assert not vllm_engine.check.passed
    assert "prefix-cache reads off" in caplog.text
    assert "prefix-cache reads off" in vllm_engine.likelihood_path
    before = replace(vllm_engine.tokens)
    again = likelihood(vllm_engine, tokenizer, rows)
    assert vllm_engine.tokens.since(before)["cached"] == 0
    reference = likelihood(hf_engine, tokenizer, rows)
    assert_close(first, reference)
    assert_close(again, reference)
