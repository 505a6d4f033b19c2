"""What every dataset reader hands over, and how it becomes canonical Parquet.

Readers turn a public dataset's files into frames with the canonical column names; this module
validates them with the same rules as any input table (``tables.validate``), drops interactions
whose item is unknown, and only then writes the files, atomically.
"""

import html
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from itdr_batch.errors import ItdrError
from itdr_batch.prompts.templates import DOMAINS
from itdr_batch.tables.load import Table, unknown_items, validate
from itdr_batch.tables.schemas import INTERACTIONS, ITEMS, USERS
from itdr_batch.tables.sink import write_parquet_atomic


class IngestError(ItdrError):
    """A source file cannot be read; the message names the file (and line, when known)."""


@dataclass
class Ingested:
    """A dataset read into canonical columns, with what the reader already dropped and why."""

    source: str
    items: pl.DataFrame
    interactions: pl.DataFrame | None = None
    users: pl.DataFrame | None = None
    read: dict[str, int] = field(default_factory=dict)
    dropped: Counter[tuple[str, str]] = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)


def tag_domain(data: Ingested, domain: str | None) -> Ingested:
    """Gives every item the ``domain`` value (cross-domain data, and the prompts' domain words);
    free text, with a note when the prompts cannot use it as their words."""
    if domain is None:
        return data
    data.items = data.items.with_columns(domain=pl.lit(domain, pl.String))
    if domain not in DOMAINS:
        data.notes.append(
            f"domain {domain!r} is not a domain word ({', '.join(DOMAINS)}): prompts use it only "
            "if it is an obvious spelling of one, else set prompts.domain"
        )
    return data


@dataclass(frozen=True)
class Summary:
    """The one-screen account of an ingest: rows read, kept and dropped by reason, per table."""

    source: str
    out: Path
    read: dict[str, int]
    kept: dict[str, int]
    dropped: dict[tuple[str, str], int]
    users: int
    items: int
    notes: list[str]


def write_canonical(data: Ingested, out: Path) -> Summary:
    """Validates every table first, then writes ``<out>/{items,interactions,users}.parquet``."""
    items_frame = validate(data.items.lazy(), ITEMS, f"{data.source}: items").frame.collect()
    items_frame, decoded = unescape_titles(items_frame)
    notes = list(data.notes)
    if decoded:
        notes.append(f"{decoded:,} titles had HTML entities, decoded (&amp; as &)")
    items = Table(f"{data.source}: items", items_frame.lazy())
    outputs = {"items": items_frame}
    dropped = Counter(data.dropped)
    if data.interactions is not None:
        source = f"{data.source}: interactions"
        interactions = validate(
            data.interactions.lazy(),
            INTERACTIONS,
            source,
            lambda schema: [unknown_items(schema, items, source)],
        )
        outputs["interactions"] = interactions.frame.collect()
        for reason, count in interactions.dropped.items():
            dropped["interactions", reason] += count
    if data.users is not None:
        users = validate(data.users.lazy(), USERS, f"{data.source}: users")
        outputs["users"] = users.frame.collect()

    for name, frame in outputs.items():
        write_parquet_atomic(frame, out / f"{name}.parquet")

    user_ids = outputs.get("interactions", outputs.get("users"))
    return Summary(
        source=data.source,
        out=out,
        read=data.read,
        kept={name: frame.height for name, frame in outputs.items()},
        dropped=dict(dropped),
        users=0 if user_ids is None else user_ids["user_id"].n_unique(),
        items=items_frame.height,
        notes=notes,
    )


def unescape_titles(items: pl.DataFrame) -> tuple[pl.DataFrame, int]:
    """Titles with HTML entities decoded (``&amp;`` as ``&``), as every source may hold them
    (Amazon and RecBole exports do), and how many changed."""
    title = pl.col("title")
    decoded = (
        pl.when(title.str.contains("&", literal=True))
        .then(title.map_elements(html.unescape, return_dtype=pl.String).str.strip_chars())
        .otherwise(title)
    )
    unescaped = items.with_columns(decoded)
    return unescaped, int((unescaped["title"] != items["title"]).sum())


def drop_unusable_items(items: pl.DataFrame, dropped: Counter[tuple[str, str]]) -> pl.DataFrame:
    """Drops items without a title and repeated item ids (first kept), counting each reason."""
    title = pl.col("title").str.strip_chars()
    titled = items.filter(title.is_not_null() & (title != ""))
    if untitled := items.height - titled.height:
        dropped["items", "no title"] += untitled
    unique = titled.unique("item_id", keep="first", maintain_order=True)
    if repeated := titled.height - unique.height:
        dropped["items", "repeated item_id (first kept)"] += repeated
    return unique
