"""Lazy loading and validation of the canonical tables.

Every check runs before any output is written, so bad input fails fast with a message that names
the file, the column, what is wrong and up to five offending rows (by their 0-based row index in
the file). Validation decodes every column once, so a damaged file fails here too. Interactions
that point at unknown items are not an error: they are dropped, counted and reported, because real
catalogues lag behind their logs; so are interactions whose rating is NaN or infinite, which no
task can show or average.
"""

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from itdr_batch.errors import ItdrError
from itdr_batch.tables.schemas import (
    INTERACTIONS,
    ITEM_SHARD,
    ITEMS,
    USERS,
    Column,
    Kind,
    TableSchema,
)

log = logging.getLogger(__name__)

MAX_EXAMPLES = 5
ROW = "row"

# ISO-8601 forms accepted for string timestamps: with `Z` or an offset (converted to UTC), or
# without (read as UTC); fractional seconds optional.
_TIME_FORMATS = (
    "%Y-%m-%dT%H:%M:%S%.f%#z",
    "%Y-%m-%d %H:%M:%S%.f%#z",
    "%Y-%m-%dT%H:%M:%S%.f",
    "%Y-%m-%d %H:%M:%S%.f",
    "%Y-%m-%d",
)
# Epoch seconds past 1e11 (year 5138) are another unit: a column whose smallest magnitude
# is past it is read in the first unit that brings it below (README, "Canonical tables").
_MAX_SECONDS = 10**11
_EPOCH_UNITS = (("seconds", 1), ("milliseconds", 10**3), ("microseconds", 10**6))
_NANOSECONDS = ("nanoseconds", 10**9)


@dataclass(frozen=True)
class Problem:
    """One broken rule: the column, what is wrong, and how many rows (with a few examples)."""

    column: str | None
    what: str
    count: int = 0
    examples: pl.DataFrame | None = None

    def __str__(self) -> str:
        where = f"column '{self.column}'" if self.column else "file"
        text = f"{where}: {self.what}"
        if self.examples is not None and self.count:
            shown = len(self.examples)
            text += f" ({self.count} rows; first {shown}: {_format_rows(self.examples)})"
        return text


class TableError(ItdrError):
    """A table breaks its contract; ``str()`` names the file and every problem found."""

    def __init__(self, source: str, problems: list[Problem]) -> None:
        self.source = source
        self.problems = problems
        if len(problems) == 1:
            message = f"{source}: {problems[0]}"
        else:
            message = f"{source}: {len(problems)} problems\n" + "\n".join(
                f"  - {p}" for p in problems
            )
        super().__init__(message)


@dataclass(frozen=True)
class Table:
    """A validated canonical table: its lazy, normalised rows and what loading dropped."""

    source: str
    frame: pl.LazyFrame
    dropped: dict[str, int] = field(default_factory=dict)


def scan(path: str | Path, schema: TableSchema) -> pl.LazyFrame:
    """Scans a Parquet file lazily and validates it against ``schema``."""
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise TableError(source, [Problem(None, f"no such {schema.name} file")])
    try:
        frame = pl.scan_parquet(path)
        frame.collect_schema()
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise _unreadable(source, exc) from exc
    try:
        return validate(frame, schema, source)
    except (pl.exceptions.ComputeError, OSError) as exc:
        # A readable footer over damaged data pages: decoding them fails during validation.
        raise _unreadable(source, exc) from exc


def _unreadable(source: str, exc: Exception) -> TableError:
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return TableError(source, [Problem(None, f"cannot be read as Parquet: {reason}")])


