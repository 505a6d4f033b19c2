"""`itdr-batch bench job`: the score job's own preprocessing against the Rust core, and its memory.

MovieLens latest-small histories are replicated to the largest shard's user count (user ``u`` of
copy ``r`` becomes ``r * 1_000_000 + u``) in two row orders: ``sorted`` (by user, as the copies are
laid out) and ``shuffled`` (the original rows shuffled, each followed by its copies: every user's
rows spread over the whole file). The shard of N users is the first N users. Each shard runs
``itdr-batch score --dry-run`` (the real job: prompts instead of scores) in a process of its own,
whose peak RSS comes from ``os.wait4``, on each log. In the same run, the Rust core renders the
largest shard's prompts (up to ``CORE_USERS``) from their prepared lists: the rate the job's
preprocessing is held to (goal: at least a tenth of it end to end; shuffled within 1.2x of sorted;
peak RSS at the largest shard at most 1.5x the smallest's).
"""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import polars as pl

from itdr_batch import _core
from itdr_batch.datasets import read_movielens
from itdr_batch.prompts.build import prepare
from itdr_batch.run.config import load_config
from itdr_batch.tasks import Task

COPY_STRIDE = 1_000_000
ORDERS = ("sorted", "shuffled")
# Users whose prompts time the Rust core (their lists are prepared in memory first).
CORE_USERS = 200_000
GOALS = {"core_over_job_max": 10.0, "shuffled_over_sorted_max": 1.2, "rss_ratio_max": 1.5}
JOB = """\
[data]
interactions = "{interactions}"
items = "items.parquet"

[prompts]
tasks = ["tkr"]
domain = "movie"
history_len = 10
candidates = 10

[scoring]
batch_size = {batch_size}
"""


def run(sizes: list[int], batch_size: int, source: Path, workdir: Path) -> dict[str, Any]:
    """Runs the benchmark; returns the figures (the JSON written by the CLI)."""
    workdir.mkdir(parents=True, exist_ok=True)
    interactions_rows = _replicated(source, max(sizes), workdir)
    users = pl.scan_parquet(workdir / "sorted.parquet").select("user_id").unique()
    ordered = users.sort("user_id").collect(engine="streaming")
    figures: dict[str, Any] = {
        "batch_size": batch_size,
        "interactions_rows": interactions_rows,
        "sizes": {},
    }
    for size in sizes:
        shard = workdir / f"users-{size}.parquet"
        ordered.head(size).write_parquet(shard)
        figures["sizes"][str(size)] = {}
        for order in ORDERS:
            job = workdir / f"job-{order}.toml"
            job.write_text(JOB.format(batch_size=batch_size, interactions=f"{order}.parquet"))
            out = workdir / f"run-{order}-{size}"
            shutil.rmtree(out, ignore_errors=True)  # a complete run would be a no-op
            peak_mb, seconds = _measure(
                [
                    "score",
                    "--dry-run",
                    "--users",
                    str(shard),
                    "--config",
                    str(job),
                    "--out",
                    str(out),
                ]
            )
            figures["sizes"][str(size)][order] = {
                "peak_rss_mb": peak_mb,
                "seconds": seconds,
                "prompts_per_s": size / seconds,
            }
    core_users = min(max(sizes), CORE_USERS)
    figures["core_users"] = core_users
    figures["core_prompts_per_s"] = _core_rate(
        ordered.head(core_users), workdir, workdir / "job-sorted.toml"
    )
    figures["ratios"] = _ratios(figures, sizes)
    figures["goals"] = GOALS
    return figures


def _ratios(figures: dict[str, Any], sizes: list[int]) -> dict[str, float]:
    """The goals' ratios: the core over the job (the slower order), shuffled over sorted (the
    worst size), the largest shard's peak RSS over the smallest's (the larger order)."""
    per = figures["sizes"]
    slowest = min(per[str(n)][o]["prompts_per_s"] for n in sizes for o in ORDERS)
    largest, smallest = per[str(max(sizes))], per[str(min(sizes))]
    return {
        "core_over_job": figures["core_prompts_per_s"] / slowest,
        "shuffled_over_sorted": max(
            per[str(n)]["shuffled"]["seconds"] / per[str(n)]["sorted"]["seconds"] for n in sizes
        ),
        "rss_ratio_largest_to_smallest": max(
            largest[o]["peak_rss_mb"] / smallest[o]["peak_rss_mb"] for o in ORDERS
        ),
    }


def _core_rate(users: pl.DataFrame, workdir: Path, job_path: Path) -> float:
    """Prompts/s of ``_core.build_prompts`` alone on the users' TKR prompts, configured as the
    job's (best of three)."""
    items = pl.read_parquet(workdir / "items.parquet")
    interactions = pl.scan_parquet(workdir / "sorted.parquet").join(
        users.lazy(), on="user_id", how="semi"
    )
    config = load_config(job_path).prompt_config(Task.TKR)
    job = prepare(users, interactions.collect(engine="streaming"), items, config).job
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        _core.build_prompts(job)
        best = min(best, time.perf_counter() - started)
    return users.height / best


def _replicated(source: Path, users: int, workdir: Path) -> int:
    """Writes items and the replicated interactions in both orders (once); returns their rows."""
    data = read_movielens(source)
    assert data.interactions is not None
    originals = data.interactions.select("user_id", "item_id", "timestamp", "rating")
    copies = -(-users // originals["user_id"].n_unique())
    stamp = workdir / f"interactions-{copies}-copies"
    if not stamp.is_file():
        data.items.write_parquet(workdir / "items.parquet")
        copy = pl.LazyFrame({"copy": pl.int_range(0, copies, eager=True)})
        layouts = {
            "sorted": copy.join(originals.lazy(), how="cross"),
            "shuffled": originals.sample(fraction=1.0, shuffle=True, seed=0)
            .lazy()
            .join(copy, how="cross"),
        }
        for order, layout in layouts.items():
            replicated = layout.with_columns(
                user_id=pl.col("copy") * COPY_STRIDE + pl.col("user_id")
            ).drop("copy")
            replicated.sink_parquet(workdir / f"{order}.parquet")
        stamp.touch()
    rows: int = pl.scan_parquet(workdir / "sorted.parquet").select(pl.len()).collect().item()
    return rows


def _measure(args: list[str]) -> tuple[float, float]:
    """Peak RSS (MiB) and wall seconds of ``itdr-batch ARGS`` in a process of its own."""
    command = [sys.executable, "-m", "itdr_batch.cli", *args]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed (exit {process.returncode})")
    return usage.ru_maxrss / 1024, seconds
