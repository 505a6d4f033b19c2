"""Type stubs for the Rust extension (checked against the built module by stubtest in the tests)."""

from collections.abc import Sequence

from arro3.core import ChunkedArray, Table
from arro3.core.types import ArrowArrayExportable, ArrowStreamExportable

__all__ = ["__version__", "build_prompts", "stable_hash"]

__version__: str

_Arrow = ArrowArrayExportable | ArrowStreamExportable

def stable_hash(ids: _Arrow) -> ChunkedArray:
    """Stable 64-bit hash of each id (int64 or string): XXH3-64, seed 0, over the id's bytes."""

def build_prompts(
    user_ids: _Arrow,
    seed: int,
    parts: Sequence[str | int],
    lists: Sequence[tuple[Sequence[str | int], str | None]],
    sources: Sequence[int],
    columns: Sequence[tuple[_Arrow | None, _Arrow | None, _Arrow | None, int | None]],
    item_ids: _Arrow,
    item_fields: Sequence[_Arrow],
    history: int,
    also_seen: Sequence[int],
    hold_out_last: bool,
    sampling: tuple[_Arrow, _Arrow | None, int, _Arrow | None] | None,
) -> Table:
    """Samples candidates and renders one prompt per row (see ``itdr_batch.prompts``).

    Returns columns ``prompt``, ``candidates`` (item ids), ``held_out_item``,
    ``held_out_position`` and ``status`` (0 ok, 1 empty history, 2 too few candidates).
    """
