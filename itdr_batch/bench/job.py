"""`itdr-batch bench job`: the score job's own preprocessing against the Rust core, and its memory.

MovieLens latest-small histories are replicated to the largest shard's user count (user ``u`` of
copy ``r`` becomes ``r * 1_000_000 + u``) in two row orders, each written in that order
explicitly: ``sorted`` (copy after copy, each by user: every user's rows together) and
``shuffled`` (the original rows shuffled, each followed by its copies: every user's rows spread
over the whole file). The shard of N users is the first N users; it runs, as the nightly flow
runs a shard, on its own interactions (the log's rows of its users, in the log's order, written
from the validated log with the stamp that says so: what ``itdr-batch shard --interactions``
writes) and the whole log's item counts. Each shard runs
``itdr-batch score --dry-run`` (the real job: prompts instead of scores) in a process of its own,
whose peak RSS comes from ``os.wait4``, on each log. In the same run, the Rust core renders the
largest shard's prompts (up to ``CORE_USERS``) from their prepared lists, before the shards run
and after (this VM's speed drifts within minutes: the core's rate is their mean): the rate the
job's preprocessing is held to (goal: at least a tenth of it end to end; shuffled within 1.2x of
sorted; peak RSS at the largest shard at most 1.5x the smallest's). Each shard's seconds include
a fixed cost (the interpreter's start, imports, the plan's checks); the marginal rate (users
beyond the smallest shard over the seconds beyond its) is what each further user costs.
"""

import multiprocessing
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import polars as pl

from itdr_batch import _core
from itdr_batch.datasets import read_movielens
from itdr_batch.hashing import file_digest
from itdr_batch.prompts.build import prepare
from itdr_batch.run.config import load_config
from itdr_batch.tables.checked import is_checked, write_stamp
from itdr_batch.tables.load import load_interactions, load_items
from itdr_batch.tables.shard import item_counts
from itdr_batch.tables.sink import write_parquet_atomic
from itdr_batch.tasks import Task

COPY_STRIDE = 1_000_000
ORDERS = ("sorted", "shuffled")
# Users whose prompts time the Rust core (their lists are prepared in memory first).
CORE_USERS = 200_000
R = TypeVar("R")
GOALS = {"core_over_job_max": 10.0, "shuffled_over_sorted_max": 1.2, "rss_ratio_max": 1.5}
JOB = """\
[data]
interactions = "{interactions}"
items = "items.parquet"
item_counts = "item_counts.parquet"

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
    rows, shard_rows = _apart(_inputs, sizes, source, workdir)
    core_users = min(max(sizes), CORE_USERS)
    core_before = _apart(_core_rate, max(sizes), core_users, workdir)
    figures: dict[str, Any] = {"batch_size": batch_size, "interactions_rows": rows, "sizes": {}}
    for size in sizes:
        figures["sizes"][str(size)] = {}
        for order in ORDERS:
            job = workdir / f"job-{order}.toml"
            log = _shard_log(workdir, order, size).name
            job.write_text(JOB.format(batch_size=batch_size, interactions=log))
            out = workdir / f"run-{order}-{size}"
            shutil.rmtree(out, ignore_errors=True)  # a complete run would be a no-op
            peak_mb, seconds = _measure(
                [
                    "score",
                    "--dry-run",
                    "--users",
                    str(_users(workdir, size)),
                    "--config",
                    str(job),
                    "--out",
                    str(out),
                ]
            )
            figures["sizes"][str(size)][order] = {
                "interactions_rows": shard_rows[size][order],
                "peak_rss_mb": peak_mb,
                "seconds": seconds,
                "prompts_per_s": size / seconds,
            }
    figures["core_users"] = core_users
    runs = [core_before, _apart(_core_rate, max(sizes), core_users, workdir)]
    figures["core_prompts_per_s_runs"] = runs
    figures["core_prompts_per_s"] = sum(runs) / len(runs)
    figures["ratios"] = _ratios(figures, sizes)
    figures["goals"] = GOALS
    return figures


def _apart(function: Callable[..., R], *args: Any) -> R:
    """``function(*args)`` in a process of its own: on Linux a child's peak RSS starts at its
    parent's, so the process that starts the measured runs must stay small."""
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
        return pool.submit(function, *args).result()


def _inputs(sizes: list[int], source: Path, workdir: Path) -> tuple[int, dict[int, dict[str, int]]]:
    """Writes the logs, the item counts, each size's users and their own logs (once); returns
    the logs' rows and, per size and order, the shard's own."""
    rows = _replicated(source, max(sizes), workdir)
    users = pl.scan_parquet(workdir / "sorted.parquet").select("user_id").unique()
    ordered = users.sort("user_id").collect(engine="streaming")
    items = workdir / "items.parquet"
    items_sha256 = file_digest(items)
    # Each order's whole log, validated once, for the shard logs written again.
    validated: dict[str, pl.LazyFrame] = {}
    shard_rows: dict[int, dict[str, int]] = {}
    written = []
    for size in sizes:
        ordered.head(size).write_parquet(_users(workdir, size))
        shard_rows[size] = {}
        for order in ORDERS:
            path = _shard_log(workdir, order, size)
            if not (path.is_file() and is_checked(path, file_digest(path), items_sha256)):
                # As ``itdr-batch shard`` writes a shard's own log: from the validated log.
                if order not in validated:
                    log = load_interactions(workdir / f"{order}.parquet", load_items(items))
                    validated[order] = log.frame
                mine = pl.col("user_id").is_in(ordered.head(size)["user_id"].implode())
                write_parquet_atomic(validated[order].filter(mine), path)
                written.append(path)
            shard_rows[size][order] = pl.scan_parquet(path).select(pl.len()).collect().item()
    write_stamp(written, items)
    return rows, shard_rows


