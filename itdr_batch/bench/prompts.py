"""`itdr-batch bench prompts`: the Rust core against Python, Polars and the memory floor.

MovieLens latest-small histories (each user's 10 most recent movies) are replicated to N users;
every user gets a TKR prompt with those 10 movies and 10 sampled candidates. In one run, on one
machine, the same bytes are produced four ways and timed:
- rust: ``_core.build_prompts`` on all cores (sampling included);
- python: a plain loop with f-strings (on a subset of users: it is slow);
- polars: the fastest Polars formulation found (a gather from precomputed numbered titles,
  reshaped to fixed-size arrays and joined), given the candidates Rust drew;
- floor: writing the same number of bytes into freshly allocated memory.
Python's and Polars' prompts are checked byte for byte against Rust's. Sampling alone is timed
with an empty template (candidates per second, seen items excluded). Each figure is the best of
`repeat` runs (Python: one run), which damps the noise of a shared machine.
"""

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from itdr_batch import _core
from itdr_batch.core_args import PromptJob
from itdr_batch.datasets import read_movielens
from itdr_batch.prompts.build import PromptConfig, item_indices, prepare
from itdr_batch.tasks import Task

HISTORY = 10
CANDIDATES = 10
# The goals `targets_met` reports (README, "Benchmarks"): Rust at least 30x pure Python and
# 10x Polars, at most 3x slower than the memory floor; sampling 20M candidates/s per core.
TARGETS = {"rust_over_python": 30.0, "rust_over_polars": 10.0, "floor_over_rust_max": 3.0}
CANDIDATES_PER_S_PER_CORE = 20e6


def run(users: int, python_users: int, source: Path, repeat: int = 3) -> dict[str, Any]:
    """Runs the benchmark; returns the figures (the JSON written by the CLI)."""
    items, interactions = _replicated(source, users)
    started = time.perf_counter()
    config = PromptConfig(task=Task.TKR, history_len=HISTORY, candidates=CANDIDATES, seed=1)
    prepared = prepare(
        interactions.select("user_id").unique(maintain_order=True), interactions, items, config
    )
    prep_s = time.perf_counter() - started
    # Prompts and candidate ids only, like the other implementations: no candidate titles.
    job: PromptJob = {**prepared.job, "item_titles": None}

    rust_s, table = _best(repeat, lambda: _core.build_prompts(job))
    built = pl.DataFrame(table)
    rust_prompts = built["prompt"].cast(pl.String)
    total_bytes = int(rust_prompts.str.len_bytes().sum())

    # The template's text around the two slots (history, candidates), as Rust writes it.
    texts = [""]
    for part in job["parts"]:
        if isinstance(part, str):
            texts[-1] += part
        else:
            texts.append("")
    head, middle, tail = texts
    titles = items["title"]
    history = prepared.frame["items"]
    indexed = items.with_row_index("idx")
    candidates = built.select(item_indices(pl.col("candidates"), indexed))["candidates"]

    subset = min(python_users, users)
    python_s, python_prompts = _best(
        1,
        lambda: _python(
            titles.to_list(),
            history.head(subset).to_list(),
            candidates.head(subset).to_list(),
            (head, middle, tail),
        ),
    )
    polars_s, polars_prompts = _best(
        repeat, lambda: _polars(titles, history, candidates, (head, middle, tail))
    )
    floor_s, _ = _best(repeat, lambda: np.full(total_bytes, ord("a"), dtype=np.uint8))
    # No template: sampling alone (the data slots stay, for the seen items it excludes).
    empty: PromptJob = {**job, "parts": [], "lists": []}
    sampling_s, _ = _best(repeat, lambda: _core.build_prompts(empty))

    identical = {
        "python": python_prompts == rust_prompts.head(subset).to_list(),
        "polars": polars_prompts.equals(rust_prompts, check_names=False),
    }
    threads = int(os.environ.get("RAYON_NUM_THREADS") or os.cpu_count() or 1)
    rates = {
        "rust": users / rust_s,
        "python": subset / python_s,
        "polars": users / polars_s,
        "floor": users / floor_s,
    }
    candidates_per_s = users * CANDIDATES / sampling_s
    ratios = {
        "rust_over_python": rates["rust"] / rates["python"],
        "rust_over_polars": rates["rust"] / rates["polars"],
        "floor_over_rust": rates["floor"] / rates["rust"],
    }
    return {
        "benchmark": "prompts",
        "task": "tkr",
        "users": users,
        "python_users": subset,
        "threads": threads,
        "history": HISTORY,
        "candidates": CANDIDATES,
        "mean_prompt_bytes": total_bytes / users,
        "prep_s": prep_s,
        "seconds": {"rust": rust_s, "python": python_s, "polars": polars_s, "floor": floor_s},
        "prompts_per_s": rates,
        "candidates_per_s": candidates_per_s,
        "candidates_per_s_per_core": candidates_per_s / threads,
        "ratios": ratios,
        "byte_identical": identical,
        "targets_met": {
            "rust_over_python": ratios["rust_over_python"] >= TARGETS["rust_over_python"],
            "rust_over_polars": ratios["rust_over_polars"] >= TARGETS["rust_over_polars"],
            "floor_over_rust": ratios["floor_over_rust"] <= TARGETS["floor_over_rust_max"],
            "candidates_per_s_per_core": candidates_per_s / threads >= CANDIDATES_PER_S_PER_CORE,
        },
    }


