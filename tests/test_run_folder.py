"""The run folder: one writer at a time (an OS lock that a killed holder never leaves behind, in
the CLI and in the nightly shards alike), temporary files of a killed writer removed by the next
run, and an unusable folder or a full disk refused with a one-line error."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import polars as pl
import pytest
from helpers import Canonical, WriteJob, committed_units
from polars.testing import assert_frame_equal
from typer.testing import CliRunner, Result

from itdr_batch.cli import app
from itdr_batch.run.config import load_config
from itdr_batch.run.folder import RunFolderError
from itdr_batch.run.job import run_job
from itdr_batch.tables.shard import split_users

ITDR_BATCH = Path(sys.executable).parent / "itdr-batch"

# Holds the folder's lock through the job's own API, with a forked child (as an engine's worker
# would be) still running; prints the child's pid once the lock is held.
HOLD = """
import os, sys, time
from pathlib import Path
from itdr_batch.run.folder import RunFolder

with RunFolder(Path(sys.argv[1])).lock():
    child = os.fork()
    if child == 0:
        time.sleep(600)
        os._exit(0)
    print(child, flush=True)
    time.sleep(600)
"""

# Starts an atomic write and stops half-way, to be killed there.
HALF_WRITE = """
import sys, time
from pathlib import Path
from itdr_batch.tables.sink import write_atomic

def write(tmp: Path) -> None:
    tmp.write_bytes(b"PAR1 half a file")
    print(tmp, flush=True)
    time.sleep(600)

write_atomic(Path(sys.argv[1]), write)
"""


@contextmanager
def holding(out: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding ``out``'s lock (and its forked child) until the block ends."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None
    child = int(holder.stdout.readline())
    try:
        yield holder
    finally:
        holder.kill()
        holder.wait()
        subprocess.run(["kill", "-KILL", str(child)], check=False)


def files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def one_line(result: Result) -> str:
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    return result.output.strip()


@pytest.fixture(scope="module")
def job(write_job: WriteJob, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_job(tmp_path_factory.mktemp("folder-job"))


@pytest.fixture(scope="module")
def dry_reference(job: Path, movielens: Canonical) -> Path:
    """An uninterrupted dry run of the job."""
    out = job.parent / "dry-reference"
    run_job(load_config(job), movielens.users, out, dry_run=True)
    return out


def dry_run(cli: CliRunner, job: Path, users: Path, out: Path, *extra: str) -> Result:
    args = ["score", "--dry-run", "--users", str(users), "--config", str(job), "--out", str(out)]
    return cli.invoke(app, [*args, *extra])


def check_same_run(out: Path, reference: Path) -> None:
    manifest = json.loads((out / "_manifest.json").read_text())
    for file in manifest["files"].values():
        assert_frame_equal(pl.read_parquet(out / file), pl.read_parquet(reference / file))


def test_a_second_writer_is_refused_naming_the_holder_and_writes_nothing(
    cli: CliRunner, job: Path, movielens: Canonical, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    with holding(out) as holder:
        before = files(out)
        message = one_line(dry_run(cli, job, movielens.users, out, "--seed", "1"))
        assert f"pid {holder.pid} on host {socket.gethostname()}, started 20" in message
        assert "is being written by another run" in message
        assert files(out) == before


@pytest.mark.slow
def test_two_score_processes_on_one_folder_leave_one_consistent_run(
    cli: CliRunner, write_job: WriteJob, movielens: Canonical, tmp_path: Path
) -> None:
    """The issue's case: a second run with another seed while the first scores.

    The first run is paused (SIGSTOP) after its first commit, so it is mid-run, holding the
    lock, when the second starts, however fast either is on the day; it resumes afterwards.
    """
    first_job = write_job(tmp_path, scoring={"batch_size": 1})
    out = tmp_path / "run"
    args = ["score", "--users", str(movielens.users), "--config", str(first_job), "--out", str(out)]
    log = tmp_path / "first.log"
    with log.open("w") as stderr:
        first = subprocess.Popen([ITDR_BATCH, *args], stderr=stderr)
    deadline = time.monotonic() + 120
    while not committed_units(out):
        assert first.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "the first run committed nothing in time"
        time.sleep(0.01)
    first.send_signal(signal.SIGSTOP)
    try:
        assert first.poll() is None, (
            f"the first run ended before the second started\n{log.read_text()}"
        )
        message = one_line(cli.invoke(app, [*args, "--seed", "1"]))
    finally:
        first.send_signal(signal.SIGCONT)
    assert f"pid {first.pid} on host {socket.gethostname()}" in message
    assert first.wait(timeout=300) == 0, log.read_text()
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["config"]["seed"] == 0
    for file in manifest["files"].values():
        assert pl.read_parquet(out / file)["run_id"].unique().to_list() in (
            [],
            [manifest["run_id"]],
        )


def test_a_killed_holder_does_not_block_the_rerun(
    cli: CliRunner, job: Path, movielens: Canonical, dry_reference: Path, tmp_path: Path
) -> None:
    """SIGKILL frees the lock, even while a forked child of the holder lives on."""
    out = tmp_path / "run"
    with holding(out) as holder:
        holder.send_signal(signal.SIGKILL)
        assert holder.wait() == -signal.SIGKILL
        result = dry_run(cli, job, movielens.users, out)
        assert result.exit_code == 0, result.output
    check_same_run(out, dry_reference)
    assert json.loads((out / ".lock").read_text())["host"] == socket.gethostname()


def test_temporary_files_of_a_killed_writer_are_removed_by_the_next_run(
    cli: CliRunner, job: Path, movielens: Canonical, dry_reference: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    leftovers = []
    for file in (out / "tkr.parquet", out / "_parts" / "rp" / "000001.arrow"):
        writer = subprocess.Popen(
            [sys.executable, "-c", HALF_WRITE, str(file)], stdout=subprocess.PIPE, text=True
        )
        assert writer.stdout is not None
        leftovers.append(Path(writer.stdout.readline().strip()))
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    assert all(tmp.is_file() for tmp in leftovers)
    result = dry_run(cli, job, movielens.users, out)
    assert result.exit_code == 0, result.output
    assert not [p for p in out.rglob("*.tmp")]
    check_same_run(out, dry_reference)


@pytest.mark.parametrize("case", ["a file", "under a file"])
def test_an_out_that_is_not_a_folder_is_refused_in_one_line(
    cli: CliRunner, job: Path, movielens: Canonical, tmp_path: Path, case: str
) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("in the way")
    out = blocker if case == "a file" else blocker / "run"
    args = ["score", "--users", str(movielens.users), "--config", str(job), "--out", str(out)]
    message = one_line(cli.invoke(app, args))
    assert f"{out} cannot hold a run: {blocker} is not a folder" in message
    assert sorted(tmp_path.iterdir()) == [blocker]
    assert blocker.read_text() == "in the way"


def test_a_read_only_out_is_refused_in_one_line(
    job: Path, movielens: Canonical, tmp_path: Path
) -> None:
    """A read-only filesystem (a tmpfs mounted read-only in a user namespace: no root needed)."""
    if subprocess.run(["unshare", "-rm", "true"], check=False).returncode != 0:
        pytest.skip("unshare -rm (user namespaces) is not available")
    mount = tmp_path / "readonly"
    mount.mkdir()
    script = 'mount -t tmpfs -o ro tmpfs "$1" && exec "$2" score --out "$1/run" "${@:3}"'
    args = ["--users", str(movielens.users), "--config", str(job)]
    result = subprocess.run(
        ["unshare", "-rm", "bash", "-c", script, "bash", str(mount), str(ITDR_BATCH), *args],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert f"{mount}/run cannot hold a run: {mount} is not writable" in result.stderr


class FillsDisk:
    """A progress reporter that, when the run reaches ``stage``, points the temporary file of the
    run's next write of ``target`` at /dev/full, where every write fails with ENOSPC."""

    def __init__(self, stage: str, target: Path) -> None:
        self.stage = stage
        self.tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")

    def start(self, total: int, done: int) -> None:
        if self.stage == "commit":
            self._fill()

    def advance(self, users: int, prompts: int, tokens: int) -> None:
        pass

    def finish(self) -> None:
        if self.stage == "finish":
            self._fill()

    def _fill(self) -> None:
        self.tmp.parent.mkdir(parents=True, exist_ok=True)
        self.tmp.symlink_to("/dev/full")


