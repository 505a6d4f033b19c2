"""Stage 0 of a run: the shard's own interactions, read from the whole table once, cut by batch.

Reads: the interactions table (one streaming pass over the key, ``item_id``, ``timestamp`` and
the columns the run's tasks need), the shard's keys and the item ids. Writes
``DIR/_parts/interactions/part-<p>.arrow``: the interactions of the shard's rows, in the table's
order, with ``__row`` (the shard row) in place of the key (a batch gathers it back where a task
reads it) and ``__item`` (the item's position among the items) in place of ``item_id``, part
``p`` holding the rows of consecutive batches (at most ``MAX_PARTS`` files, few enough to keep
open however small the batches). The Rust core cuts (``_core.Cutter``: a hash lookup of each
row's key and item and one gather per chunk, the parts written on a thread of their own while the
next chunk is looked up; several times cheaper than a join and a partitioned Parquet sink in
Polars, and flat memory whatever the table's order). Parts are not compressed:
LZ4 took a third of the cut's time (165M interactions: 12.3 s, 8.1 s without) for parts 2.3x
smaller (uncompressed: 16 bytes an interaction for TKR, which reads no rating). A part read back
is put in row order, each row's interactions by time, ties in the table's order
(``_core.row_time_order``), and its time dropped (no task reads it): a batch is a slice of it,
with ``__row`` the row's position in the batch (sorted, so its lists are grouped by runs: no
sort, no hashing of keys).
Each batch reads its own history once for all its tasks and never the whole table: the cost no
longer grows with shard size x table size, and an unsorted log costs what a sorted one does.

The folder is written under a temporary name and renamed, holding the run id it was cut for
(the run id covers the inputs' hashes and the batch size) and the parts it holds: a resumed run
reuses it when that matches and cuts it again otherwise; a run killed while cutting leaves only
the temporary folder, which the next run replaces. A part is removed as soon as every unit of its
batches is committed (``Extract.release``): the cut is written faster than the disk takes it, and
a part removed before the kernel writes it back never reaches the disk (at 165M interactions the
cut's writeback slowed the units' commits by ~2 s). A resumed run needs no part of a committed
batch, and cuts again when a batch it does again (its results part lost) needs a removed part.
"""

import json
import shutil
import threading
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Self

import polars as pl
import pyarrow as pa

from itdr_batch import _core
from itdr_batch.prompts.build import ITEM, ROW  # the cutter's names for them too (cut.rs)
from itdr_batch.run.plan import Plan
from itdr_batch.tables.schemas import INTERACTIONS
from itdr_batch.tasks import spec

EXTRACT = "interactions"
IDENTITY = "_run_id.json"
# Parts are cut so that at most this many files are open at once.
MAX_PARTS = 256
# Log rows per chunk handed to the cutter. Smaller chunks stay in the cache through the lookups,
# gathers and the writer's copies into the page cache (with 1M rows those copies alone took a
# fifth of the cut's CPU) and Polars holds less (the 1M-user shard's cut peaked 40-80 MiB lower
# at 400k), but cut a shuffled log into smaller pieces (100k: the shuffled cut ~0.5 s slower).
CHUNK_ROWS = 400_000
TIME = "timestamp"


