"""The real engines on the CPU: vLLM's CPU build and transformers + PEFT, on the tiny model.

Both run in float32 and score the same token ids; they agree to within AGREEMENT (absolute, on
mean log-probabilities; ~1e-5 is typical here).
"""

import json
import logging
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from typer.testing import CliRunner

from itdr_batch.cli import app
from itdr_batch.datasets import SAMPLE, read_movielens
from itdr_batch.dev.tiny import Tiny
from itdr_batch.engines import Engine, Failure, Prompt, open_engine
from itdr_batch.engines.vllm import VllmEngine
from itdr_batch.prompts.build import PromptConfig, build_prompts
from itdr_batch.prompts.chat import CHAT_FORMATS
from itdr_batch.scoring import Row, Scorer, ScoringConfig, rows_from_prompts
from itdr_batch.tasks import Mode, Task

AGREEMENT = 1e-4
USERS = 6


@pytest.fixture(scope="module")
def sample() -> tuple[pl.DataFrame, pl.DataFrame]:
    data = read_movielens(SAMPLE)
    assert data.interactions is not None
    return data.interactions, data.items


def real_rows(
    sample: tuple[pl.DataFrame, pl.DataFrame], task: Task, adapter: str | None = None, **kw: Any
) -> list[Row]:
    interactions, items = sample
    users = interactions.select("user_id").unique().sort("user_id").head(USERS)
    config = PromptConfig(
        task=task,
        chat="qwen",
        history_len=5,
        candidates=5,
        seed=3,
        item_fields={"category": "genres"},
        evaluation=True,
        **kw,
    )
    return rows_from_prompts(build_prompts(users, interactions, items, config), adapter)


@pytest.fixture(params=["vllm", "hf"])
def engine(request: pytest.FixtureRequest) -> Engine:
    """Each engine in turn (the session's shared instances)."""
    engine: Engine = request.getfixturevalue(f"{request.param}_engine")
    return engine


def scored(engine: Engine, tokenizer: Any, rows: list[Row], task: Task, mode: Mode) -> Any:
    return Scorer(engine, tokenizer, ScoringConfig(task, mode, "qwen")).score(rows)


@pytest.mark.slow
def test_auto_picks_vllm_here(vllm_engine: Engine) -> None:
    assert vllm_engine.name == "vllm"


@pytest.mark.parametrize("adapter", [None, "a1"])
@pytest.mark.parametrize(
    ("task", "mode"),
    [
        (Task.TKR, Mode.LIKELIHOOD),
        (Task.NIR, Mode.LIKELIHOOD),
        (Task.RP, Mode.LABEL),
        (Task.RP, Mode.LIKELIHOOD),
    ],
)
@pytest.mark.slow
def test_engines_agree(
    vllm_engine: Engine,
    hf_engine: Engine,
    tokenizer: Any,
    sample: tuple[pl.DataFrame, pl.DataFrame],
    task: Task,
    mode: Mode,
    adapter: str | None,
) -> None:
    rows = real_rows(sample, task, adapter)
    assert len(rows) == USERS
    a = scored(vllm_engine, tokenizer, rows, task, mode)
    b = scored(hf_engine, tokenizer, rows, task, mode)
    for x, y in zip(a, b, strict=True):
        assert x.status == y.status == "ok"
        assert x.scores is not None
        assert y.scores is not None
        assert max(abs(p - q) for p, q in zip(x.scores, y.scores, strict=True)) < AGREEMENT
        if task is not Task.RP:
            assert x.ranks == y.ranks


