"""The canonical tables (README, "Canonical tables"), declared once.

Each column has a *kind*; validation (``load.py``) accepts every input dtype of that kind and
normalises it to one canonical dtype, so the rest of the job sees a single representation:
ids stay int64 or string, timestamps become int64 epoch seconds, ratings float64, and
category/genres lists of strings. Columns not declared here pass through untouched.
"""

from dataclasses import dataclass
from enum import Enum


class Kind(Enum):
    """What a column holds, and so which input dtypes it accepts."""

    ID = "int64 or string id"
    ID_LIST = "list of ids"
    TIMESTAMP = "epoch number (unit detected), datetime, date or ISO-8601 string"
    FLOAT = "number"
    TEXT = "string"
    NON_EMPTY_TEXT = "non-empty string"
    TEXT_LIST = "string or list of strings"
    ATTRIBUTES = "struct or JSON string"


@dataclass(frozen=True)
class Column:
    name: str
    kind: Kind
    required: bool = False


@dataclass(frozen=True)
class TableSchema:
    """A canonical table: its columns and the column whose values must be unique, if any."""

    name: str
    columns: tuple[Column, ...]
    unique: str | None = None

    def column(self, name: str) -> Column:
        return next(c for c in self.columns if c.name == name)


INTERACTIONS = TableSchema(
    "interactions",
    (
        Column("user_id", Kind.ID, required=True),
        Column("item_id", Kind.ID, required=True),
        Column("timestamp", Kind.TIMESTAMP, required=True),
        Column("rating", Kind.FLOAT),
        Column("review", Kind.TEXT),
    ),
)

ITEMS = TableSchema(
    "items",
    (
        Column("item_id", Kind.ID, required=True),
        Column("title", Kind.NON_EMPTY_TEXT, required=True),
        Column("category", Kind.TEXT_LIST),
        Column("genres", Kind.TEXT_LIST),
        Column("domain", Kind.TEXT),
        Column("attributes", Kind.ATTRIBUTES),
    ),
    unique="item_id",
)

USERS = TableSchema(
    "users",
    (
        Column("user_id", Kind.ID, required=True),
        Column("candidates", Kind.ID_LIST),
        Column("target_item_id", Kind.ID),
    ),
    unique="user_id",
)

# TUI's shard: its rows are items, to describe their users.
ITEM_SHARD = TableSchema(
    "items shard",
    (Column("item_id", Kind.ID, required=True),),
    unique="item_id",
)