def _users(workdir: Path, size: int) -> Path:
    return workdir / f"users-{size}.parquet"


def _shard_log(workdir: Path, order: str, size: int) -> Path:
    """The log's rows of the first ``size`` users, in the log's order."""
    return workdir / f"{order}-{size}.parquet"


def _ratios(figures: dict[str, Any], sizes: list[int]) -> dict[str, Any]:
    """The goals' ratios: the core over the job (the slowest size and order; and per size, the
    slower order), the core over the marginal rate (the slower order; None with one size),
    shuffled over sorted (the worst size), the largest shard's peak RSS over the smallest's (the
    larger order)."""
    per = figures["sizes"]
    core = figures["core_prompts_per_s"]
    by_size = {str(n): core / min(per[str(n)][o]["prompts_per_s"] for o in ORDERS) for n in sizes}
    largest, smallest = per[str(max(sizes))], per[str(min(sizes))]
    marginal = {
        o: (max(sizes) - min(sizes)) / (largest[o]["seconds"] - smallest[o]["seconds"])
        for o in ORDERS
        if len(sizes) > 1 and largest[o]["seconds"] > smallest[o]["seconds"]
    }
    return {
        "core_over_job": max(by_size.values()),
        "core_over_job_by_size": by_size,
        "marginal_prompts_per_s": marginal,
        "core_over_marginal": core / min(marginal.values()) if len(marginal) == 2 else None,
        "shuffled_over_sorted": max(
            per[str(n)]["shuffled"]["seconds"] / per[str(n)]["sorted"]["seconds"] for n in sizes
        ),
        "rss_ratio_largest_to_smallest": max(
            largest[o]["peak_rss_mb"] / smallest[o]["peak_rss_mb"] for o in ORDERS
        ),
    }


def _core_rate(size: int, core_users: int, workdir: Path) -> float:
    """Prompts/s of ``_core.build_prompts`` alone on the TKR prompts of the first
    ``core_users`` users of the ``size`` shard, configured as the job's (best of three)."""
    users = pl.read_parquet(_users(workdir, size)).head(core_users)
    items = pl.read_parquet(workdir / "items.parquet")
    log = _shard_log(workdir, "sorted", size)
    interactions = pl.scan_parquet(log).join(users.lazy(), on="user_id", how="semi")
    config_path = workdir / "job-core.toml"
    config_path.write_text(JOB.format(batch_size=core_users, interactions=log.name))
    config = load_config(config_path).prompt_config(Task.TKR)
    job = prepare(users, interactions.collect(engine="streaming"), items, config).job
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        _core.build_prompts(job)
        best = min(best, time.perf_counter() - started)
    return users.height / best


def _replicated(source: Path, users: int, workdir: Path) -> int:
    """Writes items, the replicated interactions in both orders and their item counts (once);
    returns their rows."""
    data = read_movielens(source)
    assert data.interactions is not None
    originals = data.interactions.select("user_id", "item_id", "timestamp", "rating")
    copies = -(-users // originals["user_id"].n_unique())
    # The stamp names the layouts' version: a workdir of an older layout is written again.
    stamp = workdir / f"layouts-v2-{copies}-copies"
    if not stamp.is_file():
        # Files made from other copies or layouts (their shard logs too) go.
        for stale in [*workdir.glob("*-copies"), *workdir.glob("*.parquet")]:
            stale.unlink()
        data.items.write_parquet(workdir / "items.parquet")
        by_user = originals.sort("user_id", maintain_order=True)
        copy = pl.col("copy") * COPY_STRIDE
        layouts = {
            # Copy after copy, each by user: every user's rows together, users ascending.
            "sorted": pl.concat(
                by_user.lazy().with_columns(copy=pl.lit(c, pl.Int64)) for c in range(copies)
            ),
            # Each shuffled row followed by its copies: a user's rows over the whole file.
            "shuffled": by_user.sample(fraction=1.0, shuffle=True, seed=0)
            .lazy()
            .with_columns(copy=pl.int_ranges(0, copies))
            .explode("copy"),
        }
        for order, layout in layouts.items():
            replicated = layout.with_columns(user_id=copy + pl.col("user_id")).drop("copy")
            replicated.sink_parquet(workdir / f"{order}.parquet")
        stamp.touch()
    counts = workdir / "item_counts.parquet"
    if not counts.is_file():
        item_counts(pl.scan_parquet(workdir / "sorted.parquet")).sort("item_id").write_parquet(
            counts
        )
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
