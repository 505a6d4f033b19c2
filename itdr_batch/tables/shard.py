"""Splitting a users table into shards by the stable hash (README, "Stable hash").

A user's shard is ``stable_hash(user_id) % shards``: it depends on the id alone, and the job's
prompts depend only on the seed and the row, so any shard count gives the same rows overall.
Rows keep their input order inside a shard.
"""

from pathlib import Path

import polars as pl

from itdr_batch.errors import ItdrError
from itdr_batch.tables.ids import stable_hash
from itdr_batch.tables.load import scan
from itdr_batch.tables.schemas import USERS
from itdr_batch.tables.sink import write_parquet_atomic


def shard_path(out: Path, index: int, shards: int) -> Path:
    return out / f"shard-{index:05d}-of-{shards:05d}.parquet"


def split_users(users: Path, shards: int, out: Path) -> list[Path]:
    """Writes ``shards`` files under ``out`` (some may be empty) and returns their paths."""
    if shards < 1:
        raise ItdrError(f"--shards must be at least 1, got {shards}")
    frame = scan(users, USERS)
    table = frame.collect(engine="streaming")
    table = table.with_columns(__shard=(stable_hash(table["user_id"]) % shards).cast(pl.UInt32))
    paths = []
    for index in range(shards):
        path = shard_path(out, index, shards)
        write_parquet_atomic(table.filter(pl.col("__shard") == index).drop("__shard"), path)
        paths.append(path)
    return paths
