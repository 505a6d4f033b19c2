"""`itdr-batch bench orders`: what presentation orders (``scoring.permutations``) cost.

The score job (``run_job``, as the CLI runs it) scores the same MovieLens users' TKR lists
(likelihood mode, 10 history items, 10 candidates, evaluation mode, adapter a1) with K = 1 and
each K asked for, on one engine opened once, with the tiny model (``bench engines``'s ``tiny``)
or the body model. Per K: seconds, prompts and prompt tokens per user and what the engine
computed and served from its prefix cache per prompt token (the manifest's ``engine_tokens``:
on vLLM a user's orders share everything up to the candidate list), and what evaluation sees
(hr@1, the top-1 positions' uniformity p-value, the mean Kendall tau between a user's orders).
The ratios of every K over K = 1 come out of the same run. The models are untrained: the
evaluation figures show the mechanism, not quality.
"""

import shutil
import time
from pathlib import Path
from typing import Any

import polars as pl

from itdr_batch.bench.engines import bench_model
from itdr_batch.datasets import read_movielens
from itdr_batch.datasets.canonical import write_canonical
from itdr_batch.engines import open_engine
from itdr_batch.evaluate import evaluate
from itdr_batch.run import load_config, run_job
from itdr_batch.run.manifest import Manifest, read_record

CANDIDATES = 10


def run(
    users: int,
    orders: list[int],
    source: Path,
    tokenizer_dir: Path,
    workdir: Path,
    engine_kind: str,
    model: str,
) -> dict[str, Any]:
    """Runs the benchmark; returns the figures (the JSON written by the CLI)."""
    built = bench_model(model, tokenizer_dir, workdir / "models")
    data = workdir / "movielens"
    if not (data / "items.parquet").is_file():
        write_canonical(read_movielens(source), data)
    shard = workdir / f"users-{users}.parquet"
    interactions = pl.read_parquet(data / "interactions.parquet")
    ids = interactions.group_by("user_id").len().filter(pl.col("len") > CANDIDATES)
    ids.sort("user_id").head(users).select("user_id").write_parquet(shard)
    job = workdir / "job.toml"
    job.write_text(_job(data, built.model, built.adapters[0].path, engine_kind))
    config = load_config(job)
    engine = open_engine(config.engine_config())
    figures: dict[str, Any] = {"users": users, "engine": engine_kind, "model": model, "orders": {}}
    try:
        for k in sorted({1, *orders}):
            out = workdir / f"run-{k}"
            shutil.rmtree(out, ignore_errors=True)
            started = time.perf_counter()
            run_job(load_config(job, {"scoring.permutations": k}), shard, out, engine=engine)
            seconds = time.perf_counter() - started
            figures["orders"][str(k)] = _figures(out, seconds)
    finally:
        engine.close()
    one = figures["orders"]["1"]
    figures["over_one_order"] = {
        k: {
            "seconds": values["seconds"] / one["seconds"],
            "prompt_tokens": values["prompt_tokens_per_user"] / one["prompt_tokens_per_user"],
            "computed_tokens": values["computed_tokens"] / one["computed_tokens"],
        }
        for k, values in figures["orders"].items()
    }
    return figures


def _figures(out: Path, seconds: float) -> dict[str, Any]:
    manifest = read_record(out / "_manifest.json", Manifest)
    tokens = manifest.engine_tokens
    assert tokens is not None
    throughput = manifest.throughput
    result = evaluate(out)["tasks"]["tkr"]["a1"]
    bias = result["position_bias"]
    return {
        "seconds": seconds,
        "prompts_per_user": throughput.prompts_per_row,
        "prompt_tokens_per_user": throughput.prompt_tokens_per_row,
        "computed_tokens": tokens.computed,
        "computed_per_prompt_token": tokens.computed_per_prompt_token,
        "cached_per_prompt_token": tokens.cached / throughput.prompt_tokens,
        "hr@1": result["metrics"]["model"]["hr@1"],
        "top1_uniform_p": bias["model"]["top1_uniform_p"],
        "kendall_tau": bias["kendall_tau"],
    }


def _job(data: Path, model: Path, adapter: Path, engine_kind: str) -> str:
    return f"""\
[data]
interactions = "{data / "interactions.parquet"}"
items = "{data / "items.parquet"}"

[model]
path = "{model}"
chat = "qwen"
dtype = "float32"

[[adapters]]
name = "a1"
path = "{adapter}"

[engine]
kind = "{engine_kind}"
max_model_len = 2048
kv_cache_gib = 1

[prompts]
tasks = ["tkr"]
domain = "movie"
evaluation = true
history_len = 10
candidates = {CANDIDATES}

[scoring]
batch_size = 64
"""
