"""RecBole atomic files: tab-separated, with typed headers such as ``user_id:token``.

An ``.inter`` file is either one row per interaction, or a sequence file (``item_id_list:token_seq``
plus a target ``item_id:token``) that expands to the list then the target, with synthetic
increasing timestamps. Sequential benchmarks repeat a user with every prefix of their history:
only each user's longest sequence is expanded, the others are counted as superseded.
"""

from collections import Counter
from pathlib import Path

import polars as pl

from itdr_batch.datasets.canonical import (
    Ingested,
    IngestError,
    drop_unusable_items,
    tag_domain,
)

FIELD_TYPES: dict[str, pl.DataType] = {
    "token": pl.String(),
    "token_seq": pl.List(pl.String),
    "float": pl.Float64(),
    "float_seq": pl.List(pl.Float64),
}
SEQUENCE = "item_id_list"


def read_recbole(inter: Path, item: Path, domain: str | None = None) -> Ingested:
    """Reads an interaction (or sequence) file and an item file; ``domain`` tags every item."""
    dropped: Counter[tuple[str, str]] = Counter()
    raw_items = _items(read_atomic(item), item)
    items = drop_unusable_items(raw_items, dropped)
    raw = read_atomic(inter)
    _require(raw, inter, ("user_id", "item_id"))
    notes = []
    if SEQUENCE in raw.columns:
        interactions = _expand_sequences(raw, dropped)
        # The table's "read" counts sequence rows, its "kept" the interactions they expand into.
        notes.append(
            f"{inter.name} holds sequences: {raw.height:,} sequence rows read, expanded into "
            f"{interactions.height:,} interactions (each user's longest sequence, then its target)"
        )
    else:
        interactions = _plain(raw)
    data = Ingested(
        source=f"RecBole ({inter.name} + {item.name})",
        items=items,
        interactions=interactions,
        read={"items": raw_items.height, "interactions": raw.height},
        dropped=dropped,
        notes=notes,
    )
    return tag_domain(data, domain)


def read_atomic(path: Path) -> pl.DataFrame:
    """Reads an atomic file, typing each field from its header and naming it without the type."""
    try:
        text = pl.read_csv(path, separator="\t", quote_char=None, infer_schema=False)
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise IngestError(f"{path}: cannot be parsed: {exc}") from exc
    columns = []
    for header in text.columns:
        name, _, kind = header.partition(":")
        if kind not in FIELD_TYPES:
            allowed = ", ".join(FIELD_TYPES)
            raise IngestError(
                f"{path}: field '{header}' has type '{kind}', expected one of {allowed}"
            )
        value = pl.col(header)
        if kind.endswith("_seq"):
            value = value.str.split(" ")
        columns.append(value.cast(FIELD_TYPES[kind], strict=False).alias(name))
    return text.select(columns)


def _items(raw: pl.DataFrame, path: Path) -> pl.DataFrame:
    """Maps an item file to canonical columns; the title is `title` or the first `*_title` field."""
    titles = [c for c in raw.columns if c == "title" or c.endswith("_title")]
    if "item_id" not in raw.columns or not titles:
        raise IngestError(
            f"{path}: an item file needs item_id and a title field (title or *_title); "
            f"has {raw.columns}"
        )
    title = pl.col(titles[0])
    if raw.schema[titles[0]] != pl.String:
        title = title.list.join(" ")
    renames = {"genre": "genres", "categories": "category"}
    others = [
        pl.col(c).alias(renames.get(c, c)) for c in raw.columns if c not in ("item_id", *titles)
    ]
    return raw.select("item_id", title.str.strip_chars().alias("title"), *others)


def _plain(raw: pl.DataFrame) -> pl.DataFrame:
    """One interaction per row; without timestamps, file order is the history order."""
    timestamp = pl.col("timestamp") if "timestamp" in raw.columns else pl.int_range(pl.len())
    columns = [pl.col("user_id"), pl.col("item_id"), timestamp.alias("timestamp")]
    if "rating" in raw.columns:
        columns.append(pl.col("rating"))
    return raw.select(columns)


def _expand_sequences(raw: pl.DataFrame, dropped: Counter[tuple[str, str]]) -> pl.DataFrame:
    longest = (
        raw.with_row_index("row")
        .with_columns(length=pl.col(SEQUENCE).list.len().fill_null(0))
        .sort("length", "row")
        .group_by("user_id", maintain_order=True)
        .last()
        .sort("row")
    )
    if superseded := raw.height - longest.height:
        dropped["interactions", "superseded sequence (longest kept)"] += superseded
    history = longest.select(
        "user_id",
        item_id=pl.concat_list(pl.col(SEQUENCE).fill_null([]), pl.col("item_id")),
    ).explode("item_id")
    return history.with_columns(timestamp=pl.int_range(pl.len()).over("user_id"))


def _require(raw: pl.DataFrame, path: Path, fields: tuple[str, ...]) -> None:
    if missing := [f for f in fields if f not in raw.columns]:
        raise IngestError(f"{path}: missing field(s) {missing}; has {raw.columns}")