class Extract:
    """The cut interactions of a run; ``batch(b)`` reads batch b's, once in a row. A context
    manager: its reader thread ends with the block."""

    def __init__(self, path: Path, keys: pl.Series, schema: pl.Schema, batch_size: int) -> None:
        # The shard's keys, by row: a part holds each interaction's row, not its key.
        self.keys = keys
        self.path = path
        self.schema = schema
        self.batch_size = batch_size
        self.part_batches = -(-keys.len() // batch_size // MAX_PARTS) or 1
        self.parts = -(-keys.len() // self.rows_per_part)
        # The parts the cutter wrote (it writes none for rows without interactions).
        self.written: frozenset[int] = frozenset()
        # Parts read or being read, by number: the one batches are taken from and the next.
        self._reading: dict[int, Future[pl.DataFrame]] = {}
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="history")
        # Parts whose batches are committed are removed on a thread of their own: unlinking a
        # file the kernel is writing back waits for it, and reading must not.
        self._remover = ThreadPoolExecutor(max_workers=1, thread_name_prefix="release")
        self._lock = threading.Lock()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self._reader.shutdown(cancel_futures=True)
        self._remover.shutdown()
        # The pages the parts were read into (pyarrow's pool keeps them for the next part) go
        # back before the final files are written (the 1M-user shard's RSS after its batches:
        # 304 -> 277 MiB).
        pa.default_memory_pool().release_unused()

    @property
    def rows_per_part(self) -> int:
        return self.batch_size * self.part_batches

    def batch(self, batch: int) -> pl.DataFrame:
        """Batch ``batch``'s interactions by row, each row's in time order (empty when none of
        its rows has any), ``ROW`` their row's position in the batch (the key only where a task
        reads it: TUI's rows are items): a slice of its part, so the tasks of one batch share
        one read. The next part is read on a thread of its own meanwhile: one builder then kept
        pace with two reading their own parts, ~60 MiB lower at the 1M-user shard."""
        number = batch // self.part_batches
        with self._lock:
            reading = self._read(number)
            for done in [p for p in self._reading if p < number]:
                del self._reading[done]
            if number + 1 < self.parts:
                self._read(number + 1)
        part = reading.result()
        first = batch * self.batch_size
        start, end = (part[ROW].search_sorted(r) for r in (first, first + self.batch_size))
        rows = part.slice(start, end - start)
        if self.keys.name == "item_id":
            rows = rows.insert_column(0, self.keys.gather(rows[ROW]))
        return rows.with_columns((pl.col(ROW) - pl.lit(first, pl.UInt32)).set_sorted())

    def release(self, batch: int) -> None:
        """Every unit of batch ``batch`` is committed: its part is removed once all of the
        part's batches are."""
        number = batch // self.part_batches
        batches = -(-self.keys.len() // self.batch_size)
        if batch == min((number + 1) * self.part_batches, batches) - 1:
            self._remover.submit(self.part_path(number).unlink, missing_ok=True)

    def part_path(self, part: int) -> Path:
        return self.path / f"part-{part:06d}.arrow"  # as the cutter names them

    def _read(self, part: int) -> Future[pl.DataFrame]:
        if part not in self._reading:
            self._reading[part] = self._reader.submit(self._read_part, part)
        return self._reading[part]

    def _read_part(self, part: int) -> pl.DataFrame:
        """The part in ``(row, time)`` order, without the time."""
        if part not in self.written:
            return pl.DataFrame(schema=self.schema | {ROW: pl.UInt32})
        path = self.part_path(part)
        if not path.is_file():
            # Only a part whose batches are all committed is removed, and it is never read again.
            raise FileNotFoundError(f"{path}: a part of the cut is missing; remove {self.path}")
        # pyarrow, then one chunk: Polars' reader took ~15% longer, and a gather over many
        # batches is several times slower. pyarrow's default pool (mimalloc) reuses the pages
        # of the parts read before: its jemalloc pool returned them, and faulting 2.6 GB of
        # fresh pages back in cost the 1M-user shard ~2.3 s of kernel time (RSS +0-20 MiB,
        # under the cut's peak).
        with pa.ipc.open_stream(path) as stream:
            frame = pl.from_arrow(stream.read_all().combine_chunks())
        assert isinstance(frame, pl.DataFrame)
        ordered = pl.DataFrame(_core.row_time_order(frame[ROW], frame[TIME]))
        # Time has given the order and no task reads it again: a third less to gather and hold;
        # the rows in order come with it.
        return frame.drop(ROW, TIME)[ordered["order"]].with_columns(ordered[ROW])


def extract(plan: Plan, parts: Path, batches: Iterable[int] | None = None) -> Extract:
    """The shard's interactions cut by batch under ``parts`` for ``batches`` (all by default),
    reused when cut for this run and still holding the parts those batches read."""
    out = parts / EXTRACT
    # Only the columns the run's tasks read are cut (TKR reads no rating: a fifth less to
    # gather, write and read back); a log's other columns stay out.
    read = {plan.ids.key, "item_id", TIME}
    read |= {c for task in plan.tasks for c in spec(task).interaction_columns}
    present = plan.interactions.collect_schema()
    log = plan.interactions.select(
        c.name for c in INTERACTIONS.columns if c.name in present and c.name in read
    )
    keys = plan.shard.select(plan.ids.key).collect().to_series()
    # Item ids become item positions, looked up in the cut's hash pass (a tenth of a batch's
    # build time otherwise); not where the rows are items: their key is the item.
    items = None if plan.ids.key == "item_id" else plan.items["item_id"]
    replaced = {plan.ids.key, "item_id", TIME}  # by ROW and, with items, ITEM; time: by order
    schema = pl.Schema((n, t) for n, t in log.collect_schema().items() if n not in replaced)
    if items is not None:
        schema |= {ITEM: pl.UInt32()}
    cut = Extract(out, keys, schema, plan.batch_size)
    stamp = out / IDENTITY
    cut_for = json.loads(stamp.read_text()) if stamp.is_file() else {}
    if cut_for.get("run_id") == plan.run_id and "parts" in cut_for:  # older stamps list none
        cut.written = frozenset(cut_for["parts"])
        batches = range(plan.batches) if batches is None else batches
        needed = {b // cut.part_batches for b in batches} & cut.written
        # A part goes once its batches are committed; a unit done again (its results part
        # lost) needs it back.
        if all(cut.part_path(p).is_file() for p in needed):
            return cut
    tmp = parts / f".{EXTRACT}.tmp"
    for stale in (tmp, out):
        shutil.rmtree(stale, ignore_errors=True)
    tmp.mkdir(parents=True)  # first: the folder marks a cut in progress for its whole length
    cutter = _core.Cutter(keys, plan.ids.key, items, cut.rows_per_part, tmp)
    for chunk in log.collect_batches(chunk_size=CHUNK_ROWS):
        # As pyarrow: its batches (a chunk spans row groups) go over as they are, where the
        # frame's own export would first copy them into one.
        cutter.push(chunk.to_arrow())
    cutter.finish()
    cut.written = frozenset(int(p.stem.removeprefix("part-")) for p in tmp.glob("part-*.arrow"))
    identity = {"run_id": plan.run_id, "parts": sorted(cut.written)}
    (tmp / IDENTITY).write_text(json.dumps(identity))
    tmp.rename(out)
    return cut


def discard(parts: Path) -> threading.Thread:
    """Removes the cut under ``parts`` on a thread of its own (join it): once every unit is
    committed it is only disk to free (2.5 GB took 0.7 s), done beside the final files' writing.
    The stamp goes first: a run killed meanwhile never reuses part of a cut."""
    out = parts / EXTRACT
    (out / IDENTITY).unlink(missing_ok=True)
    remover = threading.Thread(
        target=shutil.rmtree, args=(out,), kwargs={"ignore_errors": True}, name="discard-cut"
    )
    remover.start()
    return remover
