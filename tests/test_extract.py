"""The run's interactions extract (``itdr_batch.run.extract``): each batch reads its own rows'
interactions, cut from the table once, and the prompts equal those built from the whole table,
whatever the log's order, the batch size, the sharding or the id type; a run killed while cutting
resumes to the same rows."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from helpers import Canonical, WriteJob
from polars.testing import assert_frame_equal

from itdr_batch import _core
from itdr_batch.prompts.build import build_prompts
from itdr_batch.run import extract as extract_module
from itdr_batch.run.config import load_config
from itdr_batch.run.extract import EXTRACT, IDENTITY
from itdr_batch.run.folder import RunFolder
from itdr_batch.run.job import run_job
from itdr_batch.run.plan import make_plan
from itdr_batch.tables.shard import split_users
from itdr_batch.tasks import Task

ITDR_BATCH = Path(sys.executable).parent / "itdr-batch"
TASKS = (Task.TKR, Task.RP, Task.NIR)
COMPARED = ("prompt", "candidates", "held_out_item_id", "held_out_position", "target_item_id")


def shuffled(movielens: Canonical, folder: Path) -> Canonical:
    """The same interactions in a random row order (ties in time then break differently)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "interactions.parquet"
    pl.read_parquet(movielens.interactions).sample(
        fraction=1.0, shuffle=True, seed=3
    ).write_parquet(path)
    return Canonical(path, movielens.items, movielens.users)


def spread_users(movielens: Canonical, folder: Path, n: int = 40, unknown: int = 0) -> Path:
    """Every 7th user of the log, in descending order: not the log's order, not contiguous;
    with ``unknown`` users the log lacks among them (rows 3, 8, 13, ...)."""
    ids = pl.read_parquet(movielens.interactions, columns=["user_id"])["user_id"].unique().sort()
    users = ids.gather_every(7).head(n).reverse().to_frame()
    absent = pl.DataFrame({"user_id": [-(1 + u) for u in range(unknown)]})
    for i, row in enumerate(absent.iter_slices(1)):
        users = pl.concat([users.head(5 * i + 3), row, users.slice(5 * i + 3)])
    path = folder / "users.parquet"
    users.write_parquet(path)
    return path


def whole_table_prompts(job: Path, users: Path, task: Task) -> pl.DataFrame:
    """The library's prompts for all users at once from the whole interactions table."""
    plan = make_plan(load_config(job), users, dry_run=True)
    rows = pl.read_parquet(users)
    interactions = plan.interactions.collect()
    config = plan.config.prompt_config(task)
    built = build_prompts(rows, interactions, plan.items, config, plan.item_counts)
    return built.filter(pl.col("prompt").is_not_null())


def dry_run(job: Path, users: Path, out: Path, **overrides: object) -> dict[str, pl.DataFrame]:
    run_job(load_config(job, dict(overrides)), users, out, dry_run=True)
    manifest = json.loads((out / "_manifest.json").read_text())
    return {name: pl.read_parquet(out / file) for name, file in manifest["files"].items()}


def assert_same_prompts(ours: pl.DataFrame, theirs: pl.DataFrame) -> None:
    shared = set(ours.columns) & set(theirs.columns)
    columns = ["user_id", *(c for c in COMPARED if c in shared)]
    assert_frame_equal(ours.select(columns), theirs.select(columns), check_dtypes=False)


@pytest.mark.parametrize("order", ["sorted", "shuffled"])
def test_dry_runs_equal_the_whole_table_prompts(
    write_job: WriteJob, movielens: Canonical, tmp_path: Path, order: str
) -> None:
    data = movielens if order == "sorted" else shuffled(movielens, tmp_path / "log")
    job = write_job(
        tmp_path,
        data={"interactions": str(data.interactions)},
        prompts={"tasks": list(TASKS), "strategy": "popularity"},
    )
    # Batches of users who all have interactions and batches mixing in users who have none.
    users = spread_users(movielens, tmp_path, unknown=3)
    expected = {task: whole_table_prompts(job, users, task) for task in TASKS}
    for size in (1, 7, 1000):
        files = dry_run(job, users, tmp_path / f"out-{size}", **{"scoring.batch_size": size})
        for task in TASKS:
            assert_same_prompts(files[task], expected[task])
        unknown = files["rejects"].filter(pl.col("reason") == "unknown_user")
        assert sorted(unknown["user_id"].unique()) == [-3, -2, -1]
        assert not (tmp_path / f"out-{size}" / "_parts").exists()