@pytest.mark.slow
def test_vllm_likelihood_reads_each_prompt_from_the_prefix_cache(
    vllm_engine: Engine, tokenizer: Any, sample: tuple[pl.DataFrame, pl.DataFrame]
) -> None:
    """Candidates reuse their prompt's cached blocks (32 tokens each on the CPU)."""
    assert isinstance(vllm_engine, VllmEngine)
    size = vllm_engine.block_size
    assert size == 32
    rows = real_rows(sample, Task.TKR, "a2")
    blocks = sum(len(tokenizer.encode(r.prompt)) // size * size for r in rows)
    assert blocks > 0
    before = vllm_engine.tokens.cached
    results = scored(vllm_engine, tokenizer, rows, Task.TKR, Mode.LIKELIHOOD)
    assert all(r.status == "ok" for r in results)
    # Every candidate of every row hit its prompt's full blocks.
    assert vllm_engine.tokens.cached - before >= blocks * 5


@pytest.mark.slow
def test_an_adapter_changes_scores_and_mixed_batches_match_separate_runs(
    engine: Engine,
    tokenizer: Any,
    sample: tuple[pl.DataFrame, pl.DataFrame],
) -> None:
    per_adapter = {a: real_rows(sample, Task.TKR, a) for a in (None, "a1", "a2")}
    alone = {
        a: scored(engine, tokenizer, rows, Task.TKR, Mode.LIKELIHOOD)
        for a, rows in per_adapter.items()
    }
    mixed_rows = [row for rows in zip(*per_adapter.values(), strict=True) for row in rows]
    mixed = scored(engine, tokenizer, mixed_rows, Task.TKR, Mode.LIKELIHOOD)
    for i, adapter in enumerate(mixed_rows):
        expected = alone[adapter.adapter][i // 3]
        assert mixed[i].scores == pytest.approx(expected.scores, abs=AGREEMENT)
    for base, tuned in zip(alone[None], alone["a1"], strict=True):
        assert base.scores is not None
        assert tuned.scores is not None
        assert max(abs(p - q) for p, q in zip(base.scores, tuned.scores, strict=True)) > 0.05


@pytest.mark.parametrize("mode", [Mode.LABEL, Mode.LIKELIHOOD])
@pytest.mark.slow
def test_rp_expected_ratings_lie_in_the_scale(
    engine: Engine,
    tokenizer: Any,
    sample: tuple[pl.DataFrame, pl.DataFrame],
    mode: Mode,
) -> None:
    results = scored(engine, tokenizer, real_rows(sample, Task.RP, "a1"), Task.RP, mode)
    for r in results:
        assert r.status == "ok"
        assert r.rating is not None
        assert 1.0 <= r.rating <= 5.0
        assert r.probs is not None
        assert sum(r.probs) == pytest.approx(1.0)
        assert r.rating_argmax == 1.0 + max(range(5), key=r.probs.__getitem__)


@pytest.mark.parametrize("task", [Task.TKR, Task.NIR])
@pytest.mark.slow
def test_generate_always_ranks_every_presented_candidate(
    engine: Engine,
    tokenizer: Any,
    sample: tuple[pl.DataFrame, pl.DataFrame],
    task: Task,
) -> None:
    rows = real_rows(sample, task, "a1")
    config = ScoringConfig(task, Mode.GENERATE, "qwen", max_new_tokens=24)
    results = Scorer(engine, tokenizer, config).score(rows)
    for row, r in zip(rows, results, strict=True):
        assert r.ranks is not None
        assert sorted(r.ranks) == list(range(1, len(row.candidates) + 1))
        # The tiny model is untrained: its text names no candidate, and that is flagged.
        assert r.status == "unparsed"
        assert r.text


@pytest.mark.slow
def test_engines_generate_the_same_greedy_tokens(
    vllm_engine: Engine,
    hf_engine: Engine,
    tokenizer: Any,
    sample: tuple[pl.DataFrame, pl.DataFrame],
) -> None:
    rows = real_rows(sample, Task.TKR, "a2")[:3] + real_rows(sample, Task.TKR)[:3]
    prompts = [Prompt(tokenizer.encode(r.prompt), r.adapter) for r in rows]
    assert vllm_engine.generate(prompts, 12) == hf_engine.generate(prompts, 12)


@pytest.mark.slow
def test_a_failing_request_fails_alone(
    engine: Engine,
    tokenizer: Any,
    sample: tuple[pl.DataFrame, pl.DataFrame],
) -> None:
    rows = real_rows(sample, Task.TKR, "a1")
    before, after = CHAT_FORMATS["qwen"].split()
    too_long = Row(before + "movie " * 1100 + after, rows[0].candidates, "a1")
    results = scored(engine, tokenizer, [rows[0], too_long, rows[1]], Task.TKR, Mode.LIKELIHOOD)
    assert [r.status for r in results] == ["ok", "prompt_too_long", "ok"]
    assert results[1].detail is not None
    assert "max_model_len 1024" in results[1].detail

    # A token id outside the vocabulary makes the engine itself raise: only that request fails.
    ok = [Prompt(tokenizer.encode(r.prompt), "a1") for r in rows[:3]]
    bad = Prompt([1, 2, 10_000_000], "a1")
    outs = engine.next_token_logprobs([ok[0], bad, ok[1], ok[2]], [16, 17])
    assert isinstance(outs[1], Failure)
    assert outs[1].reason == "engine_error"
    assert all(isinstance(o, list) and len(o) == 2 for o in outs[:1] + outs[2:])


@pytest.mark.slow
def test_auto_falls_back_to_transformers_and_says_why(
    tiny: Tiny, vllm_engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    # Longer than the model's 4096 positions: vLLM refuses to start, transformers does not care.
    with caplog.at_level(logging.WARNING):
        engine = open_engine(tiny.config(engine="auto", max_model_len=100_000))
    assert engine.name == "hf"
    assert "using transformers, vLLM failed to start" in caplog.text
    assert "max_model_len" in caplog.text
    engine.close()


@pytest.mark.slow
def test_label_mode_needs_single_token_ratings(hf_engine: Engine, tokenizer: Any) -> None:
    config = ScoringConfig(Task.RP, Mode.LABEL, "qwen", rating_scale=(1.0, 1.5, 2.0))
    with pytest.raises(ValueError, match=r"'1\.5' is 3 tokens"):
        Scorer(hf_engine, tokenizer, config)


def test_modes_a_task_cannot_use_are_refused() -> None:
    with pytest.raises(ValueError, match="task tkr cannot be scored in mode label; use"):
        ScoringConfig(Task.TKR, Mode.LABEL, "qwen")
    with pytest.raises(ValueError, match="task uap cannot be scored in mode likelihood"):
        ScoringConfig(Task.UAP, Mode.LIKELIHOOD, "qwen")


@pytest.mark.slow
def test_bench_engines_writes_its_figures(tmp_path: Path) -> None:
    """A smoke run of the benchmark on the body model (transformers only, 2 users): figures, not
    timings, checked."""
    out = tmp_path / "engines.json"
    args = ["bench", "engines", "--model", "body", "--users", "2", "--engine", "hf"]
    args += ["--json", str(out), "--workdir", str(tmp_path), "--data", str(SAMPLE)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    figures = json.loads(out.read_text())
    hf = figures["engines"]["hf"]
    for mode in ("prefill", "likelihood", "label", "generate"):
        assert hf[mode]["prompts_per_s"] > 0
        assert hf[mode]["tokens_per_s"] > 0
        assert hf[mode]["base"]["prompts_per_s"] > 0
        assert hf[mode]["computed_tokens_per_prompt_token"] >= 1
    # A tree reads the prompt once plus its answers: more than a prefill, less than twice it.
    assert 1 < hf["computed_tokens_per_prompt_token"] < 2
    assert hf["likelihood_over_prefill"] > 0
    assert hf["likelihood_over_prefill_base"] > 0
    assert hf["likelihood_path"].startswith("shared-prefix tree")
    assert figures["users"] == 2
    assert figures["model"] == "body"
    assert figures["agreement"]["max_abs_logprob_diff"] is None
    assert "likelihood costs" in result.output


def test_bench_engines_names_the_models_it_knows(tmp_path: Path) -> None:
    args = ["bench", "engines", "--model", "huge", "--json", str(tmp_path / "x.json")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert "--model must be tiny or body, not 'huge'" in result.output
