"""`itdr-batch shard --interactions`: each shard's own interactions plus the whole log's item
counts give a run the rows of a run over the whole table, popularity sampling included."""

import json
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest
from helpers import Canonical, WriteJob
from polars.testing import assert_frame_equal
from typer.testing import CliRunner

from itdr_batch.cli import app
from itdr_batch.prompts.build import popularity_counts
from itdr_batch.run import load_config, run_job
from itdr_batch.tables.checked import STAMP
from itdr_batch.tables.ids import stable_hash
from itdr_batch.tables.load import load_interactions, load_items
from itdr_batch.tables.shard import ITEM_COUNTS, split

SHARDS = 3
TASKS = ("tkr", "rp")
POPULARITY: dict[str, object] = {"tasks": list(TASKS), "strategy": "popularity"}


@pytest.fixture(scope="module")
def shards(movielens: Canonical, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shards")
    split(movielens.users, movielens.interactions, movielens.items, SHARDS, out)
    return out


def shard_files(folder: Path, prefix: str) -> list[Path]:
    return sorted(folder.glob(f"{prefix}-*-of-{SHARDS:05d}.parquet"))


def dry_run(job: Path, users: Path, out: Path, overrides: dict[str, str] | None = None) -> Path:
    run_job(load_config(job, overrides), users, out, dry_run=True)
    return out


def rows(folder: Path, task: str) -> pl.DataFrame:
    return pl.read_parquet(folder / f"{task}.parquet").drop("run_id")


def test_shards_on_their_own_interactions_give_the_whole_tables_rows(
    shards: Path, movielens: Canonical, write_job: WriteJob, tmp_path: Path
) -> None:
    job = write_job(tmp_path, prompts=POPULARITY)
    whole = dry_run(job, movielens.users, tmp_path / "whole")
    runs = []
    for index, (users, log) in enumerate(
        zip(shard_files(shards, "shard"), shard_files(shards, "interactions"), strict=True)
    ):
        inputs = {"data.interactions": str(log), "data.item_counts": str(shards / ITEM_COUNTS)}
        runs.append(dry_run(job, users, tmp_path / f"shard-{index}", inputs))
    for task in TASKS:
        merged = pl.concat(rows(run, task) for run in runs).sort("user_id")
        assert_frame_equal(merged, rows(whole, task).sort("user_id"))
    # The counts matter: a shard's own interactions alone weigh the candidates otherwise.
    own = {"data.interactions": str(shard_files(shards, "interactions")[0])}
    alone = dry_run(job, shard_files(shards, "shard")[0], tmp_path / "alone", own)
    assert not rows(alone, "tkr").equals(rows(runs[0], "tkr"))


def test_the_item_counts_file_is_part_of_the_run_id(
    shards: Path, movielens: Canonical, write_job: WriteJob, tmp_path: Path
) -> None:
    job = write_job(tmp_path, prompts=POPULARITY)
    counts = pl.read_parquet(shards / ITEM_COUNTS)
    other = tmp_path / "other_counts.parquet"
    counts.with_columns(pl.col("count") + 1).write_parquet(other)
    ids = set()
    for name, path in (("a", shards / ITEM_COUNTS), ("b", other)):
        result = run_job(
            load_config(job, {"data.item_counts": str(path)}),
            movielens.users,
            tmp_path / name,
            dry_run=True,
        )
        assert result.manifest.inputs["item_counts"].path == str(path.resolve())
        ids.add(result.manifest.run_id)
    assert len(ids) == 2


def test_shard_command_splits_the_interactions_and_counts_the_whole_log(
    movielens: Canonical, shards: Path, tmp_path: Path
) -> None:
    out = tmp_path / "cli"
    args = ["shard", "--users", str(movielens.users), "--shards", str(SHARDS), "--out", str(out)]
    data = ["--interactions", str(movielens.interactions), "--items", str(movielens.items)]
    result = CliRunner().invoke(app, [*args, *data])
    assert result.exit_code == 0, result.output
    whole = load_interactions(movielens.interactions, load_items(movielens.items)).frame.collect()
    assert f"interactions: {whole.height} rows (" in result.output
    assert f"{ITEM_COUNTS}: {whole['item_id'].n_unique()} items" in result.output

    parts = [pl.read_parquet(p) for p in shard_files(out, "interactions")]
    for index, part in enumerate(parts):
        assert (stable_hash(part["user_id"]) % SHARDS == index).all()
        # Input order within a shard (ties in time break by it).
        mine = stable_hash(whole["user_id"]) % SHARDS == index
        assert_frame_equal(part, whole.filter(mine))
    expected = popularity_counts(whole).sort("item_id")
    assert_frame_equal(pl.read_parquet(out / ITEM_COUNTS), expected)
    # Byte for byte what the fixture's split wrote: a rerun night keeps its shards' run ids.
    for ours, theirs in zip(sorted(out.iterdir()), sorted(shards.iterdir()), strict=True):
        assert ours.name == theirs.name
        assert ours.read_bytes() == theirs.read_bytes()


SKIPPED = "not checked again"


def checked_run(
    job: Path, users: Path, log: Path, out: Path, caplog: pytest.LogCaptureFixture, **data: str
) -> tuple[pl.DataFrame, bool]:
    """A dry run's TKR rows on ``log``, and whether it read the log without checking its rows."""
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="itdr_batch.run.plan"):
        dry_run(job, users, out, {"data.interactions": str(log)} | data)
    return rows(out, "tkr"), SKIPPED in caplog.text


