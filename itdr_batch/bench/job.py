"""`itdr-batch bench job`: peak memory of the score job against the shard size.

MovieLens latest-small histories are replicated to the largest shard's user count (user ``u`` of
copy ``r`` becomes ``r * 1_000_000 + u``); one interactions table serves every shard, and the
shard of N users is its first N users. Each shard runs ``itdr-batch score --dry-run`` (the real
job, prompts instead of scores: the engine's memory is the model's, not the job's) in a process
of its own, whose peak RSS comes from ``os.wait4``. With a fixed batch size the peak should stay
flat whatever the shard size (README, "Benchmarks").
"""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import polars as pl

from itdr_batch.datasets import read_movielens

COPY_STRIDE = 1_000_000
JOB = """\
[data]
interactions = "interactions.parquet"
items = "items.parquet"

[model]
path = "no-model-needed-for-a-dry-run"

[prompts]
tasks = ["tkr"]
history_len = 10
candidates = 10

[scoring]
batch_size = {batch_size}
"""


def run(sizes: list[int], batch_size: int, source: Path, workdir: Path) -> dict[str, Any]:
    """Runs the benchmark; returns the figures (the JSON written by the CLI)."""
    workdir.mkdir(parents=True, exist_ok=True)
    interactions_rows = _replicated(source, max(sizes), workdir)
    job = workdir / "job.toml"
    job.write_text(JOB.format(batch_size=batch_size))
    users = pl.scan_parquet(workdir / "interactions.parquet").select("user_id").unique()
    ordered = users.sort("user_id").collect(engine="streaming")
    figures: dict[str, Any] = {
        "batch_size": batch_size,
        "interactions_rows": interactions_rows,
        "peak_rss_mb": {},
        "seconds": {},
        "prompts_per_s": {},
    }
    for size in sizes:
        shard = workdir / f"users-{size}.parquet"
        ordered.head(size).write_parquet(shard)
        out = workdir / f"run-{size}"
        shutil.rmtree(out, ignore_errors=True)  # a complete run would be a no-op
        peak_mb, seconds = _measure(
            ["score", "--dry-run", "--users", str(shard), "--config", str(job), "--out", str(out)]
        )
        figures["peak_rss_mb"][str(size)] = peak_mb
        figures["seconds"][str(size)] = seconds
        figures["prompts_per_s"][str(size)] = size / seconds
    peaks = figures["peak_rss_mb"]
    figures["rss_ratio_largest_to_smallest"] = peaks[str(max(sizes))] / peaks[str(min(sizes))]
    return figures


def _replicated(source: Path, users: int, workdir: Path) -> int:
    """Writes items and the replicated interactions (once); returns the interactions' rows."""
    path = workdir / "interactions.parquet"
    data = read_movielens(source)
    assert data.interactions is not None
    originals = data.interactions.select("user_id", "item_id", "timestamp", "rating")
    copies = -(-users // originals["user_id"].n_unique())
    stamp = workdir / f"interactions-{copies}-copies"
    if not (path.is_file() and stamp.is_file()):
        data.items.write_parquet(workdir / "items.parquet")
        replicated = (
            pl.LazyFrame({"copy": pl.int_range(0, copies, eager=True)})
            .join(originals.lazy(), how="cross")
            .with_columns(user_id=pl.col("copy") * COPY_STRIDE + pl.col("user_id"))
            .drop("copy")
        )
        replicated.sink_parquet(path)
        stamp.touch()
    rows: int = pl.scan_parquet(path).select(pl.len()).collect().item()
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
