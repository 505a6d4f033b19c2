"""Validation of the canonical tables: every rule broken by a small crafted Parquet file."""

import logging
from datetime import UTC, date, datetime
from pathlib import Path

import polars as pl
import pytest

from itdr_batch.tables.load import (
    MAX_EXAMPLES,
    TableError,
    load_interactions,
    load_items,
    load_users,
    scan,
)
from itdr_batch.tables.schemas import INTERACTIONS, ITEMS


def write(tmp_path: Path, name: str, frame: pl.DataFrame) -> Path:
    path = tmp_path / name
    frame.write_parquet(path)
    return path


@pytest.fixture
def items_path(tmp_path: Path) -> Path:
    return write(
        tmp_path,
        "items.parquet",
        pl.DataFrame(
            {
                "item_id": [10, 20, 30],
                "title": ["Heat (1995)", "Léon (1994)", "Ran (1985)"],
                "genres": [["Crime"], [], None],
            }
        ),
    )


def interactions(**columns: object) -> pl.DataFrame:
    base: dict[str, object] = {
        "user_id": [1, 1, 2],
        "item_id": [10, 20, 30],
        "timestamp": [100, 200, 300],
        "rating": [4.0, 3.5, 5.0],
    }
    return pl.DataFrame(base | columns, strict=False)


def test_valid_tables_load_lazily_with_canonical_dtypes(tmp_path: Path, items_path: Path) -> None:
    items = load_items(items_path)
    assert isinstance(items.frame, pl.LazyFrame)
    frame = interactions(user_id=pl.Series([1, 1, 2], dtype=pl.Int32)).with_columns(
        pl.col("rating").cast(pl.Int8)
    )
    loaded = load_interactions(write(tmp_path, "i.parquet", frame), items)
    assert loaded.dropped == {}
    assert loaded.frame.collect_schema() == pl.Schema(
        {"user_id": pl.Int64, "item_id": pl.Int64, "timestamp": pl.Int64, "rating": pl.Float64}
    )


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(TableError, match=r"nope\.parquet: file: no such items file"):
        load_items(tmp_path / "nope.parquet")


def test_not_parquet_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "items.parquet"
    path.write_text("item_id,title\n1,x\n")
    with pytest.raises(TableError, match=r"items\.parquet: file: cannot be read as Parquet"):
        load_items(path)


def test_missing_column(tmp_path: Path) -> None:
    path = write(tmp_path, "items.parquet", pl.DataFrame({"item_id": [1], "name": ["x"]}))
    with pytest.raises(TableError) as error:
        load_items(path)
    assert str(error.value) == (f"{path}: column 'title': is missing (found: item_id, name)")


def test_wrong_dtype(tmp_path: Path) -> None:
    path = write(tmp_path, "items.parquet", pl.DataFrame({"item_id": [1.5], "title": ["x"]}))
    with pytest.raises(TableError) as error:
        load_items(path)
    assert str(error.value) == (
        f"{path}: column 'item_id': has dtype Float64, expected int64 or string id"
    )


def test_null_and_empty_titles_name_the_rows(tmp_path: Path) -> None:
    frame = pl.DataFrame({"item_id": [1, 2, 3, 4], "title": ["ok", None, "  ", ""]})
    path = write(tmp_path, "items.parquet", frame)
    with pytest.raises(TableError) as error:
        load_items(path)
    assert str(error.value) == (
        f"{path}: 2 problems\n"
        "  - column 'title': is null (1 rows; first 1: row=1, item_id=2, title=None)\n"
        "  - column 'title': is empty (2 rows; first 2: row=2, item_id=3, title='  '; "
        "row=3, item_id=4, title='')"
    )


def test_duplicate_item_ids_show_at_most_five_rows(tmp_path: Path) -> None:
    frame = pl.DataFrame({"item_id": ["a"] * 7 + ["b"], "title": [f"t{i}" for i in range(8)]})
    path = write(tmp_path, "items.parquet", frame)
    with pytest.raises(TableError) as error:
        load_items(path)
    (problem,) = error.value.problems
    assert (problem.column, problem.what, problem.count) == ("item_id", "has duplicate values", 7)
    assert problem.examples is not None
    assert problem.examples["row"].to_list() == list(range(MAX_EXAMPLES))
    assert "(7 rows; first 5: row=0, item_id='a';" in str(error.value)


def test_duplicate_user_in_shard(tmp_path: Path, items_path: Path) -> None:
    path = write(tmp_path, "shard.parquet", pl.DataFrame({"user_id": [5, 6, 5]}))
    with pytest.raises(TableError) as error:
        load_users(path, load_items(items_path))
    assert str(error.value) == (
        f"{path}: column 'user_id': has duplicate values "
        "(2 rows; first 2: row=0, user_id=5; row=2, user_id=5)"
    )


