"""Bad values in the input tables (issue #13): ratings that are NaN, null, infinite or outside the
rating scale, ISO-8601 timestamps with offsets, epochs in other units, user ids of another type
and damaged Parquet files. Each is dropped and counted, converted, or refused with a one-line
``TableError`` (exit status 2, nothing written); evaluation writes strict JSON only."""

import json
import logging
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
from test_evaluate import rp_frame, write_run
from typer.testing import CliRunner

from itdr_batch.cli import app
from itdr_batch.evaluate import evaluate, render, write_json
from itdr_batch.prompts.build import PromptConfig, build_prompts
from itdr_batch.run.build import build_unit
from itdr_batch.run.config import load_config
from itdr_batch.run.extract import extract
from itdr_batch.run.plan import make_plan
from itdr_batch.tables.load import TableError, load_interactions, load_items, load_users
from itdr_batch.tables.sink import write_json_atomic
from itdr_batch.tasks import Task

NAN, INF = float("nan"), float("inf")
TITLES = ["Heat", "Ran", "Alien", "Brazil", "Fargo", "Gattaca", "Heathers"]


def write(path: Path, frame: pl.DataFrame) -> Path:
    frame.write_parquet(path)
    return path


@pytest.fixture
def items(tmp_path: Path) -> Path:
    ids = list(range(1, len(TITLES) + 1))
    return write(tmp_path / "items.parquet", pl.DataFrame({"item_id": ids, "title": TITLES}))


def strict_json(text: str) -> object:
    """JSON as RFC 8259 defines it: NaN and Infinity are not numbers there."""

    def refuse(constant: str) -> None:
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


# Ratings -------------------------------------------------------------------------------------


