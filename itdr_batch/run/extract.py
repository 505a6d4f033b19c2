"""Stage 0 of a run: the shard's own interactions, read from the whole table once, cut by batch.

Reads: the interactions table (one streaming pass, semi-joined on the shard's keys) and the
shard's keys. Writes ``DIR/_parts/interactions/__batch=<b>/*.parquet``: the interactions of
batch b's rows, in the table's order (so ties in time break as before), with Polars' partitioned
sink (``pl.PartitionBy``, flat memory whatever the table's order). Each batch then reads its own
history once for all its tasks and never the whole table: the cost no longer grows with shard
size x table size, and an unsorted log costs what a sorted one does.

The folder is written under a temporary name and renamed, holding the run id it was cut for
(the run id covers the inputs' hashes and the batch size): a resumed run reuses it when that
matches and cuts it again otherwise; a run killed while cutting leaves only the temporary folder,
which the next run replaces.
"""

import json
import shutil
from pathlib import Path

import polars as pl

from itdr_batch.run.plan import Plan

EXTRACT = "interactions"
BATCH = "__batch"
IDENTITY = "_run_id.json"


class Extract:
    """The cut interactions of a run; ``batch(b)`` reads batch b's, once in a row."""

    def __init__(self, path: Path, schema: pl.Schema) -> None:
        self.path = path
        self.schema = schema
        self._last: tuple[int, pl.DataFrame] | None = None

    def batch(self, batch: int) -> pl.DataFrame:
        """Batch ``batch``'s interactions (empty when none of its rows has any); the last batch
        read is kept, so the tasks of one batch share one read."""
        if self._last is not None and self._last[0] == batch:
            return self._last[1]
        files = sorted((self.path / f"{BATCH}={batch}").glob("*.parquet"))
        if files:
            frame = pl.read_parquet(files, hive_partitioning=False)
        else:
            frame = pl.DataFrame(schema=self.schema)
        self._last = (batch, frame)
        return frame


def extract(plan: Plan, parts: Path) -> Extract:
    """The shard's interactions cut by batch under ``parts``, reused when cut for this run."""
    out = parts / EXTRACT
    schema = plan.interactions.collect_schema()
    identity = {"run_id": plan.run_id}
    stamp = out / IDENTITY
    if stamp.is_file() and json.loads(stamp.read_text()) == identity:
        return Extract(out, schema)
    tmp = parts / f".{EXTRACT}.tmp"
    for stale in (tmp, out):
        shutil.rmtree(stale, ignore_errors=True)
    key = plan.ids.key
    batches = (
        plan.shard.select(key)
        .with_row_index(BATCH)
        .select(key, (pl.col(BATCH) // plan.batch_size).cast(pl.UInt32).alias(BATCH))
    )
    cut = plan.interactions.join(batches, on=key, how="inner", maintain_order="left")
    tmp.mkdir(parents=True)  # first: the folder marks a cut in progress for its whole length
    cut.sink_parquet(pl.PartitionBy(tmp, key=BATCH, include_key=False), mkdir=True)
    (tmp / IDENTITY).write_text(json.dumps(identity))
    tmp.rename(out)
    return Extract(out, schema)