def validate(frame: pl.LazyFrame, schema: TableSchema, source: str) -> pl.LazyFrame:
    """Checks ``frame`` against ``schema`` and returns it with canonical dtypes."""
    present = frame.collect_schema()
    problems = [
        Problem(c.name, f"is missing (found: {', '.join(present.names()) or 'no columns'})")
        for c in schema.columns
        if c.required and c.name not in present
    ]
    casts: dict[str, pl.Expr] = {}
    checks: list[tuple[str, str, pl.Expr]] = []
    for column in schema.columns:
        if column.name not in present:
            continue
        normalise = _normaliser(column.kind, present[column.name])
        if normalise is None:
            what = f"has dtype {present[column.name]}, expected {column.kind.value}"
            problems.append(Problem(column.name, what))
            continue
        casts[column.name] = normalise(pl.col(column.name))
        checks.extend(_row_checks(column, pl.col(column.name), pl.col(_canonical(column.name))))
    if problems:
        raise TableError(source, problems)
    rescaled = _read_epochs(frame, schema, present, casts, checks, source)
    if schema.unique is not None:
        duplicated = pl.col(_canonical(schema.unique)).is_duplicated()
        checks.append((schema.unique, "has duplicate values", duplicated))

    # Checks see each original column next to its converted form (to tell null from unparsable).
    checked = frame.with_row_index(ROW).with_columns(
        expr.alias(_canonical(name)) for name, expr in casts.items()
    )
    problems = _failed_checks(checked, checks, _key_columns(schema, present), present.names())
    if problems:
        raise TableError(source, problems)
    # Columns already canonical stay untouched (a cast to the same dtype changes nothing), so
    # that filters on them reach the Parquet scan: a batch then reads only its users' rows.
    converted = frame.select(expr.alias(name) for name, expr in casts.items()).collect_schema()
    changed = {n: e for n, e in casts.items() if n in rescaled or converted[n] != present[n]}
    return frame.with_columns(expr.alias(name) for name, expr in changed.items())


def _canonical(name: str) -> str:
    return f"__canonical_{name}"


def _key_columns(schema: TableSchema, present: pl.Schema) -> list[str]:
    """The id columns shown next to an offending value so that a row can be found."""
    return [
        c.name for c in schema.columns if c.kind is Kind.ID and c.required and c.name in present
    ]


def _failed_checks(
    checked: pl.LazyFrame,
    checks: list[tuple[str, str, pl.Expr]],
    keys: list[str],
    columns: list[str],
) -> list[Problem]:
    """Counts every rule's offending rows in one pass that also decodes all ``columns`` (a damaged
    page fails here, not in the job); fetches examples only for broken rules."""
    counts = (
        checked.select(
            *(bad.sum().alias(f"__check_{i}") for i, (_, _, bad) in enumerate(checks)),
            *(pl.col(c).null_count().alias(f"__read_{c}") for c in columns),
        )
        .collect(engine="streaming")
        .row(0)[: len(checks)]
    )
    problems = []
    for (column, what, bad), count in zip(checks, counts, strict=True):
        if count:
            shown = [ROW, *dict.fromkeys([*keys, column])]
            examples = checked.filter(bad).select(shown).head(MAX_EXAMPLES).collect()
            problems.append(Problem(column, what, count, examples))
    return problems


def load_items(path: str | Path) -> Table:
    """Loads and validates an items table."""
    return Table(str(path), scan(path, ITEMS))


def load_interactions(path: str | Path, items: Table) -> Table:
    """Loads interactions and drops (counting them) rows whose rating is NaN or infinite and rows
    whose item is not in ``items``."""
    source = str(path)
    frame = scan(path, INTERACTIONS)
    finite, non_finite = drop_non_finite_ratings(frame, source)
    known, unknown = drop_unknown_items(finite, items, source)
    dropped = {"non-finite rating": non_finite, "unknown item_id": unknown}
    return Table(source, known, {reason: n for reason, n in dropped.items() if n})


def load_users(path: str | Path, items: Table, interactions: Table | None = None) -> Table:
    """Loads a users shard; an empty shard is valid. Its ``user_id`` must have the dtype of the
    ``interactions``' (when given): ids keep one type end to end."""
    source = str(path)
    frame = scan(path, USERS)
    names = frame.collect_schema().names()
    for column in ("candidates", "target_item_id"):
        if column in names:
            _check_same_ids(frame, column, items, source)
    if interactions is not None:
        expected = interactions.frame.collect_schema()["user_id"]
        actual = frame.collect_schema()["user_id"]
        if actual != expected:
            what = f"holds {actual} user ids but user_id in {interactions.source} is {expected}"
            raise TableError(source, [Problem("user_id", what)])
    return Table(source, frame)


def load_item_shard(path: str | Path, items: Table) -> Table:
    """Loads a shard of items (TUI rows), whose ids must have the items' id type."""
    source = str(path)
    frame = scan(path, ITEM_SHARD)
    _check_same_ids(frame, "item_id", items, source)
    return Table(source, frame)


