"""Amazon Review Data (2018): a reviews file and a metadata file, JSON lines (optionally gzipped).

Some public metadata files hold Python dict literals (single quotes) rather than strict JSON, one
per line: both are accepted. Items without a title, and repeated asins, are dropped and counted;
their reviews are then dropped as reviews of unknown items.
"""

import ast
import gzip
import html
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl

from itdr_batch.datasets.canonical import (
    Ingested,
    IngestError,
    drop_unusable_items,
    tag_domain,
)

# Meta fields kept, as a JSON object, in the items' `attributes` column (when present).
ATTRIBUTE_FIELDS = ("brand", "main_cat", "price", "description")
REQUIRED_REVIEW_FIELDS = ("reviewerID", "asin", "unixReviewTime")


def read_amazon2018(reviews: Path, meta: Path, domain: str | None = None) -> Ingested:
    """Reads a category's reviews and metadata; ``domain`` tags every item (for cross-domain)."""
    dropped: Counter[tuple[str, str]] = Counter()
    items = _items(meta)
    read_items = items.height
    if no_asin := items["item_id"].null_count():
        dropped["items", "no asin"] += no_asin
    items = drop_unusable_items(items.drop_nulls("item_id"), dropped)
    interactions, read_reviews = _interactions(reviews, dropped)
    data = Ingested(
        source=f"Amazon 2018 ({reviews.name} + {meta.name})",
        items=items,
        interactions=interactions,
        read={"items": read_items, "interactions": read_reviews},
        dropped=dropped,
    )
    return tag_domain(data, domain)


def _interactions(path: Path, dropped: Counter[tuple[str, str]]) -> tuple[pl.DataFrame, int]:
    rows: dict[str, list[Any]] = {
        "user_id": [],
        "item_id": [],
        "timestamp": [],
        "rating": [],
        "review": [],
        "summary": [],
    }
    read = 0
    for record in _records(path):
        read += 1
        missing = [f for f in REQUIRED_REVIEW_FIELDS if record.get(f) in (None, "")]
        if missing:
            dropped["interactions", f"no {missing[0]}"] += 1
            continue
        rows["user_id"].append(str(record["reviewerID"]))
        rows["item_id"].append(str(record["asin"]))
        rows["timestamp"].append(int(record["unixReviewTime"]))
        rows["rating"].append(_number(record.get("overall")))
        rows["review"].append(record.get("reviewText"))
        rows["summary"].append(record.get("summary"))
    schema = {
        "user_id": pl.String,
        "item_id": pl.String,
        "timestamp": pl.Int64,
        "rating": pl.Float64,
        "review": pl.String,
        "summary": pl.String,
    }
    return pl.DataFrame(rows, schema=schema), read


def _items(path: Path) -> pl.DataFrame:
    rows: dict[str, list[Any]] = {"item_id": [], "title": [], "category": [], "attributes": []}
    for record in _records(path):
        rows["item_id"].append(None if record.get("asin") is None else str(record["asin"]))
        title = record.get("title")
        # HTML entities are decoded, and counted, with every source's (``write_canonical``).
        rows["title"].append(title.strip() if isinstance(title, str) else None)
        rows["category"].append([str(c) for c in record.get("category") or []])
        attributes = {f: _text(record[f]) for f in ATTRIBUTE_FIELDS if record.get(f)}
        rows["attributes"].append(json.dumps(attributes, ensure_ascii=False, sort_keys=True))
    return pl.DataFrame(
        rows,
        schema={
            "item_id": pl.String,
            "title": pl.String,
            "category": pl.List(pl.String),
            "attributes": pl.String,
        },
    )


def _records(path: Path) -> Iterator[dict[str, Any]]:
    """One dict per non-empty line: strict JSON, else a Python dict literal."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as lines:
            for number, line in enumerate(lines, start=1):
                if line.strip():
                    yield _parse_line(line, path, number)
    except (OSError, UnicodeDecodeError, EOFError) as exc:
        raise IngestError(f"{path}: cannot be read: {exc}") from exc


def _parse_line(line: str, path: Path, number: int) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        try:
            record = ast.literal_eval(line.strip())
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            record = None
    if not isinstance(record, dict):
        raise IngestError(f"{path}:{number}: neither a JSON object nor a Python dict literal")
    return record


def _number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _text(value: Any) -> str:
    """Meta fields are strings or lists of strings (description); keep them as one string."""
    if isinstance(value, list):
        return " ".join(str(v).strip() for v in value if str(v).strip())
    return html.unescape(str(value)).strip()
