"""`itdr-batch bench engines`: each engine in each scoring mode on a small built model.

``--model tiny`` (default) is the tests' model: its 151k-token output layer dominates a token's
cost, as in no real model. ``--model body`` is a Qwen2 whose body dominates, as in Qwen2.5-7B
(``build_body_model``): the one to read likelihood's cost relative to a prefill on.

TKR prompts (qwen chat format, 10 history items, 10 candidates) are built from MovieLens for N
users; RP prompts for label mode. For each engine, with the adapter and on the base model, it
times: ``prefill`` (one next-token pass per prompt: the cost floor of reading a prompt),
``likelihood`` (TKR, every candidate's answer), ``label`` (RP over the rating tokens) and
``generate`` (TKR, greedy, capped at GENERATE_TOKENS new tokens), prefill and likelihood
alternately RATIO_REPEATS times (the fastest of each kept), and counts the tokens the engine
computed per prompt token (``TokenCounts``; vLLM's prefix cache is emptied before each timing).
The same likelihood scores from both engines give their largest absolute difference. The models
are untrained: these figures are throughput, never quality.
"""

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import polars as pl

from itdr_batch.datasets import read_movielens
from itdr_batch.dev.tiny import Tiny, build_adapter, build_body_model, build_tiny
from itdr_batch.dev.tokenizer import sample_texts, train_tokenizer
from itdr_batch.engines import AdapterSpec, Engine, Prompt, load_tokenizer, open_engine
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
# The likelihood/prefill ratio's two terms are timed this many times, alternately, keeping the
# fastest of each: a busy machine only ever slows a run down, and one timing of each swung the
# ratio by 0.1 between runs on this machine.
RATIO_REPEATS = 3
CHAT = "qwen"
LIKELIHOOD_OVER_PREFILL_GOAL = 1.3
MODELS = {
    "tiny": "tiny Qwen2 (2 layers, hidden 128, Qwen2.5's 151k vocabulary), float32, untrained",
    "body": "body Qwen2 (8 layers, hidden 512, the demo's 4k vocabulary), float32, untrained",
}


def run(
    users: int, source: Path, tokenizer_dir: Path, workdir: Path, engines: list[str], model: str
) -> Any:
    """Runs the benchmark; returns the figures (the JSON written by the CLI)."""
    built = bench_model(model, tokenizer_dir, workdir)
    config = built.config(max_model_len=2048, enforce_eager=False)
    tokenizer = load_tokenizer(config)
    tkr = _rows(source, users, Task.TKR)
    rp = _rows(source, users, Task.RP)
    figures: dict[str, Any] = {
        "users": len(tkr),
        "model": model,
        "model_description": MODELS[model],
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
            likelihood, prefill = per_engine["likelihood"], per_engine["prefill"]
            per_engine["likelihood_over_prefill"] = likelihood["seconds"] / prefill["seconds"]
            per_engine["likelihood_over_prefill_base"] = (
                likelihood["base"]["seconds"] / prefill["base"]["seconds"]
            )
            per_engine["computed_tokens_per_prompt_token"] = likelihood[
                "computed_tokens_per_prompt_token"
            ]
            per_engine["likelihood_path"] = engine.likelihood_path
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


def bench_model(kind: str, tokenizer_dir: Path, workdir: Path) -> Tiny:
    """The tiny model (``tokenizer_dir``'s vocabulary) or the body model (the demo tokenizer's),
    with one adapter ``a1``; built once under ``workdir`` and reused."""
    if kind == "tiny":
        return build_tiny(workdir, tokenizer_dir, adapters=1)
    tokenizer = train_tokenizer(sample_texts(), workdir / "body-tokenizer")
    model = build_body_model(workdir / "body", tokenizer)
    adapter = build_adapter(workdir / "body-a1", model, seed=1)
    return Tiny(model, (AdapterSpec(name="a1", path=adapter),))


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
    for mode in [*["prefill", "likelihood"] * RATIO_REPEATS, "label", "generate"]:
        rows, job = work[mode]
        engine.forget()
        before = replace(engine.tokens)
        started = time.perf_counter()
        job()
        seconds = time.perf_counter() - started
        if mode in timings and timings[mode]["seconds"] <= seconds:
            continue
        counts = engine.tokens.since(before)
        tokens = sum(len(ids) for ids in encoder.prompts([r.prompt for r in rows]))
        timings[mode] = {
            "prompts_per_s": len(rows) / seconds,
            "tokens_per_s": tokens / seconds,
            "seconds": seconds,
            # Tokens the engine ran through the model (padding in, cache hits out) per prompt
            # token: 1.0 reads each prompt once.
            "computed_tokens_per_prompt_token": counts["computed"] / tokens,
            "sent_tokens_per_prompt_token": counts["sent"] / tokens,
            "cached_tokens_per_prompt_token": counts["cached"] / tokens,
        }
    return timings


def _scores(engine: Engine, tokenizer: Any, rows: list[Row], adapter: str | None) -> list[Scored]:
    rows = [Row(r.prompt, r.candidates, adapter) for r in rows]
    return Scorer(engine, tokenizer, ScoringConfig(Task.TKR, Mode.LIKELIHOOD, CHAT)).score(rows)


def _mean_tokens(tokenizer: Any, rows: list[Row]) -> float:
    """Prompt tokens as the engines receive them."""
    lengths = [len(ids) for ids in PromptEncoder(tokenizer, CHAT).prompts([r.prompt for r in rows])]
    return sum(lengths) / len(lengths)