@pytest.mark.parametrize(
    ("stage", "target", "kept"),
    [("commit", "_parts/tkr/000001.arrow", 2), ("finish", "tkr.parquet", 6)],
)
def test_a_full_disk_stops_in_one_line_keeping_what_is_committed(
    job: Path,
    movielens: Canonical,
    dry_reference: Path,
    tmp_path: Path,
    stage: str,
    target: str,
    kept: int,
) -> None:
    out = tmp_path / "run"
    config = load_config(job)
    full = FillsDisk(stage, out / target)
    with pytest.raises(RunFolderError) as caught:
        run_job(config, movielens.users, out, dry_run=True, reporter=full)
    message = str(caught.value)
    assert message.startswith(f"{out / target}: No space left on device; ")
    assert "run the same command again to resume" in message
    assert "\n" not in message
    assert not full.tmp.is_symlink()
    assert len(list(out.glob("_parts/*/[0-9]*.json"))) == kept
    assert not (out / "_manifest.json").exists()

    run_job(config, movielens.users, out, dry_run=True)
    check_same_run(out, dry_reference)


def test_two_jobs_on_one_nightly_shard_cannot_both_run(
    job: Path, movielens: Canonical, tmp_path: Path
) -> None:
    """The nightly flow's shard task, while another job holds that shard's folder."""
    from prefect.logging import disable_run_logger

    from itdr_batch.nightly import score_shard

    shard = split_users(movielens.users, 2, tmp_path / "shards")[0]
    out = tmp_path / shard.stem
    with holding(out) as holder:
        before = files(out)
        with disable_run_logger(), pytest.raises(RunFolderError, match=f"pid {holder.pid} "):
            score_shard.fn(str(job), str(shard), str(out), {})
        assert files(out) == before


def test_units_whose_parts_an_older_version_wrote_as_parquet_are_done_again(
    job: Path, movielens: Canonical, dry_reference: Path, tmp_path: Path
) -> None:
    """Records beside Parquet parts (the layout before Arrow IPC parts): those units are not
    committed for this version, so the rerun does them again and writes the same rows."""
    out = tmp_path / "run"
    full = FillsDisk("commit", out / "_parts/tkr/000001.arrow")
    with pytest.raises(RunFolderError):
        run_job(load_config(job), movielens.users, out, dry_run=True, reporter=full)
    older = list(out.glob("_parts/*/[0-9]*.arrow"))
    assert older
    for part in older:
        pl.read_ipc(part).write_parquet(part.with_suffix(".parquet"))
        part.unlink()
    run_job(load_config(job), movielens.users, out, dry_run=True)
    check_same_run(out, dry_reference)