def drop_unknown_items(
    interactions: pl.LazyFrame, items: Table, source: str
) -> tuple[pl.LazyFrame, int]:
    """Keeps the interactions whose item is in ``items``; logs and returns how many were dropped."""
    _check_same_ids(interactions, "item_id", items, source)
    item_ids = items.frame.select("item_id")
    unknown = interactions.with_row_index(ROW).join(item_ids, on="item_id", how="anti")
    why = f"point at item_ids not in {items.source}"
    count = _count_dropped(unknown, ["user_id", "item_id"], source, why)
    known = interactions.join(item_ids, on="item_id", how="semi", maintain_order="left")
    return known, count


def drop_non_finite_ratings(interactions: pl.LazyFrame, source: str) -> tuple[pl.LazyFrame, int]:
    """Drops interactions whose rating is NaN or infinite (a null rating is kept: no rating);
    logs and returns how many were dropped."""
    if "rating" not in interactions.collect_schema().names():
        return interactions, 0
    non_finite = pl.col("rating").is_not_null() & ~pl.col("rating").is_finite()
    bad = interactions.with_row_index(ROW).filter(non_finite)
    why = "have a NaN or infinite rating"
    count = _count_dropped(bad, ["user_id", "item_id", "rating"], source, why)
    return interactions.filter(~non_finite), count


def _count_dropped(bad: pl.LazyFrame, columns: list[str], source: str, why: str) -> int:
    """How many rows ``bad`` (indexed by ``ROW``) holds; when any, logs them with examples."""
    count: int = bad.select(pl.len()).collect(engine="streaming").item()
    if count:
        examples = bad.select(ROW, *columns).head(MAX_EXAMPLES).collect()
        log.warning(
            "%s: %d rows %s and were dropped (first %d: %s)",
            source,
            count,
            why,
            len(examples),
            _format_rows(examples),
        )
    return count


def _check_same_ids(frame: pl.LazyFrame, column: str, items: Table, source: str) -> None:
    """Ids must keep one type end to end: a column of item ids has the items' id dtype."""
    expected = items.frame.collect_schema()["item_id"]
    actual = frame.collect_schema()[column]
    inner = actual.inner if isinstance(actual, pl.List) else actual
    if inner != expected:
        raise TableError(
            source,
            [
                Problem(
                    column,
                    f"holds {inner} item ids but item_id in {items.source} is {expected}",
                )
            ],
        )


def _normaliser(kind: Kind, dtype: pl.DataType) -> Callable[[pl.Expr], pl.Expr] | None:
    """How to turn a column of ``dtype`` into the canonical dtype of ``kind``; None if it cannot."""
    is_text = dtype == pl.String or isinstance(dtype, pl.Categorical | pl.Enum)
    if kind is Kind.ID:
        if dtype.is_integer():
            return lambda e: e.cast(pl.Int64, strict=False)
        if is_text:
            return lambda e: e.cast(pl.String)
    elif kind is Kind.ID_LIST:
        ids = dtype.inner if isinstance(dtype, pl.List) else None
        if isinstance(ids, pl.DataType) and _normaliser(Kind.ID, ids) is not None:
            inner = pl.Int64 if ids.is_integer() else pl.String
            return lambda e: e.cast(pl.List(inner), strict=False)
    elif kind is Kind.TIMESTAMP:
        return _timestamp_normaliser(dtype)
    elif kind is Kind.FLOAT:
        if dtype.is_numeric():
            return lambda e: e.cast(pl.Float64)
    elif kind in (Kind.TEXT, Kind.NON_EMPTY_TEXT):
        if is_text:
            return lambda e: e.cast(pl.String)
    elif kind is Kind.TEXT_LIST:
        if is_text:
            return lambda e: (
                pl.when(e.is_null()).then(None).otherwise(pl.concat_list(e.cast(pl.String)))
            )
        if isinstance(dtype, pl.List) and (
            dtype.inner == pl.String or isinstance(dtype.inner, pl.Categorical)
        ):
            return lambda e: e.cast(pl.List(pl.String))
    elif kind is Kind.ATTRIBUTES and (isinstance(dtype, pl.Struct) or dtype == pl.String):
        return lambda e: e
    return None


