"""The nightly flow on a real Prefect test harness and a real local Ray cluster, with the tiny
model on MovieLens latest-small: shards give exactly the rows of one run, retries, skips,
artifacts."""

import json
import os
import runpy
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from helpers import ROOT, Canonical, WriteJob
from polars.testing import assert_frame_equal
from typer.testing import CliRunner

from itdr_batch.cli import app
from itdr_batch.tables.ids import stable_hash
from itdr_batch.tables.shard import split_users

SHARDS = 3
NIGHT = "2026-11-28"
EARLIER = "2026-11-27"


@pytest.fixture(scope="module")
def harness() -> Iterator[None]:
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture(scope="module")
def nightly_job(write_job: WriteJob, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """TKR likelihood in evaluation mode; one user per batch, so that every prompt meets the
    engine alone in the shard runs and in the single run alike (identical floats)."""
    folder = tmp_path_factory.mktemp("nightly")
    return write_job(folder, prompts={"tasks": ["tkr"]}, scoring={"batch_size": 1})


@pytest.fixture(scope="module")
def single(nightly_job: Path, movielens: Canonical) -> Path:
    out = nightly_job.parent / "single"
    args = ["score", "--users", str(movielens.users), "--config", str(nightly_job)]
    result = CliRunner().invoke(app, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def test_shards_split_by_the_stable_hash(movielens: Canonical, tmp_path: Path) -> None:
    three = split_users(movielens.users, 3, tmp_path / "three")
    users = pl.read_parquet(movielens.users)
    parts = [pl.read_parquet(p) for p in three]
    assert sorted(pl.concat(parts)["user_id"]) == sorted(users["user_id"])
    for index, part in enumerate(parts):
        assert (stable_hash(part["user_id"]) % 3 == index).all()
    cli = CliRunner().invoke(
        app,
        ["shard", "--users", str(movielens.users), "--shards", "3", "--out", str(tmp_path / "cli")],
    )
    assert cli.exit_code == 0, cli.output
    for ours, theirs in zip(three, sorted((tmp_path / "cli").glob("*.parquet")), strict=True):
        assert_frame_equal(pl.read_parquet(ours), pl.read_parquet(theirs))


def test_shard_command_names_bad_input(movielens: Canonical, tmp_path: Path) -> None:
    runner = CliRunner()
    zero = ["shard", "--users", str(movielens.users), "--shards", "0", "--out", str(tmp_path)]
    assert "shards must be at least 1, got 0" in runner.invoke(app, zero).output
    missing = tmp_path / "nobody.parquet"
    args = ["shard", "--users", str(missing), "--shards", "2", "--out", str(tmp_path / "out")]
    result = runner.invoke(app, args)
    assert result.exit_code != 0
    assert str(missing) in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_prefect_yaml_and_serve_deploy_the_same_nightly(harness: None, tmp_path: Path) -> None:
    """The README's commands against the test server: `prefect deploy` reads prefect.yaml, and
    flows/serve.py builds the very same deployment from it."""
    from prefect.client.orchestration import get_client
    from prefect.settings import get_current_settings

    api = str(get_current_settings().api.url)
    env = {**os.environ, "PREFECT_API_URL": api, "PREFECT_HOME": str(tmp_path)}
    prefect = [sys.executable, "-m", "prefect"]
    for command in (
        [*prefect, "work-pool", "create", "itdr", "--type", "process"],
        [*prefect, "--no-prompt", "deploy", "--all"],
    ):
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr

    serve = runpy.run_path(str(ROOT / "flows" / "serve.py"))
    with get_client(sync_client=True) as client:
        deployed = _deployment_settings(client.read_deployment_by_name("itdr-nightly/nightly"))
        assert deployed == {
            "schedules": [("0 2 * * *", "UTC", True)],
            "limit": 1,
            "collision": "ENQUEUE",
            "parameters": {
                "config": "nightly/job.toml",
                "users": "nightly/users.parquet",
                "out": "nightly/out",
                "shards": 8,
                "gpu_slots": 1,
            },
            "pull": [{"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT)}}],
            "work_pool": "itdr",
        }
        serve["deployment"]().apply()
        served = _deployment_settings(client.read_deployment_by_name("itdr-nightly/nightly"))
    for key in ("schedules", "limit", "collision", "parameters"):
        assert served[key] == deployed[key], key


def _deployment_settings(deployment: Any) -> dict[str, Any]:
    options = deployment.concurrency_options
    return {
        "schedules": [
            (s.schedule.cron, s.schedule.timezone, s.active) for s in deployment.schedules
        ],
        "limit": deployment.global_concurrency_limit.limit,
        "collision": options.collision_strategy.value if options else None,
        "parameters": deployment.parameters,
        "pull": deployment.pull_steps,
        "work_pool": deployment.work_pool_name,
    }


@pytest.mark.slow
def test_nightly_gives_the_rows_of_one_run_retries_and_skips(
    harness: None, nightly_job: Path, single: Path, movielens: Canonical, tmp_path: Path
) -> None:
    from prefect.client.orchestration import get_client

    from itdr_batch.nightly import nightly

    out = tmp_path / "nightly"
    night = out / NIGHT
    # The first shard's parts folder is blocked by a file (an I/O failure): its first attempt
    # fails, the blocker goes away, the retry succeeds.
    blocked = night / "shard-00000-of-00003" / "_parts"
    blocked.parent.mkdir(parents=True)
    blocked.write_text("in the way")
    unblock = threading.Thread(target=_unblock_on_retry, args=(blocked,), daemon=True)
    unblock.start()
    config, users = str(nightly_job), str(movielens.users)
    summary = nightly(config, users, str(out), NIGHT, SHARDS, gpu_slots=2, retry_delay_s=1)
    unblock.join(timeout=1)
    assert not blocked.is_file(), "the shard never waited for a retry"
    assert summary["out"] == str(night)
    assert json.loads((night / "_summary.json").read_text()) == summary
    assert [s["skipped"] for s in summary["shards"]] == [False] * SHARDS
    assert summary["rows"] == pl.read_parquet(movielens.users).height

    merged = pl.concat(pl.read_parquet(p) for p in sorted(night.glob("shard-*/tkr.parquet")))
    expected = pl.read_parquet(single / "tkr.parquet")
    order = ["user_id", "position"]
    assert_frame_equal(merged.drop("run_id").sort(order), expected.drop("run_id").sort(order))

    with get_client(sync_client=True) as client:
        artifacts = {a.key: a for a in client.read_latest_artifacts()}
    rows = artifacts["itdr-nightly-shards"].data
    table = json.loads(rows) if isinstance(rows, str) else rows
    assert isinstance(table, list)
    assert [r["shard"] for r in table] == [p.stem for p in sorted(night.glob("shards/shard-*"))]
    for row in table:
        scored = pl.read_parquet(night / row["shard"] / "tkr.parquet")["user_id"].n_unique()
        rejected = pl.read_parquet(night / row["shard"] / "rejects.parquet").height
        assert (row["scored"], row["rejected"]) == (scored, rejected)
    headline = artifacts["itdr-nightly-report"].data
    assert isinstance(headline, str)
    assert summary["report"] == str(night / "report.html")
    assert (night / "report.html").is_file()
    assert (
        f"Night {NIGHT}: {summary['rows']:,} users. Report: `{night / 'report.html'}`" in headline
    )
    assert "| tkr | a1 | hr@1 |" in headline
    assert "minus" not in headline

    # With an earlier night beside it (the same rows), tonight is compared with it.
    shutil.copytree(night, out / EARLIER)
    again = nightly(config, users, str(out), NIGHT, SHARDS)
    assert [s["skipped"] for s in again["shards"]] == [True] * SHARDS
    with get_client(sync_client=True) as client:
        artifacts = {a.key: a for a in client.read_latest_artifacts()}
    headline = artifacts["itdr-nightly-report"].data
    assert isinstance(headline, str)
    assert f"minus {EARLIER}" in headline
    assert "| tkr | a1 | hr@1 |" in headline
    assert "+0.0000 (not significant)" in headline


def _unblock_on_retry(blocked: Path, timeout: float = 300) -> None:
    """Removes the blocker once a task run waits for its retry."""
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            if any(r.state and r.state.name == "AwaitingRetry" for r in client.read_task_runs()):
                blocked.unlink()
                return
            time.sleep(0.2)
