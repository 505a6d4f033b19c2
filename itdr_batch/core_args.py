"""What crosses into the Rust core: ``_core.build_prompts``'s argument, named and typed.

Each TypedDict matches a ``#[derive(FromPyObject)]`` struct in ``rust/src/lib.rs`` (read by key),
so mypy checks the Python side and stubtest checks ``_core.pyi`` against the built module.
Arrays are any Arrow producer (Polars Series, pyarrow arrays): they cross without copies.
"""

from typing import Literal, TypedDict

from arro3.core.types import ArrowArrayExportable, ArrowStreamExportable

Arrow = ArrowArrayExportable | ArrowStreamExportable


class EntryField(TypedDict):
    """A field of an entry format: the k-th item field, or the entry's index, rating or text."""

    field: int | Literal["index", "rating", "text"]


class ListFormat(TypedDict):
    """One list slot of the template: its entry format (literal text and fields), the separator
    (None: a Python list literal) and the data it shows (a data slot's number, the sampled
    candidates, or the held-out entry)."""

    entry: list[str | EntryField]
    separator: str | None
    source: int | Literal["candidates", "held_out"]


class Slot(TypedDict):
    """One data slot: per-row lists of dense item indices, ratings and texts (equal lengths per
    row), and how many trailing entries to keep."""

    items: Arrow | None
    ratings: Arrow | None
    texts: Arrow | None
    max_entries: int | None


class Sampling(TypedDict):
    """Candidate sampling: the pool (dense item indices), optional weights, how many per row,
    optional provided candidates per row (dense item indices), and which of ``orders`` balanced
    presentation orders of the drawn list to render (0: as drawn)."""

    pool: Arrow
    weights: Arrow | None
    count: int
    provided: Arrow | None
    order: int
    orders: int


class PromptJob(TypedDict):
    """One call: rows, template (literal text and list numbers), data slots, items, sampling.

    ``item_titles`` (optional) makes the result carry ``candidate_titles`` beside the ids.
    """

    row_ids: Arrow
    seed: int
    parts: list[str | int]
    lists: list[ListFormat]
    slots: list[Slot]
    item_ids: Arrow
    item_titles: Arrow | None
    item_fields: list[Arrow]
    history: int
    also_seen: list[int]
    hold_out_last: bool
    sampling: Sampling | None
