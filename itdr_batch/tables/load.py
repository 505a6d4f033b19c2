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


@dataclass(frozen=True)
class Drop:
    """Rows that loading drops, counts and reports instead of failing (see the module)."""

    # The count's key in ``Table.dropped``.
    reason: str
    # The log's words: "<n> rows <why> and were dropped".
    why: str
    # The rows, over the canonical columns.
    rows: pl.Expr
    # Columns shown next to the row index of a few of them.
    shown: tuple[str, ...]


# A table's drops, from its canonical schema (which they may check first).
Drops = Callable[[pl.Schema], list[Drop]]


def scan(path: str | Path, schema: TableSchema, drops: Drops | None = None) -> Table:
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
        return validate(frame, schema, source, drops)
    except (pl.exceptions.ComputeError, OSError) as exc:
        # A readable footer over damaged data pages: decoding them fails during validation.
        raise _unreadable(source, exc) from exc


def _unreadable(source: str, exc: Exception) -> TableError:
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return TableError(source, [Problem(None, f"cannot be read as Parquet: {reason}")])


def validate(
    frame: pl.LazyFrame, schema: TableSchema, source: str, drops: Drops | None = None
) -> Table:
    """Checks ``frame`` against ``schema``; returns it with canonical dtypes, less the rows of
    its ``drops`` (each counted among the rows the earlier ones keep).

    One pass over the rows counts every rule's offenders, decodes every column, finds the
    epochs' units and counts the drops (a log of 165M rows took four); only broken rules,
    dropped rows and epochs that may be past year 5138 read the rows again."""
    present = frame.collect_schema()
    casts, checks, epochs = _rules(schema, present, source)
    if schema.unique is not None:
        checks.append(
            (schema.unique, "has duplicate values", pl.col(schema.unique).is_duplicated())
        )
    canonical_schema = frame.select(e.alias(n) for n, e in casts.items()).collect_schema()
    dropping = [] if drops is None else drops(canonical_schema)
    # Each drop's rows among those the earlier ones keep.
    dropped = [
        pl.all_horizontal(d.rows, *(~e.rows for e in dropping[:i])) for i, d in enumerate(dropping)
    ]
    checked = _checked(frame, present, casts)
    counted = [bad.sum() for _, _, bad in checks]
    if schema.unique is not None:
        # Values beyond the distinct ones, not the rows holding them (counted below when there
        # are any): over a 1M-user shard 73 MiB instead of 127, which the allocator held after.
        counted[-1] = pl.len() - pl.col(schema.unique).n_unique()
    tallies = {
        **{f"check {i}": count for i, count in enumerate(counted)},
        **{f"drop {i}": rows.sum() for i, rows in enumerate(dropped)},
        **{
            f"epoch {name} {j}": tally(_epoch(name, dtype))
            for name, dtype in epochs.items()
            for j, tally in enumerate(_EPOCH_TALLIES)
        },
        # Decodes every column: a damaged page fails here, not in the job.
        **{f"read {c}": _original(c).null_count() for c in present.names()},
    }
    counts = (
        checked.select(e.alias(n) for n, e in tallies.items())
        .collect(engine="streaming")
        .row(0, named=True)
    )
    keys = _key_columns(schema, present)
    if schema.unique is not None and counts[duplicates := f"check {len(checks) - 1}"]:
        counts[duplicates] = checked.select(checks[-1][2].sum()).collect().item()
    problems = [
        _problem(checked, check, counts[f"check {i}"], keys)
        for i, check in enumerate(checks)
        if counts[f"check {i}"]
    ]
    rescaled = set()
    for name, dtype in epochs.items():
        smallest, lowest, highest = (counts[f"epoch {name} {j}"] for j in range(3))
        unit, divisor = _epoch_unit(source, name, smallest)
        if divisor != 1:
            casts[name] = _in_seconds(casts[name], _epoch(name, dtype, read=True), divisor)
            rescaled.add(name)
        if smallest is not None and max(abs(lowest // divisor), abs(highest // divisor)) >= (
            _MAX_SECONDS
        ):
            problems.extend(_too_large(frame, present, casts, name, dtype, unit, keys))
    if problems:
        raise TableError(source, problems)
    drop_counts = {d.reason: counts[f"drop {i}"] for i, d in enumerate(dropping)}
    for drop, rows in zip(dropping, dropped, strict=True):
        if drop_counts[drop.reason]:
            _log_dropped(checked, drop, rows, drop_counts[drop.reason], source)
    # Columns already canonical stay untouched (a cast to the same dtype changes nothing), so
    # that filters on them reach the Parquet scan: a batch then reads only its users' rows.
    changed = {n: e for n, e in casts.items() if n in rescaled or canonical_schema[n] != present[n]}
    table = frame.with_columns(expr.alias(name) for name, expr in changed.items())
    # Only drops that matched rows filter them: a clean log streams to the cut unfiltered.
    if kept := [~d.rows for d in dropping if drop_counts[d.reason]]:
        table = table.filter(*kept)
    return Table(source, table, {reason: n for reason, n in drop_counts.items() if n})


def _rules(
    schema: TableSchema, present: pl.Schema, source: str
) -> tuple[dict[str, pl.Expr], list[tuple[str, str, pl.Expr]], dict[str, pl.DataType]]:
    """Per present column, its cast to the canonical dtype and its row checks; the columns of
    epoch numbers. Missing columns and dtypes that cannot be cast fail here."""
    problems = [
        Problem(c.name, f"is missing (found: {', '.join(present.names()) or 'no columns'})")
        for c in schema.columns
        if c.required and c.name not in present
    ]
    casts: dict[str, pl.Expr] = {}
    checks: list[tuple[str, str, pl.Expr]] = []
    epochs: dict[str, pl.DataType] = {}
    for column in schema.columns:
        if column.name not in present:
            continue
        dtype = present[column.name]
        normalise = _normaliser(column.kind, dtype)
        if normalise is None:
            what = f"has dtype {dtype}, expected {column.kind.value}"
            problems.append(Problem(column.name, what))
            continue
        casts[column.name] = normalise(pl.col(column.name))
        checks.extend(_row_checks(column, _original(column.name), pl.col(column.name)))
        if column.kind is Kind.TIMESTAMP and _epoch_values(pl.col(column.name), dtype) is not None:
            epochs[column.name] = dtype
    if problems:
        raise TableError(source, problems)
    return casts, checks, epochs


def _original(name: str) -> pl.Expr:
    """A column as read, beside its canonical form (which has its name) while checking."""
    return pl.col(f"__original_{name}")


def _checked(frame: pl.LazyFrame, present: pl.Schema, casts: dict[str, pl.Expr]) -> pl.LazyFrame:
    """Each column as read (``_original``) and in canonical form: checks tell a null from an
    unparsable value by comparing the two."""
    return frame.select(
        *(pl.col(name).alias(f"__original_{name}") for name in present.names()),
        *(expr.alias(name) for name, expr in casts.items()),
    )


def _problem(
    checked: pl.LazyFrame, check: tuple[str, str, pl.Expr], count: int, keys: list[str]
) -> Problem:
    """A broken rule with its count and its first offending rows (by row index), as read."""
    column, what, bad = check
    shown = dict.fromkeys([*keys, column])
    examples = (
        checked.with_row_index(ROW)
        .filter(bad)
        .select(ROW, *(_original(c).alias(c) for c in shown))
        .head(MAX_EXAMPLES)
        .collect()
    )
    return Problem(column, what, count, examples)


def _log_dropped(checked: pl.LazyFrame, drop: Drop, rows: pl.Expr, count: int, source: str) -> None:
    examples = (
        checked.with_row_index(ROW).filter(rows).select(ROW, *drop.shown).head(MAX_EXAMPLES)
    ).collect()
    log.warning(
        "%s: %d rows %s and were dropped (first %d: %s)",
        source,
        count,
        drop.why,
        len(examples),
        _format_rows(examples),
    )


def _key_columns(schema: TableSchema, present: pl.Schema) -> list[str]:
    """The id columns shown next to an offending value so that a row can be found."""
    return [
        c.name for c in schema.columns if c.kind is Kind.ID and c.required and c.name in present
    ]


def load_items(path: str | Path) -> Table:
    """Loads and validates an items table."""
    return scan(path, ITEMS)


def load_interactions(path: str | Path, items: Table) -> Table:
    """Loads interactions and drops (counting them) rows whose rating is NaN or infinite and rows
    whose item is not in ``items``."""
    source = str(path)

    def drops(schema: pl.Schema) -> list[Drop]:
        return [*_non_finite_ratings(schema), unknown_items(schema, items, source)]

    return scan(path, INTERACTIONS, drops)


def load_checked_interactions(path: str | Path, items: Table) -> Table:
    """Interactions whose rows were checked when they were written (``tables.checked``): their
    columns and dtypes are checked, their rows not read again. A file not in canonical dtypes
    (which such a file always is) is checked in full."""
    source = str(path)
    frame = pl.scan_parquet(path)
    present = frame.collect_schema()
    casts, _, _ = _rules(INTERACTIONS, present, source)
    canonical = frame.select(e.alias(n) for n, e in casts.items()).collect_schema()
    if any(canonical[name] != present[name] for name in casts):
        return load_interactions(path, items)
    _check_same_ids(canonical, "item_id", items, source)
    return Table(source, frame)


def load_users(path: str | Path, items: Table, interactions: Table | None = None) -> Table:
    """Loads a users shard; an empty shard is valid. Its ``user_id`` must have the dtype of the
    ``interactions``' (when given): ids keep one type end to end."""
    source = str(path)
    table = scan(path, USERS)
    schema = table.frame.collect_schema()
    for column in ("candidates", "target_item_id"):
        if column in schema:
            _check_same_ids(schema, column, items, source)
    if interactions is not None:
        expected = interactions.frame.collect_schema()["user_id"]
        if schema["user_id"] != expected:
            what = (
                f"holds {schema['user_id']} user ids but user_id in {interactions.source} is "
                f"{expected}"
            )
            raise TableError(source, [Problem("user_id", what)])
    return table


def load_item_shard(path: str | Path, items: Table) -> Table:
    """Loads a shard of items (TUI rows), whose ids must have the items' id type."""
    source = str(path)
    table = scan(path, ITEM_SHARD)
    _check_same_ids(table.frame.collect_schema(), "item_id", items, source)
    return table


def unknown_items(schema: pl.Schema, items: Table, source: str) -> Drop:
    """Interactions (of canonical ``schema``) whose item is not in ``items``: kept out, because
    real catalogues lag behind their logs."""
    _check_same_ids(schema, "item_id", items, source)
    ids = items.frame.select("item_id").collect()["item_id"]
    return Drop(
        "unknown item_id",
        f"point at item_ids not in {items.source}",
        ~pl.col("item_id").is_in(ids.implode()),
        ("user_id", "item_id"),
    )


def _non_finite_ratings(schema: pl.Schema) -> list[Drop]:
    """Interactions whose rating is NaN or infinite (a null rating is kept: no rating)."""
    if "rating" not in schema:
        return []
    rating = pl.col("rating")
    non_finite = rating.is_not_null() & ~rating.is_finite()
    why = "have a NaN or infinite rating"
    return [Drop("non-finite rating", why, non_finite, ("user_id", "item_id", "rating"))]


def _check_same_ids(schema: pl.Schema, column: str, items: Table, source: str) -> None:
    """Ids must keep one type end to end: a column of item ids has the items' id dtype."""
    expected = items.frame.collect_schema()["item_id"]
    actual = schema[column]
    inner = actual.inner if isinstance(actual, pl.List) else actual
    if inner != expected:
        what = f"holds {inner} item ids but item_id in {items.source} is {expected}"
        raise TableError(source, [Problem(column, what)])


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


def _epoch_values(column: pl.Expr, dtype: pl.DataType) -> pl.Expr | None:
    """The column's epoch numbers (null elsewhere), or None for dtypes that carry no epochs."""
    if dtype.is_integer():
        return column.cast(pl.Int64, strict=False)
    if dtype.is_float():
        return pl.when(column.is_finite()).then(column)
    if dtype == pl.String:
        return column.str.strip_chars().cast(pl.Int64, strict=False)
    return None


def _epoch(name: str, dtype: pl.DataType, *, read: bool = False) -> pl.Expr:
    """A column's epoch numbers, in the checked frame (or ``read``: in the file's)."""
    epoch = _epoch_values(pl.col(name) if read else _original(name), dtype)
    assert epoch is not None
    return epoch


# Over a column's epoch numbers: the smallest magnitude (its unit), the least and the greatest
# (whether any may be past year 5138 in that unit).
_EPOCH_TALLIES: tuple[Callable[[pl.Expr], pl.Expr], ...] = (
    lambda e: e.abs().min(),
    lambda e: e.min(),
    lambda e: e.max(),
)


def _epoch_unit(source: str, name: str, smallest: float | None) -> tuple[str, int]:
    """The unit of a column's epoch numbers, from their smallest magnitude."""
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


def _too_large(
    frame: pl.LazyFrame,
    present: pl.Schema,
    casts: dict[str, pl.Expr],
    name: str,
    dtype: pl.DataType,
    unit: str,
    keys: list[str],
) -> list[Problem]:
    """Epoch values still past year 5138 in seconds once read in the column's ``unit``: a column
    of mixed units. A second pass, taken only when the least or greatest value is such."""
    checked = _checked(frame, present, casts)
    too_large = _epoch(name, dtype).is_not_null() & (pl.col(name).abs() >= _MAX_SECONDS)
    count = checked.select(too_large.sum()).collect(engine="streaming").item()
    if not count:
        return []
    what = f"has epoch values past year 5138 as {unit} (its smallest values' unit): mixed units?"
    return [_problem(checked, (name, what, too_large), count, keys)]


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
