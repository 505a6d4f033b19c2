"""Type stubs for the Rust extension (checked against the built module by stubtest in the tests)."""

from arro3.core import ChunkedArray, Table

from itdr_batch.core_args import Arrow, PromptJob

__all__ = ["__version__", "build_prompts", "stable_hash"]

__version__: str

def stable_hash(ids: Arrow) -> ChunkedArray:
    """Stable 64-bit hash of each id (int64 or string): XXH3-64, seed 0, over the id's bytes."""

def build_prompts(job: PromptJob) -> Table:
    """Samples candidates and renders one prompt per row (see ``itdr_batch.prompts.build``).

    Returns columns ``prompt``, ``candidates`` (item ids), ``held_out_item``,
    ``held_out_position``, ``status`` (names of ``itdr_batch.status.PromptStatus``) and, when
    ``item_titles`` is given, ``candidate_titles``.
    """