def _replicated(source: Path, users: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Each real user's 10 most recent interactions, copied to `users` synthetic users."""
    data = read_movielens(source)
    assert data.interactions is not None, f"{source} has no ratings"
    recent = (
        data.interactions.with_row_index("order")
        .sort("user_id", "timestamp", "order")
        .group_by("user_id", maintain_order=True)
        .tail(HISTORY)
        .with_columns(real=pl.col("user_id").rank("dense").cast(pl.Int64) - 1)
    )
    real_users = int(recent["real"].max()) + 1  # type: ignore[arg-type]
    copies = pl.DataFrame({"copy": range(-(-users // real_users))}, schema={"copy": pl.Int64})
    replicated = (
        copies.join(recent, how="cross")
        .with_columns(user_id=pl.col("copy") * real_users + pl.col("real"))
        .filter(pl.col("user_id") < users)
        .sort("user_id", "timestamp", "order")
        .select("user_id", "item_id", "timestamp", "rating")
    )
    return data.items, replicated


def _python(
    titles: list[str],
    history: list[list[int]],
    candidates: list[list[int]],
    text: tuple[str, str, str],
) -> list[str]:
    head, middle, tail = text
    prompts = []
    for seen, offered in zip(history, candidates, strict=True):
        watched = "\n".join(f"{i}. {titles[j]}" for i, j in enumerate(seen, start=1))
        ranked = "\n".join(f"{i}. {titles[j]}" for i, j in enumerate(offered, start=1))
        prompts.append(f"{head}{watched}{middle}{ranked}{tail}")
    return prompts


def _polars(
    titles: pl.Series, history: pl.Series, candidates: pl.Series, text: tuple[str, str, str]
) -> pl.Series:
    """Numbered titles precomputed per position, gathered, reshaped to rows and joined."""
    n_items = len(titles)
    numbered = pl.concat([f"{i}. " + titles for i in range(1, HISTORY + 1)])

    def block(lists: pl.Series, width: int) -> pl.Series:
        flat = lists.explode().cast(pl.UInt32)
        position = pl.Series(np.tile(np.arange(width, dtype=np.uint32), len(lists)))
        texts = numbered.gather(position * n_items + flat)
        return texts.reshape((len(lists), width)).arr.join("\n")

    frame = pl.DataFrame(
        {"watched": block(history, HISTORY), "ranked": block(candidates, CANDIDATES)}
    )
    head, middle, tail = text
    prompt = pl.concat_str(pl.lit(head), "watched", pl.lit(middle), "ranked", pl.lit(tail))
    return frame.select(prompt.alias("prompt"))["prompt"]


def _best(repeat: int, work: Callable[[], Any]) -> tuple[float, Any]:
    """The fastest of `repeat` runs, and the last result."""
    best, result = float("inf"), None
    for _ in range(repeat):
        result = None  # free the previous run's output outside the timed section
        started = time.perf_counter()
        result = work()
        best = min(best, time.perf_counter() - started)
    return best, result