def test_a_shards_run_reads_its_split_log_without_checking_its_rows_again(
    shards: Path, write_job: WriteJob, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    stamp = json.loads((shards / STAMP).read_text())
    logs = shard_files(shards, "interactions")
    assert sorted(stamp["files"]) == [log.name for log in logs]
    job = write_job(tmp_path, prompts=POPULARITY)
    users, log = shard_files(shards, "shard")[0], logs[0]
    stamped, skipped = checked_run(job, users, log, tmp_path / "stamped", caplog)
    assert skipped
    # The same file without the stamp is checked, and gives the same rows.
    (tmp_path / "plain").mkdir()
    plain = tmp_path / "plain" / log.name
    shutil.copy(log, plain)
    checked, skipped = checked_run(job, users, plain, tmp_path / "checked", caplog)
    assert not skipped
    assert_frame_equal(checked, stamped)


def test_a_changed_log_or_other_items_are_checked_in_full(
    shards: Path,
    movielens: Canonical,
    write_job: WriteJob,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    job = write_job(tmp_path)
    users, log = shard_files(shards, "shard")[0], shard_files(shards, "interactions")[0]
    folder = tmp_path / "changed"
    folder.mkdir()
    shutil.copy(shards / STAMP, folder / STAMP)
    frame = pl.read_parquet(log)
    unknown = frame.head(1).with_columns(item_id=pl.lit(-1, frame.schema["item_id"]))
    changed = folder / log.name
    pl.concat([frame, unknown]).write_parquet(changed)
    _, skipped = checked_run(job, users, changed, tmp_path / "run-changed", caplog)
    assert not skipped
    assert "1 rows point at item_ids not in" in caplog.text
    # The stamp's log, but items other than those it was checked against.
    items = tmp_path / "items.parquet"
    catalogue = pl.read_parquet(movielens.items)
    pl.concat(
        [catalogue, catalogue.head(1).with_columns(item_id=pl.lit(-2, catalogue.schema["item_id"]))]
    ).write_parquet(items)
    _, skipped = checked_run(
        job, users, log, tmp_path / "run-items", caplog, **{"data.items": str(items)}
    )
    assert not skipped


def test_interactions_need_their_items(movielens: Canonical, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["shard", "--users", str(movielens.users), "--shards", "2", "--out", str(out)]
    result = CliRunner().invoke(app, [*args, "--interactions", str(movielens.interactions)])
    assert result.exit_code == 2
    assert "--interactions and --items go together" in result.output
    assert not out.exists()


@pytest.mark.parametrize(
    ("counts", "message"),
    [
        (pl.DataFrame({"item_id": [1, 2], "count": [1.0, 2.0]}), "column 'count': has dtype"),
        (pl.DataFrame({"item_id": ["1"], "count": [1]}), "column 'item_id': holds String item ids"),
        (pl.DataFrame({"item_id": [1, 1], "count": [1, 2]}), "column 'item_id': has duplicate"),
        (pl.DataFrame({"item_id": [1, 2], "count": [1, -2]}), "column 'count': has 1 null or"),
        (pl.DataFrame({"item_id": [1]}), "column 'count': is missing"),
    ],
)
def test_a_bad_item_counts_file_is_refused_before_any_output(
    counts: pl.DataFrame,
    message: str,
    movielens: Canonical,
    write_job: WriteJob,
    tmp_path: Path,
) -> None:
    path = tmp_path / "counts.parquet"
    counts.write_parquet(path)
    job = write_job(tmp_path, prompts=POPULARITY)
    out = tmp_path / "run"
    args = ["score", "--users", str(movielens.users), "--config", str(job), "--dry-run"]
    result = CliRunner().invoke(
        app, [*args, "--out", str(out), "--set", f"data.item_counts={path}"]
    )
    assert result.exit_code == 2, result.output
    assert f"{path}: {message}" in " ".join(result.output.split())
    assert not out.exists()


@pytest.fixture(scope="module")
def harness() -> Iterator[None]:
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.mark.slow
def test_nightly_scores_each_shard_on_its_own_interactions(
    harness: None, movielens: Canonical, write_job: WriteJob, tmp_path: Path
) -> None:
    """Popularity sampling, real scoring (one user per batch: identical floats, see
    test_nightly.py): the shards' rows are those of one run over the whole table."""
    from itdr_batch.nightly import nightly

    job = write_job(tmp_path, prompts={"tasks": ["tkr"], "strategy": "popularity"})
    single = tmp_path / "single"
    run_job(load_config(job, {"scoring.batch_size": 1}), movielens.users, single)
    out = tmp_path / "nightly"
    overrides = {"scoring.batch_size": 1}
    nightly(str(job), str(movielens.users), str(out), "n", SHARDS, overrides=overrides)
    night = out / "n"
    for index, folder in enumerate(sorted(night.glob("shard-*/"))):
        inputs = json.loads((folder / "_manifest.json").read_text())["inputs"]
        log = night / "shards" / f"interactions-{index:05d}-of-{SHARDS:05d}.parquet"
        assert inputs["interactions"]["path"] == str(log)
        assert inputs["item_counts"]["path"] == str(night / "shards" / ITEM_COUNTS)
    merged = pl.concat(pl.read_parquet(p) for p in sorted(night.glob("shard-*/tkr.parquet")))
    order = ["user_id", "position"]
    expected = pl.read_parquet(single / "tkr.parquet").drop("run_id").sort(order)
    assert_frame_equal(merged.drop("run_id").sort(order), expected)
