"""`itdr-batch bench engines`: each engine in each scoring mode on the tiny model.

TKR prompts (qwen chat format, 10 history items, 10 candidates) are built from MovieLens for N
users; RP prompts for label mode. For each engine, with the adapter and on the base model, it
times: ``prefill`` (one next-token pass per prompt: the cost floor of reading a prompt),
``likelihood`` (TKR, every candidate's answer), ``label`` (RP over the rating tokens) and
``generate`` (TKR, greedy, capped at GENERATE_TOKENS new tokens). vLLM's prefix cache is emptied
before each timing. The same likelihood scores from both engines give their largest absolute
difference. The tiny model is untrained: these figures are throughput, never quality.
"""

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl

from itdr_batch.datasets import read_movielens
from itdr_batch.dev.tiny import build_tiny
from itdr_batch.engines import Engine, Prompt, load_tokenizer, open_engine
from itdr_batch.engines.vllm import VllmEngine
from itdr_batch.prompts.build import PromptConfig, build_prompts
from itdr_batch.scoring.modes import (
    PromptEncoder,
    Row,
    Scored,
    Scorer,
    ScoringConfig,
    rows_from_prompts,
)
from itdr_batch.tasks import Mode, Task

GENERATE_TOKENS = 32
CHAT = "qwen"
# vLLM's CPU attention wants multiples of 32.
BLOCK_SIZE = 32
LIKELIHOOD_OVER_PREFILL_GOAL = 1.5


def run(users: int, source: Path, tokenizer_dir: Path, workdir: Path, engines: list[str]) -> Any:
    """Runs the benchmark; returns the figures (the JSON written by the CLI)."""
    tiny = build_tiny(workdir, tokenizer_dir, adapters=1)
    config = tiny.config(max_model_len=2048, enforce_eager=False, block_size=BLOCK_SIZE)
    tokenizer = load_tokenizer(config)
    tkr = _rows(source, users, Task.TKR)
    rp = _rows(source, users, Task.RP)
    figures: dict[str, Any] = {
        "users": len(tkr),
        "model": "tiny Qwen2 (2 layers, hidden 128), float32, untrained",
        "generate_max_new_tokens": GENERATE_TOKENS,
        "mean_prompt_tokens": _mean_tokens(tokenizer, tkr),
        "engines": {},
    }
    likelihoods: dict[str, list[Scored]] = {}
    for name in engines:
        engine = open_engine(config.model_copy(update={"engine": name}))
        try:
            per_engine: dict[str, Any] = {}
            for adapter in ("a1", None):
                timings = _time_modes(engine, tokenizer, tkr, rp, adapter)
                if adapter is None:
                    for mode, values in timings.items():
                        per_engine[mode]["base"] = values
                else:
                    per_engine.update(timings)
                    likelihoods[name] = _scores(engine, tokenizer, tkr, adapter)
            per_engine["likelihood_over_prefill"] = (
                per_engine["prefill"]["prompts_per_s"] / per_engine["likelihood"]["prompts_per_s"]
            )
            figures["engines"][name] = per_engine
        finally:
            engine.close()
    diff = None
    if len(likelihoods) == 2:
        a, b = likelihoods.values()
        diff = max(
            abs(p - q)
            for x, y in zip(a, b, strict=True)
            for p, q in zip(x.scores or [], y.scores or [], strict=True)
        )
    figures["agreement"] = {"max_abs_logprob_diff": diff, "dtype": "float32"}
    figures["likelihood_over_prefill_goal"] = LIKELIHOOD_OVER_PREFILL_GOAL
    return figures


def _rows(source: Path, users: int, task: Task) -> list[Row]:
    data = read_movielens(source)
    assert data.interactions is not None
    ids = data.interactions.group_by("user_id").len().filter(pl.col("len") > 10)
    shard = ids.sort("user_id").head(users).select("user_id")
    config = PromptConfig(task=task, chat=CHAT, history_len=10, candidates=10, evaluation=True)
    return rows_from_prompts(build_prompts(shard, data.interactions, data.items, config))


def _time_modes(
    engine: Engine, tokenizer: Any, tkr: list[Row], rp: list[Row], adapter: str | None
) -> dict[str, dict[str, float]]:
    tkr = [Row(r.prompt, r.candidates, adapter) for r in tkr]
    rp = [Row(r.prompt, r.candidates, adapter) for r in rp]
    encoder = PromptEncoder(tokenizer, CHAT)
    prompts = [Prompt(ids, adapter) for ids in encoder.prompts([r.prompt for r in tkr])]
    work: dict[str, tuple[list[Row], Callable[[], object]]] = {
        "prefill": (tkr, lambda: engine.next_token_logprobs(prompts, [16])),
        "likelihood": (tkr, lambda: _scores(engine, tokenizer, tkr, adapter)),
        "label": (
            rp,
            lambda: Scorer(engine, tokenizer, ScoringConfig(Task.RP, Mode.LABEL, CHAT)).score(rp),
        ),
        "generate": (
            tkr,
            lambda: Scorer(
                engine,
                tokenizer,
                ScoringConfig(Task.TKR, Mode.GENERATE, CHAT, max_new_tokens=GENERATE_TOKENS),
            ).score(tkr),
        ),
    }
    for _, job in work.values():
        job()  # warm-up: compilation and first-call allocations are not throughput
    timings: dict[str, dict[str, float]] = {}
    for mode, (rows, job) in work.items():
        engine.forget()
        counted = _computed_tokens(engine)
        started = time.perf_counter()
        job()
        seconds = time.perf_counter() - started
        tokens = sum(len(ids) for ids in encoder.prompts([r.prompt for r in rows]))
        timings[mode] = {
            "prompts_per_s": len(rows) / seconds,
            "tokens_per_s": tokens / seconds,
            "seconds": seconds,
        }
        if counted is not None:
            # Tokens vLLM computed (not read from its prefix cache) per prompt token.
            computed = (_computed_tokens(engine) or 0) - counted
            timings[mode]["computed_tokens_per_prompt_token"] = computed / tokens
    return timings


def _computed_tokens(engine: Engine) -> int | None:
    if isinstance(engine, VllmEngine):
        return engine.prompt_tokens - engine.cached_tokens
    return None


def _scores(engine: Engine, tokenizer: Any, rows: list[Row], adapter: str | None) -> list[Scored]:
    rows = [Row(r.prompt, r.candidates, adapter) for r in rows]
    return Scorer(engine, tokenizer, ScoringConfig(Task.TKR, Mode.LIKELIHOOD, CHAT)).score(rows)


def _mean_tokens(tokenizer: Any, rows: list[Row]) -> float:
    """Prompt tokens as the engines receive them."""
    lengths = [len(ids) for ids in PromptEncoder(tokenizer, CHAT).prompts([r.prompt for r in rows])]
    return sum(lengths) / len(lengths)
