"""Type stubs for the Rust extension (checked against the built module by stubtest in the tests)."""

from pathlib import Path
from typing import final

from arro3.core import ChunkedArray, Table
from arro3.core.types import ArrowStreamExportable

from itdr_batch.core_args import Arrow, PromptJob

__all__ = ["Cutter", "__version__", "build_prompts", "row_time_order", "stable_hash"]

__version__: str

def stable_hash(ids: Arrow) -> ChunkedArray:
    """Stable 64-bit hash of each id (int64 or string): XXH3-64, seed 0, over the id's bytes."""

def build_prompts(job: PromptJob) -> Table:
    """Samples candidates and renders one prompt per row (see ``itdr_batch.prompts.build``).

    Returns columns ``prompt``, ``candidates`` (item ids), ``held_out_item``,
    ``held_out_position``, ``status`` (names of ``itdr_batch.status.PromptStatus``) and, when
    ``item_titles`` is given, ``candidate_titles``.
    """

def row_time_order(rows: Arrow, times: Arrow) -> Table:
    """A part's rows in ``(row, time)`` order, ties as given: a table of ``order`` (the
    permutation, uint32) and ``__row`` (the rows in that order): a counting sort on the rows,
    then each row's entries sorted stably by time."""

@final
class Cutter:
    """Cuts an interactions log into a shard's parts (see ``itdr_batch.run.extract``): part ``p``
    (``dir/part-<p:06>.arrow``, an uncompressed Arrow IPC stream) holds the log's rows of shard
    rows ``[p * rows_per_part, (p + 1) * rows_per_part)`` in log order, ``__row`` in place of the
    key and, given ``items`` (the item ids by position; not when ``key`` is ``item_id``),
    ``__item`` (the item's position) in place of ``item_id``, rows of unknown items dropped."""

    def __new__(
        cls, keys: Arrow, key: str, items: Arrow | None, rows_per_part: int, dir: Path
    ) -> Cutter: ...
    def push(self, chunk: ArrowStreamExportable) -> None:
        """Appends a chunk of the log (any Arrow table; its record batches cut together, as they
        lie) to its parts."""

    def finish(self) -> None:
        """Ends the parts' files; the cutter takes no more chunks."""
