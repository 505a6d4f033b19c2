"""Splitting users (and their interactions) into shards by the stable hash (README, "Stable hash").

A user's shard is ``stable_hash(user_id) % shards``: it depends on the id alone, and the job's
prompts depend only on the seed and the row, so any shard count gives the same rows overall.
Rows keep their input order inside a shard.

The interactions split the same way, so a shard's run reads only its own users' log. Popularity
weights count the whole log, so its ``item_counts`` are written beside the shards
(``item_counts.parquet``), and a run reads them (``data.item_counts``) instead of counting. The
split's interactions are written from the validated log, and ``_checked.json`` beside them says
so (``tables.checked``): a shard's run does not check their rows again.
"""

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from itdr_batch.errors import ItdrError
from itdr_batch.tables.checked import write_stamp
from itdr_batch.tables.ids import stable_hash
from itdr_batch.tables.load import (
    Problem,
    Table,
    TableError,
    load_interactions,
    load_items,
    load_users,
    scan,
)
from itdr_batch.tables.schemas import USERS, Column, Kind, TableSchema
from itdr_batch.tables.sink import write_atomic, write_parquet_atomic

ITEM_COUNTS = "item_counts.parquet"
SHARD = "__shard"
# The ids of an item counts file; its `count` column is checked apart (an integer, no kind).
_COUNT_IDS = TableSchema("item counts", (Column("item_id", Kind.ID, required=True),), "item_id")


@dataclass(frozen=True)
class Split:
    """What ``split`` wrote: the users' shards, the interactions' and the whole log's counts."""

    users: list[Path]
    interactions: list[Path]
    item_counts: Path
    # Interactions that loading dropped, by reason (unknown item, non-finite rating).
    dropped: dict[str, int]


def shard_path(out: Path, index: int, shards: int) -> Path:
    return out / f"shard-{index:05d}-of-{shards:05d}.parquet"


def interactions_path(out: Path, index: int, shards: int) -> Path:
    return out / f"interactions-{index:05d}-of-{shards:05d}.parquet"


def split_users(users: Path, shards: int, out: Path) -> list[Path]:
    """Writes ``shards`` files under ``out`` (some may be empty) and returns their paths."""
    _check_count(shards)
    return _write_users(scan(users, USERS).frame, shards, out)


def split(users: Path, interactions: Path, items: Path, shards: int, out: Path) -> Split:
    """``split_users``, the users' interactions (which need their ``items``) the same way, and
    the whole log's item counts. Everything is validated before anything is written."""
    _check_count(shards)
    catalogue = load_items(items)
    log = load_interactions(interactions, catalogue)
    rows = load_users(users, catalogue, log)
    user_paths = _write_users(rows.frame, shards, out)
    paths = _write_interactions(log, shards, out)
    # Their rows are checked: each shard's run reads them without checking them again.
    write_stamp(paths, items)
    # Sorted: the file's bytes are part of each shard run's id, so a rerun must write the same.
    counts = item_counts(pl.scan_parquet(paths).select("item_id")).sort("item_id")
    write_parquet_atomic(counts, out / ITEM_COUNTS)
    return Split(user_paths, paths, out / ITEM_COUNTS, log.dropped)


def item_counts(interactions: pl.LazyFrame | pl.DataFrame) -> pl.DataFrame:
    """Interactions per item id (columns ``item_id``, ``count``): the popularity weights' base
    (``prompts.build.popularity_counts``), here so that a split can write the whole log's."""
    counts = interactions.lazy().group_by("item_id").agg(count=pl.len())
    return counts.collect(engine="streaming")


def load_item_counts(path: Path, items: Table) -> pl.DataFrame:
    """An item counts file (``split``'s, or any with ``item_id`` of the items' id type and a
    non-negative integer ``count``), validated: a run's popularity weights come from it."""
    counts = scan(path, _COUNT_IDS).frame.collect()
    if problem := _count_problem(counts, items):
        raise TableError(str(path), [problem])
    return counts.select("item_id", "count")


def _count_problem(counts: pl.DataFrame, items: Table) -> Problem | None:
    ids, expected = counts.schema["item_id"], items.frame.collect_schema()["item_id"]
    if ids != expected:
        return Problem(
            "item_id", f"holds {ids} item ids but item_id in {items.source} is {expected}"
        )
    dtype = counts.schema.get("count")
    if dtype is None:
        return Problem("count", f"is missing (found: {', '.join(counts.columns)})")
    if not dtype.is_integer():
        return Problem("count", f"has dtype {dtype}, expected integer")
    if bad := counts.filter(pl.col("count").is_null() | (pl.col("count") < 0)).height:
        return Problem("count", f"has {bad} null or negative values")
    return None


def _check_count(shards: int) -> None:
    if shards < 1:
        raise ItdrError(f"--shards must be at least 1, got {shards}")


def _shard_of(ids: pl.Expr, shards: int) -> pl.Expr:
    hashed = ids.map_batches(stable_hash, return_dtype=pl.UInt64, is_elementwise=True)
    return (hashed % shards).cast(pl.UInt32).alias(SHARD)


def _write_users(frame: pl.LazyFrame, shards: int, out: Path) -> list[Path]:
    table = frame.with_columns(_shard_of(pl.col("user_id"), shards)).collect(engine="streaming")
    paths = []
    for index in range(shards):
        path = shard_path(out, index, shards)
        write_parquet_atomic(table.filter(pl.col(SHARD) == index).drop(SHARD), path)
        paths.append(path)
    return paths


def _write_interactions(log: Table, shards: int, out: Path) -> list[Path]:
    """One streaming pass, by Polars' partitioned sink (input order kept within a shard), into a
    temporary folder; each file is then moved into place whole. Shards without rows get an
    empty file with the columns."""
    tmp = out / f".interactions.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)

    def name(args: pl.io.partition.FileProviderArgs) -> str:
        return interactions_path(Path(), args.partition_keys.item(), shards).name

    try:
        log.frame.with_columns(_shard_of(pl.col("user_id"), shards)).sink_parquet(
            # No size limit: one file per shard, whatever its size.
            pl.PartitionBy(
                tmp,
                key=SHARD,
                include_key=False,
                file_path_provider=name,
                approximate_bytes_per_file=None,
            ),
            mkdir=True,
        )
        empty = pl.DataFrame(schema=log.frame.collect_schema())
        paths = []
        for index in range(shards):
            path = interactions_path(out, index, shards)
            if (part := tmp / path.name).is_file():
                write_atomic(path, part.replace)
            else:
                write_parquet_atomic(empty, path)
            paths.append(path)
        return paths
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