def test_non_finite_ratings_are_dropped_and_counted_at_load(
    tmp_path: Path, items: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ratings = [4.0, NAN, INF, -INF, None, 2.0]
    frame = pl.DataFrame(
        {
            "user_id": [1] * 6,
            "item_id": [1, 2, 3, 4, 5, 6],
            "timestamp": range(6),
            "rating": ratings,
        }
    )
    with caplog.at_level(logging.WARNING):
        table = load_interactions(write(tmp_path / "i.parquet", frame), load_items(items))
    assert table.dropped == {"non-finite rating": 3}
    # A null rating is no rating: the interaction stays (TKR and the others need none).
    assert table.frame.collect()["item_id"].to_list() == [1, 5, 6]
    assert "3 rows have a NaN or infinite rating and were dropped" in caplog.text
    assert "row=1, user_id=1, item_id=2, rating=nan" in caplog.text


def test_a_row_dropped_for_two_reasons_counts_once(
    tmp_path: Path, items: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Drops count in order, each among the rows the earlier ones keep: every dropped row
    appears in exactly one count, with its own row index in the file."""
    frame = pl.DataFrame(
        {
            "user_id": [1, 1, 1, 1],
            "item_id": [1, 999, 999, 2],
            "timestamp": range(4),
            "rating": [4.0, NAN, 3.0, 5.0],
        }
    )
    with caplog.at_level(logging.WARNING):
        table = load_interactions(write(tmp_path / "i.parquet", frame), load_items(items))
    assert table.dropped == {"non-finite rating": 1, "unknown item_id": 1}
    assert table.frame.collect()["item_id"].to_list() == [1, 2]
    assert "row=2, user_id=1, item_id=999" in caplog.text


def rp_history(ratings: list[float | None]) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Items 1..7; user 1 rated items 1..n in this order; the target is item 7."""
    items = pl.DataFrame({"item_id": list(range(1, 8)), "title": TITLES})
    n = len(ratings)
    interactions = pl.DataFrame(
        {"user_id": [1] * n, "item_id": list(range(1, n + 1)), "timestamp": list(range(n))},
    ).with_columns(rating=pl.Series(ratings, dtype=pl.Float64))
    return items, interactions, pl.DataFrame({"user_id": [1], "target_item_id": [7]})


def test_rp_shows_only_ratings_within_the_scale_and_counts_the_rest() -> None:
    items, interactions, rows = rp_history([1.0, None, 1e300, 0.0, 5.0, NAN])
    config = PromptConfig(task=Task.RP, rating_range=(1.0, 5.0))
    row = build_prompts(rows, interactions, items, config).row(0, named=True)
    assert "with ratings: Heat (1), Fargo (5). Predict his rating for Heathers." in row["prompt"]
    assert "()" not in row["prompt"]
    assert "000000" not in row["prompt"]
    assert row["unrated"] == 4
    # Without a range (the library's default), any finite rating shows; null and NaN never do.
    plain = build_prompts(rows, interactions, items, PromptConfig(task=Task.RP))
    assert "Ran ()" not in plain["prompt"][0]
    assert "NaN" not in plain["prompt"][0]
    assert plain["unrated"][0] == 2


def test_rp_evaluation_holds_out_the_last_rated_interaction() -> None:
    items, interactions, rows = rp_history([3.0, 4.0, None, 9.0])
    config = PromptConfig(task=Task.RP, rating_range=(1.0, 5.0), evaluation=True)
    row = build_prompts(rows, interactions, items, config).row(0, named=True)
    assert row["held_out_item_id"] == 2
    assert "with ratings: Heat (3). Predict his rating for Ran." in row["prompt"]
    # A user with no usable rating has nothing to show: empty_history, counted.
    items, interactions, rows = rp_history([None, 0.0])
    row = build_prompts(rows, interactions, items, config).row(0, named=True)
    assert (row["status"], row["prompt"], row["unrated"]) == ("empty_history", None, 2)


def test_ir_reads_liked_and_disliked_only_from_ratings_within_the_scale() -> None:
    items, interactions, rows = rp_history([5.0, 7.0, None, 1.0])
    interactions = interactions.with_columns(review=pl.Series(["great", "wow", "meh", "awful"]))
    config = PromptConfig(task=Task.IR, rating_range=(1.0, 5.0))
    row = build_prompts(rows, interactions, items, config).row(0, named=True)
    assert "great" in row["prompt"]
    assert "awful" in row["prompt"]
    assert "wow" not in row["prompt"]
    assert "meh" not in row["prompt"]
    assert row["unrated"] == 2


def job(tmp_path: Path, interactions: pl.DataFrame, **prompts: object) -> Path:
    """A job over these interactions (items 1..7) for a dry run: no model is read."""
    data = tmp_path / "data"
    data.mkdir()
    write(data / "items.parquet", pl.DataFrame({"item_id": list(range(1, 8)), "title": TITLES}))
    write(data / "interactions.parquet", interactions)
    settings = {"tasks": ["rp"], "history_len": 10} | prompts
    lines = [
        "[data]",
        'interactions = "data/interactions.parquet"',
        'items = "data/items.parquet"',
        "[model]",
        'path = "no-model"',
        "[prompts]",
        *(f"{key} = {json.dumps(value)}" for key, value in settings.items()),
        "[scoring]",
        "rating_scale = [1, 2, 3, 4, 5]",
    ]
    (tmp_path / "job.toml").write_text("\n".join(lines) + "\n")
    return tmp_path / "job.toml"


def score(cli: CliRunner, tmp_path: Path, users: Path) -> tuple[int, str]:
    args = ["score", "--users", users, "--config", tmp_path / "job.toml", "--dry-run"]
    result = cli.invoke(app, [*map(str, args), "--out", str(tmp_path / "out")])
    return result.exit_code, result.output


def test_job_leaves_ratings_outside_the_scale_out_of_rp_prompts(
    tmp_path: Path, cli: CliRunner
) -> None:
    _, interactions, _ = rp_history([4.0, None, 1e300, 0.5, 3.0])
    job(tmp_path, interactions)
    users = write(tmp_path / "users.parquet", pl.DataFrame({"user_id": [1], "target_item_id": [7]}))
    code, output = score(cli, tmp_path, users)
    assert code == 0, output
    prompt = pl.read_parquet(tmp_path / "out" / "rp.parquet")["prompt"][0]
    assert "with ratings: Heat (4), Fargo (3). Predict his rating for Heathers." in prompt


def test_job_truth_is_the_rating_of_the_held_out_item(tmp_path: Path) -> None:
    """Evaluation truth and the held-out item come from the same (rated, in-scale) history."""
    _, interactions, _ = rp_history([2.0, 4.0, None, 0.5])
    config = load_config(job(tmp_path, interactions, evaluation=True))
    users = write(tmp_path / "users.parquet", pl.DataFrame({"user_id": [1]}))
    plan = make_plan(config, users, dry_run=True)
    with extract(plan, tmp_path / "parts") as cut:
        history = cut.batch(0)
    built = build_unit(plan, 0, Task.RP, history).prompts
    assert built.select("held_out_item_id", "truth").row(0) == (2, 4.0)


# Evaluation ----------------------------------------------------------------------------------


def test_json_sink_writes_non_finite_numbers_as_null(tmp_path: Path) -> None:
    value = {"a": NAN, "b": [INF, 1.5, (-INF, 2)], "c": {"d": np.float64("nan"), "e": None}}
    write_json_atomic(value, tmp_path / "x.json")
    parsed = strict_json((tmp_path / "x.json").read_text())
    assert parsed == {"a": None, "b": [None, 1.5, [None, 2]], "c": {"d": None, "e": None}}


def test_evaluation_ignores_bad_ratings_and_writes_strict_json(tmp_path: Path) -> None:
    # Item 10: one good rating besides user 0's held-out 5.0; the rest are NaN, infinite or far
    # outside the scale, and must not reach the popularity baseline's averages.
    interactions = pl.DataFrame(
        {
            "user_id": [0, 5, 6, 7, 8, 1, 3],
            "item_id": [10, 10, 10, 10, 10, 11, 12],
            "timestamp": [0] * 7,
            "rating": [5.0, 3.0, NAN, INF, 1e300, 2.0, 4.0],
        }
    )
    # User 2's label is NaN (no truth): left out; user 3's prediction is infinite: failed.
    frame = rp_frame([0, 1, 2, 3], [10, 11, 12, 12], [4.0, 2.0, 3.0, INF], [5.0, 2.0, NAN, 4.0])
    result = evaluate(write_run(tmp_path / "run", {"rp": frame}, interactions))
    group = result["tasks"]["rp"]["base"]
    assert (group["users"], group["failed"]) == (3, 1)
    # Popularity: item 10 without user 0's own rating is 3.0; item 11 and 12 fall back to the
    # global mean of the usable ratings, (5 + 3 + 2 + 4) / 4.
    popularity = np.array([3.0, 3.5, 3.5])
    truth = np.array([5.0, 2.0, 4.0])
    assert group["metrics"]["popularity"]["mae"] == pytest.approx(
        np.mean(np.abs(popularity - truth))
    )
    # The failed prediction counts as 1.0, the end of the scale farthest from 4.0.
    assert group["metrics"]["model"]["mae"] == pytest.approx((1.0 + 0.0 + 3.0) / 3)
    out = tmp_path / "evaluation.json"
    write_json(result, out)
    assert strict_json(out.read_text()) == result


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_undefined_metrics_are_null_in_json_and_a_dash_in_the_table(tmp_path: Path) -> None:
    """A truth far outside any scale overflows RMSE: the metric is undefined, not Infinity."""
    interactions = pl.DataFrame(
        {"user_id": [0], "item_id": [10], "timestamp": [0], "rating": [3.0]}
    )
    frame = rp_frame([0], [10], [3.0], [1e300])
    result = evaluate(write_run(tmp_path / "run", {"rp": frame}, interactions))
    out = tmp_path / "evaluation.json"
    write_json(result, out)
    metrics = strict_json(out.read_text())["tasks"]["rp"]["base"]["metrics"]  # type: ignore[index]
    assert metrics["model"]["rmse"] is None
    rows = {cells[4]: cells for cells in _rows(render(result))}
    assert rows["rmse"][5] == "-"


def _rows(table: object) -> list[list[str]]:
    from rich.console import Console

    console = Console(record=True, width=200)
    console.print(table)
    return [
        [cell.strip() for cell in line.split("│")[1:-1]]
        for line in console.export_text().splitlines()
        if "│" in line
    ]


# Timestamps ----------------------------------------------------------------------------------


def epoch(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> int:
    return int(datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp())


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-01-02T03:04:05Z", epoch(2024, 1, 2, 3, 4, 5)),
        ("2024-01-02T03:04:05.750Z", epoch(2024, 1, 2, 3, 4, 5)),
        ("2024-01-02T03:04:05+05:00", epoch(2024, 1, 1, 22, 4, 5)),
        ("2024-01-02T03:04:05.123456-0230", epoch(2024, 1, 2, 5, 34, 5)),
        ("2024-01-02 03:04:05+00:00", epoch(2024, 1, 2, 3, 4, 5)),
        ("2024-01-02T03:04:05.5", epoch(2024, 1, 2, 3, 4, 5)),
        ("2024-01-02", epoch(2024, 1, 2)),
    ],
)
def test_iso_timestamps_with_zone_or_fraction(
    tmp_path: Path, items: Path, text: str, expected: int
) -> None:
    frame = pl.DataFrame({"user_id": [1], "item_id": [1], "timestamp": [text]})
    table = load_interactions(write(tmp_path / "i.parquet", frame), load_items(items))
    assert table.frame.collect()["timestamp"].to_list() == [expected]


SECONDS = [epoch(2015, 3, 1), epoch(2015, 3, 1, 0, 0, 1), epoch(2023, 7, 9, 12)]


@pytest.mark.parametrize(
    ("unit", "values"),
    [
        ("milliseconds", pl.Series([s * 1000 + 999 for s in SECONDS])),
        ("microseconds", pl.Series([s * 10**6 + 5 for s in SECONDS])),
        ("nanoseconds", pl.Series([s * 10**9 for s in SECONDS])),
        ("milliseconds", pl.Series([s * 1000.0 for s in SECONDS])),
        ("milliseconds", pl.Series([str(s * 1000) for s in SECONDS])),
    ],
)
def test_epochs_in_other_units_are_detected(
    tmp_path: Path,
    items: Path,
    caplog: pytest.LogCaptureFixture,
    unit: str,
    values: pl.Series,
) -> None:
    frame = pl.DataFrame({"user_id": [1, 1, 1], "item_id": [1, 2, 3], "timestamp": values})
    with caplog.at_level(logging.WARNING):
        table = load_interactions(write(tmp_path / "i.parquet", frame), load_items(items))
    assert table.frame.collect()["timestamp"].to_list() == SECONDS
    assert f"column 'timestamp' read as epoch {unit}" in caplog.text


def test_epoch_seconds_stay_seconds(tmp_path: Path, items: Path) -> None:
    frame = pl.DataFrame({"user_id": [1, 1, 1], "item_id": [1, 2, 3], "timestamp": [0, 1, 2]})
    table = load_interactions(write(tmp_path / "i.parquet", frame), load_items(items))
    assert table.frame.collect()["timestamp"].to_list() == [0, 1, 2]


def test_mixed_epoch_units_are_refused(tmp_path: Path, items: Path) -> None:
    stamps = [SECONDS[0], SECONDS[1] * 1000, SECONDS[2]]
    frame = pl.DataFrame({"user_id": [1, 1, 1], "item_id": [1, 2, 3], "timestamp": stamps})
    with pytest.raises(TableError) as error:
        load_interactions(write(tmp_path / "i.parquet", frame), load_items(items))
    message = str(error.value)
    assert "column 'timestamp': has epoch values past year 5138 as seconds" in message
    assert f"row=1, user_id=1, item_id=2, timestamp={stamps[1]}" in message


# User ids and damaged files ------------------------------------------------------------------


def test_users_with_another_id_type_than_the_interactions(
    tmp_path: Path, items: Path, cli: CliRunner
) -> None:
    interactions = pl.DataFrame({"user_id": [1], "item_id": [1], "timestamp": [0], "rating": [4.0]})
    job(tmp_path, interactions)
    users = write(tmp_path / "users.parquet", pl.DataFrame({"user_id": ["1"]}))
    loaded = load_items(items)
    with pytest.raises(TableError, match=r"users\.parquet: column 'user_id': holds String user"):
        load_users(users, loaded, load_interactions(tmp_path / "data/interactions.parquet", loaded))
    code, output = score(cli, tmp_path, users)
    assert code == 2, output
    assert "holds String user ids but user_id in" in output
    assert "is Int64" in output
    assert not (tmp_path / "out").exists()


def damaged(tmp_path: Path, column: str) -> Path:
    """Interactions whose ``column`` has a garbled data page header in its third row group: the
    footer still reads, the pages do not decode."""
    n = 20_000
    frame = pl.DataFrame(
        {
            "user_id": np.arange(n) % 7,
            "item_id": np.arange(n) % 7 + 1,
            "timestamp": np.arange(n),
            "rating": np.full(n, 4.0),
            "review": [f"review number {i}, " * 3 for i in range(n)],
        }
    )
    path = tmp_path / "interactions.parquet"
    frame.write_parquet(path, row_group_size=5_000)
    chunk = pq.ParquetFile(path).metadata.row_group(2).column(frame.columns.index(column))
    data = bytearray(path.read_bytes())
    start = chunk.data_page_offset
    data[start : start + 16] = b"\x13" * 16
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("column", ["user_id", "review"])
def test_damaged_parquet_is_a_table_error(tmp_path: Path, items: Path, column: str) -> None:
    path = damaged(tmp_path, column)
    pl.scan_parquet(path).collect_schema()  # the footer reads
    with pytest.raises(TableError) as error:
        load_interactions(path, load_items(items))
    message = str(error.value)
    assert message.startswith(f"{path}: file: cannot be read as Parquet: ")
    assert "\n" not in message


def test_damaged_parquet_fails_the_job_before_any_output(tmp_path: Path, cli: CliRunner) -> None:
    job(tmp_path, pl.DataFrame({"user_id": [1], "item_id": [1], "timestamp": [0]}))
    damaged(tmp_path / "data", "review")
    users = write(tmp_path / "users.parquet", pl.DataFrame({"user_id": [1]}))
    code, output = score(cli, tmp_path, users)
    assert code == 2, output
    assert "interactions.parquet: file: cannot be read as Parquet" in output
    assert not (tmp_path / "out").exists()