def _read_epochs(
    frame: pl.LazyFrame,
    schema: TableSchema,
    present: pl.Schema,
    casts: dict[str, pl.Expr],
    checks: list[tuple[str, str, pl.Expr]],
    source: str,
) -> set[str]:
    """Epoch-number timestamps in their detected unit: rescales the ``casts`` of columns not in
    seconds, adds a check for values in another unit, returns the rescaled columns."""
    rescaled = set()
    for column in schema.columns:
        epoch = None
        if column.kind is Kind.TIMESTAMP and column.name in casts:
            epoch = _epoch_values(pl.col(column.name), present[column.name])
        if epoch is None:
            continue
        unit, divisor = _epoch_unit(frame, column.name, epoch, source)
        if divisor != 1:
            casts[column.name] = _in_seconds(casts[column.name], epoch, divisor)
            rescaled.add(column.name)
        too_large = epoch.is_not_null() & (pl.col(_canonical(column.name)).abs() >= _MAX_SECONDS)
        what = f"has epoch values past year 5138 as {unit} (its smallest values' unit)"
        checks.append((column.name, f"{what}: mixed units?", too_large))
    return rescaled


def _epoch_values(column: pl.Expr, dtype: pl.DataType) -> pl.Expr | None:
    """The column's epoch numbers (null elsewhere), or None for dtypes that carry no epochs."""
    if dtype.is_integer():
        return column.cast(pl.Int64, strict=False)
    if dtype.is_float():
        return pl.when(column.is_finite()).then(column)
    if dtype == pl.String:
        return column.str.strip_chars().cast(pl.Int64, strict=False)
    return None


def _epoch_unit(frame: pl.LazyFrame, name: str, epoch: pl.Expr, source: str) -> tuple[str, int]:
    """The unit of a column's epoch numbers, from the smallest magnitude (one pass over it)."""
    smallest = frame.select(epoch.abs().min()).collect(engine="streaming").item()
    if smallest is None:
        return _EPOCH_UNITS[0]
    unit, divisor = next(
        ((u, d) for u, d in _EPOCH_UNITS if smallest / d < _MAX_SECONDS), _NANOSECONDS
    )
    if divisor != 1:
        log.warning(
            "%s: column '%s' read as epoch %s (its smallest value, %d, is past year 5138 in "
            "seconds)",
            source,
            name,
            unit,
            smallest,
        )
    return unit, divisor


def _in_seconds(converted: pl.Expr, epoch: pl.Expr, divisor: int) -> pl.Expr:
    """``converted`` with its epoch numbers divided into seconds (floored); dates untouched."""
    return (
        pl.when(epoch.is_not_null())
        .then((epoch // divisor).cast(pl.Int64, strict=False))
        .otherwise(converted)
    )


def _timestamp_normaliser(dtype: pl.DataType) -> Callable[[pl.Expr], pl.Expr] | None:
    if dtype.is_integer():
        return lambda e: e.cast(pl.Int64, strict=False)
    if dtype.is_float():
        return lambda e: pl.when(e.is_finite()).then(e.floor()).cast(pl.Int64, strict=False)
    if isinstance(dtype, pl.Datetime):
        return lambda e: e.dt.epoch("s")
    if dtype == pl.Date:
        return lambda e: e.cast(pl.Datetime("ms")).dt.epoch("s")
    if dtype == pl.String:
        return lambda e: pl.coalesce(
            e.str.strip_chars().cast(pl.Int64, strict=False),
            *(
                e.str.strip_chars().str.to_datetime(f, time_unit="ms", strict=False).dt.epoch("s")
                for f in _TIME_FORMATS
            ),
        )
    return None


def _row_checks(
    column: Column, original: pl.Expr, converted: pl.Expr
) -> list[tuple[str, str, pl.Expr]]:
    """The per-row rules of a column, each a (column, what is wrong, bad-row expression)."""
    checks = []
    if column.required:
        checks.append((column.name, "is null", original.is_null()))
    unconvertible = original.is_not_null() & converted.is_null()
    if column.kind is Kind.TIMESTAMP:
        checks.append((column.name, "has unparsable timestamps", unconvertible))
    elif column.kind is Kind.ID:
        checks.append((column.name, "has ids that do not fit in int64", unconvertible))
    elif column.kind is Kind.ID_LIST:
        checks.append(
            (
                column.name,
                "has lists with null ids",
                converted.list.eval(pl.element().is_null()).list.any(),
            )
        )
    elif column.kind is Kind.NON_EMPTY_TEXT:
        checks.append((column.name, "is empty", converted.str.strip_chars() == ""))
    return checks


def _format_rows(rows: pl.DataFrame) -> str:
    return "; ".join(
        ", ".join(f"{key}={value!r}" for key, value in row.items())
        for row in rows.iter_rows(named=True)
    )