def test_unknown_items_are_dropped_counted_and_reported(
    tmp_path: Path, items_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    frame = interactions(
        user_id=[1, 1, 2, 2], item_id=[10, 99, 30, 98], timestamp=[1, 2, 3, 4], rating=[1, 2, 3, 4]
    )
    path = write(tmp_path, "i.parquet", frame)
    with caplog.at_level(logging.WARNING):
        loaded = load_interactions(path, load_items(items_path))
    assert loaded.dropped == {"unknown item_id": 2}
    kept = loaded.frame.collect()
    assert kept["item_id"].to_list() == [10, 30]
    assert "2 rows point at item_ids not in" in caplog.text
    assert "row=1, user_id=1, item_id=99; row=3, user_id=2, item_id=98" in caplog.text


def test_unparsable_timestamps(tmp_path: Path, items_path: Path) -> None:
    frame = interactions(timestamp=["2020-01-02T03:04:05", "yesterday", None])
    path = write(tmp_path, "i.parquet", frame)
    with pytest.raises(TableError) as error:
        load_interactions(path, load_items(items_path))
    message = str(error.value)
    assert "column 'timestamp': is null (1 rows; first 1: row=2, user_id=2, item_id=30" in message
    assert (
        "column 'timestamp': has unparsable timestamps (1 rows; first 1: row=1, user_id=1, "
        "item_id=20, timestamp='yesterday')"
    ) in message


@pytest.mark.parametrize(
    "values",
    [
        [datetime(2020, 1, 2, 3, 4, 5), datetime(2020, 1, 2), datetime(1970, 1, 1)],
        ["2020-01-02T03:04:05", "2020-01-02", "1970-01-01 00:00:00"],
        ["1577934245", "1577923200", "0"],
        [1577934245.7, 1577923200.0, 0.0],
    ],
    ids=["datetime", "iso-strings", "epoch-strings", "float-seconds"],
)
def test_timestamps_become_epoch_seconds(
    tmp_path: Path, items_path: Path, values: list[object]
) -> None:
    path = write(tmp_path, "i.parquet", interactions(timestamp=values))
    loaded = load_interactions(path, load_items(items_path)).frame.collect()
    expected = int(datetime(2020, 1, 2, 3, 4, 5, tzinfo=UTC).timestamp())
    assert loaded["timestamp"].to_list() == [expected, expected - 3 * 3600 - 4 * 60 - 5, 0]


def test_date_timestamps(tmp_path: Path, items_path: Path) -> None:
    path = write(tmp_path, "i.parquet", interactions(timestamp=[date(1970, 1, 2)] * 3))
    loaded = load_interactions(path, load_items(items_path)).frame.collect()
    assert loaded["timestamp"].to_list() == [86400] * 3


def test_id_types_must_match_the_items(tmp_path: Path, items_path: Path) -> None:
    frame = interactions(item_id=["10", "20", "30"])
    path = write(tmp_path, "i.parquet", frame)
    with pytest.raises(TableError) as error:
        load_interactions(path, load_items(items_path))
    assert str(error.value) == (
        f"{path}: column 'item_id': holds String item ids but item_id in {items_path} is Int64"
    )


def test_shard_candidates_are_checked(tmp_path: Path, items_path: Path) -> None:
    items = load_items(items_path)
    good = pl.DataFrame({"user_id": ["a", "b"], "candidates": [[10, 20], []]})
    shard = load_users(write(tmp_path, "good.parquet", good), items).frame.collect()
    assert shard.schema["candidates"] == pl.List(pl.Int64)

    bad = pl.DataFrame({"user_id": ["a", "b"], "candidates": [[10, None], [20]]})
    path = write(tmp_path, "bad.parquet", bad)
    with pytest.raises(TableError, match="column 'candidates': has lists with null ids"):
        load_users(path, items)


def test_empty_shard_is_valid(tmp_path: Path, items_path: Path) -> None:
    empty = pl.DataFrame(schema={"user_id": pl.Int64, "target_item_id": pl.Int64})
    shard = load_users(write(tmp_path, "empty.parquet", empty), load_items(items_path))
    assert shard.frame.collect().height == 0


def test_extra_columns_pass_through(tmp_path: Path) -> None:
    frame = pl.DataFrame(
        {
            "item_id": [1],
            "title": ["x"],
            "category": ["Books"],
            "attributes": ['{"a": 1}'],
            "brand": ["acme"],
        }
    )
    loaded = scan(write(tmp_path, "items.parquet", frame), ITEMS).frame.collect()
    assert loaded.row(0, named=True) == {
        "item_id": 1,
        "title": "x",
        "category": ["Books"],
        "attributes": '{"a": 1}',
        "brand": "acme",
    }


def test_ids_beyond_int64_are_reported(tmp_path: Path) -> None:
    frame = pl.DataFrame(
        {"user_id": pl.Series([1, 2**63], dtype=pl.UInt64), "item_id": [1, 2], "timestamp": [1, 2]}
    )
    with pytest.raises(TableError, match="column 'user_id': has ids that do not fit in int64"):
        scan(write(tmp_path, "i.parquet", frame), INTERACTIONS)