def test_parts_of_several_batches_equal_the_whole_table_prompts(
    write_job: WriteJob, movielens: Canonical, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Few parts for many batches (a big shard in small batches): each batch is a slice of its
    part, and the next part is read while the last one's batches are built."""
    monkeypatch.setattr(extract_module, "MAX_PARTS", 3)
    job = write_job(tmp_path, prompts={"tasks": list(TASKS)})
    users = spread_users(movielens, tmp_path)
    expected = {task: whole_table_prompts(job, users, task) for task in TASKS}
    for size in (1, 4):
        out = tmp_path / f"out-{size}"
        files = dry_run(job, users, out, **{"scoring.batch_size": size})
        for task in TASKS:
            assert_same_prompts(files[task], expected[task])


def test_a_log_in_small_chunks_across_row_groups_gives_the_same_prompts(
    write_job: WriteJob, movielens: Canonical, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shuffled log of small row groups in chunks that span them: each chunk goes to the
    cutter as several batches, and each part gets many small pieces, written together."""
    log = tmp_path / "log" / "interactions.parquet"
    log.parent.mkdir()
    rows = pl.read_parquet(movielens.interactions).sample(fraction=1.0, shuffle=True, seed=5)
    rows.write_parquet(log, row_group_size=3_000)
    monkeypatch.setattr(extract_module, "CHUNK_ROWS", 7_001)
    job = write_job(tmp_path, data={"interactions": str(log)}, prompts={"tasks": list(TASKS)})
    users = spread_users(movielens, tmp_path)
    files = dry_run(job, users, tmp_path / "out", **{"scoring.batch_size": 4})
    for task in TASKS:
        assert_same_prompts(files[task], whole_table_prompts(job, users, task))


class Stop(Exception):
    """Ends a run after some units, as a kill would (their commits stay)."""


def test_a_part_goes_once_its_batches_are_committed_and_a_resume_reuses_the_rest(
    write_job: WriteJob, movielens: Canonical, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """40 users in batches of 4, three parts of four batches: stopped after six batches, the
    first part is gone and the others are there; the resumed run reads them without cutting
    again and writes the rows of an uninterrupted run."""
    monkeypatch.setattr(extract_module, "MAX_PARTS", 3)
    job = write_job(tmp_path, prompts={"tasks": ["tkr", "rp"]})
    users = spread_users(movielens, tmp_path)
    whole = dry_run(job, users, tmp_path / "whole", **{"scoring.batch_size": 4})
    commit = RunFolder.commit
    commits = 0

    def stop_after_six_batches(folder: RunFolder, *args: Any) -> None:
        nonlocal commits
        if commits == 6 * 2:
            raise Stop
        commit(folder, *args)
        commits += 1

    out = tmp_path / "stopped"
    with monkeypatch.context() as stopping:
        stopping.setattr(RunFolder, "commit", stop_after_six_batches)
        with pytest.raises(Stop):
            dry_run(job, users, out, **{"scoring.batch_size": 4})
    cut = out / "_parts" / EXTRACT
    assert json.loads((cut / IDENTITY).read_text())["parts"] == [0, 1, 2]
    assert sorted(p.name for p in cut.glob("part-*")) == ["part-000001.arrow", "part-000002.arrow"]

    def no_cutting(*args: object) -> None:
        raise AssertionError("the resumed run cut the log again")

    monkeypatch.setattr(_core, "Cutter", no_cutting)
    resumed = dry_run(job, users, out, **{"scoring.batch_size": 4})
    for task in ("tkr", "rp"):
        assert_same_prompts(resumed[task], whole[task])


def test_shards_together_equal_one_run(
    write_job: WriteJob, movielens: Canonical, tmp_path: Path
) -> None:
    job = write_job(tmp_path, prompts={"tasks": list(TASKS)})
    users = spread_users(movielens, tmp_path)
    whole = dry_run(job, users, tmp_path / "whole", **{"scoring.batch_size": 3})
    for count in (2, 5):
        paths = split_users(users, count, tmp_path / f"shards-{count}")
        parts = [
            dry_run(job, path, tmp_path / f"run-{count}-{i}", **{"scoring.batch_size": 3})
            for i, path in enumerate(paths)
        ]
        for task in TASKS:
            together = pl.concat([p[task] for p in parts]).sort("user_id")
            assert_same_prompts(together, whole[task].sort("user_id"))


def test_string_ids_equal_the_whole_table_prompts(
    write_job: WriteJob, movielens: Canonical, tmp_path: Path
) -> None:
    """User and item ids as strings (own random streams: the stable hash reads their bytes)."""
    folder = tmp_path / "strings"
    folder.mkdir()
    as_text = [pl.col("user_id").cast(pl.String), pl.col("item_id").cast(pl.String)]
    interactions = folder / "interactions.parquet"
    pl.read_parquet(movielens.interactions).with_columns(as_text).write_parquet(interactions)
    items = folder / "items.parquet"
    pl.read_parquet(movielens.items).with_columns(as_text[1]).write_parquet(items)
    users = folder / "users.parquet"
    pl.read_parquet(spread_users(movielens, tmp_path)).with_columns(as_text[0]).write_parquet(users)
    data: dict[str, object] = {"interactions": str(interactions), "items": str(items)}
    job = write_job(folder, data=data, prompts={"tasks": list(TASKS)})
    files = dry_run(job, users, tmp_path / "out", **{"scoring.batch_size": 6})
    for task in TASKS:
        assert files[task].schema["user_id"] == pl.String
        assert_same_prompts(files[task], whole_table_prompts(job, users, task))


def test_a_shard_whose_users_have_no_interactions(write_job: WriteJob, tmp_path: Path) -> None:
    job = write_job(tmp_path, prompts={"tasks": list(TASKS)})
    users = tmp_path / "strangers.parquet"
    pl.DataFrame({"user_id": [10**9, 10**9 + 1, 10**9 + 2]}).write_parquet(users)
    files = dry_run(job, users, tmp_path / "out", **{"scoring.batch_size": 2})
    for task in TASKS:
        assert files[task].height == 0
    rejects = files["rejects"]
    assert rejects.height == 3 * len(TASKS)
    assert set(rejects["reason"].cast(pl.String)) == {"unknown_user"}


def test_a_stale_or_partial_extract_is_cut_again(
    write_job: WriteJob, movielens: Canonical, tmp_path: Path
) -> None:
    """What a run killed while cutting (or one cut for another run) leaves is never read."""
    job = write_job(tmp_path, prompts={"tasks": ["tkr"]})
    users = spread_users(movielens, tmp_path)
    fresh = dry_run(job, users, tmp_path / "fresh", **{"scoring.batch_size": 4})
    out = tmp_path / "stale"
    parts = out / "_parts"
    (parts / f".{EXTRACT}.tmp").mkdir(parents=True)
    stale = parts / EXTRACT
    stale.mkdir(parents=True)
    pl.read_parquet(movielens.interactions).head(0).write_ipc_stream(stale / "part-000000.arrow")
    (parts / EXTRACT / IDENTITY).write_text(json.dumps({"run_id": "another run"}))
    again = dry_run(job, users, out, **{"scoring.batch_size": 4})
    assert_same_prompts(again["tkr"], fresh["tkr"])


@pytest.mark.slow
def test_a_run_killed_while_cutting_resumes_to_the_same_rows(
    write_job: WriteJob, movielens: Canonical, tmp_path: Path
) -> None:
    """SIGKILL while the extract is being written (a log replicated to ~5M interactions, so
    cutting takes a while), then the same command: the rows of an uninterrupted run."""
    log = pl.read_parquet(movielens.interactions)
    copies = [log.with_columns(pl.col("user_id") + k * 10_000_000) for k in range(50)]
    big = tmp_path / "big"
    big.mkdir()
    pl.concat(copies).write_parquet(big / "interactions.parquet")
    users = spread_users(
        Canonical(big / "interactions.parquet", movielens.items, movielens.users), big, n=400
    )
    job = write_job(
        big,
        data={"interactions": str(big / "interactions.parquet")},
        prompts={"tasks": ["tkr"]},
        scoring={"batch_size": 50},
    )
    args = [ITDR_BATCH, "score", "--dry-run", "--users", users, "--config", job]
    out = tmp_path / "killed"
    log_file = tmp_path / "killed.log"
    with log_file.open("w") as log_out:
        process = subprocess.Popen(
            [*map(str, args), "--out", str(out)], stdout=log_out, stderr=subprocess.STDOUT
        )
        cutting = out / "_parts" / f".{EXTRACT}.tmp"
        deadline = time.monotonic() + 120
        while not cutting.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.001)
        process.send_signal(signal.SIGKILL)  # a no-op when it has already ended
        process.wait()
    assert cutting.exists(), f"the run ended before it was seen cutting:\n{log_file.read_text()}"
    assert not (out / "_manifest.json").exists()
    subprocess.run([*map(str, args), "--out", str(out)], check=True, capture_output=True)
    whole = dry_run(job, users, tmp_path / "whole")
    resumed = pl.read_parquet(out / "tkr.parquet")
    assert_same_prompts(resumed, whole["tkr"])
