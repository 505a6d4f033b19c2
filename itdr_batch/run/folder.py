"""The run folder (README, "Results"): where a run's parts, records and final files live.

Layout::

    DIR/.lock                              the lock: who writes the folder (pid, host, start)
    DIR/_parts/_run.json                   RunState: the run in progress
    DIR/_parts/<task>/<batch>.arrow        a committed unit's results (Arrow IPC) ...
    DIR/_parts/<task>/<batch>.rejects.arrow     ... and rejects
    DIR/_parts/<task>/<batch>.json         UnitRecord, written last: the unit is committed
    DIR/<task>.parquet, DIR/rejects.parquet     the final files (parts concatenated)
    DIR/<task>.jsonl                       a dry run's batch requests (``itdr_batch.run.export``)
    DIR/_units.ndjson                      every unit's UnitRecord, kept when the parts go
    DIR/_manifest.json                     Manifest, written last: the run is complete

One process writes a folder at a time: ``lock`` holds an OS lock (``flock``) on ``DIR/.lock``
for the whole run, and the kernel drops it when the process ends, however it ends, so a killed run
never blocks its rerun. Every file is written atomically, so a run killed at any point leaves only
whole files (and temporary ones, removed by the next run), and a unit without its record is
simply done again.
"""

import fcntl
import json
import logging
import os
import shutil
import socket
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

from itdr_batch.errors import ItdrError
from itdr_batch.run.manifest import Manifest, RunState, UnitRecord, read_record
from itdr_batch.tables.sink import (
    DiskFull,
    concat_parquet_atomic,
    temporary_files,
    write_atomic,
    write_ipc_atomic,
    write_json_atomic,
)
from itdr_batch.tasks import Task

log = logging.getLogger(__name__)

LOCK = ".lock"
MANIFEST = "_manifest.json"
PARTS = "_parts"
RUN_STATE = "_run.json"
REJECTS = "rejects.parquet"
UNITS = "_units.ndjson"


class RunFolderError(ItdrError):
    """The folder cannot take this run: another run is in it or writing it, or it cannot be
    written (not a folder, read-only, full)."""


# Lock files this process holds. A forked child (an engine's worker) inherits them and would keep
# the lock after this process is killed, so children close them.
_held: set[int] = set()


def _close_held() -> None:
    for fd in _held:
        os.close(fd)
    _held.clear()


os.register_at_fork(after_in_child=_close_held)


class RunFolder:
    def __init__(self, out: Path) -> None:
        self.out = Path(out)

    def check_writable(self) -> None:
        """An error, before any output, when the folder cannot be created or written."""
        base = next(p for p in (self.out, *self.out.parents) if p.exists())
        if not base.is_dir():
            raise RunFolderError(f"{self.out} cannot hold a run: {base} is not a folder")
        if not os.access(base, os.W_OK | os.X_OK):
            raise RunFolderError(f"{self.out} cannot hold a run: {base} is not writable")

    @contextmanager
    def lock(self) -> Iterator[None]:
        """The folder, for this process alone until the block ends; an error naming the holder
        when another process has it. Temporary files of a killed writer are removed first."""
        path = self.out / LOCK
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise RunFolderError(f"{self.out} cannot hold a run: {exc.strerror} ({path})") from exc
        try:
            _acquire(fd, self.out)
            _held.add(fd)
            self._remove_leftovers()
            yield
        finally:
            _held.discard(fd)
            os.close(fd)

    @property
    def manifest_path(self) -> Path:
        return self.out / MANIFEST

    @property
    def parts(self) -> Path:
        return self.out / PARTS

    def manifest(self) -> Manifest | None:
        """The complete run's manifest, if the folder holds one."""
        if not self.manifest_path.is_file():
            return None
        return read_record(self.manifest_path, Manifest)

    def completed(self, run_id: str, config: dict[str, Any]) -> Manifest | None:
        """The manifest of this very run if it is complete; an error if another run is there."""
        manifest = self.manifest()
        if manifest is None:
            return None
        if manifest.run_id != run_id:
            raise RunFolderError(
                f"{self.out} already holds the complete run {manifest.run_id}, made with "
                f"another configuration or other inputs"
                f"{_differences(manifest.config.dump(), config)}; write this run to another --out"
            )
        shutil.rmtree(self.parts, ignore_errors=True)
        return manifest

    def check_unfinished(self, run_id: str, config: dict[str, Any]) -> None:
        """An error if the folder holds another run's unfinished parts."""
        path = self.parts / RUN_STATE
        if not path.is_file():
            return
        previous = read_record(path, RunState)
        if previous.run_id != run_id:
            raise RunFolderError(
                f"{self.out} holds an unfinished run {previous.run_id} made with another "
                f"configuration or other inputs{_differences(previous.config, config)}; "
                f"rerun it as it was, or delete {self.parts} to start over"
            )

    def start(self, state: RunState) -> RunState:
        """Records the run in progress; a resumed run keeps its first start."""
        path = self.parts / RUN_STATE
        if path.is_file():
            return read_record(path, RunState)
        with _space():
            write_json_atomic(state.dump(), path)
        return state

    def committed(self, batch: int, task: Task) -> bool:
        """The unit's record and its part: a folder an older version left, whose parts were
        Parquet, redoes those units."""
        return self._record(batch, task).is_file() and self._part(batch, task).is_file()

    def commit(
        self,
        batch: int,
        task: Task,
        results: pl.DataFrame,
        rejects: pl.DataFrame,
        record: UnitRecord,
    ) -> None:
        """The unit's parts, then its record: only a unit with a record counts as done."""
        part = self._part(batch, task)
        with _space():
            # Uncompressed IPC: a part is read once, by ``concat``; zstd took four times as long
            # to write as the rest of a dry run's unit, uncompressed Parquet twice IPC's CPU.
            write_ipc_atomic(results, part)
            write_ipc_atomic(rejects, self._rejects_part(batch, task))
            write_json_atomic(record.dump(), self._record(batch, task))

    def records(self, task: Task, batches: int) -> list[UnitRecord]:
        return [read_record(self._record(b, task), UnitRecord) for b in range(batches)]

    def concat(
        self,
        tasks: Sequence[Task],
        batches: int,
        schemas: dict[Task, pl.Schema],
        rejects: pl.Schema,
    ) -> dict[str, str]:
        """The parts streamed into one file per task and ``rejects.parquet``; their names."""
        files: dict[str, str] = {}
        with _space():
            for task in tasks:
                parts = [self._part(b, task) for b in range(batches)]
                _concat(parts, schemas[task], self.out / f"{task}.parquet")
                files[str(task)] = f"{task}.parquet"
            reject_parts = [self._rejects_part(b, t) for b in range(batches) for t in tasks]
            _concat(reject_parts, rejects, self.out / REJECTS)
        files["rejects"] = REJECTS
        return files

    def write_units(self, records: Sequence[UnitRecord]) -> None:
        """Every committed unit's record, one JSON line each in (batch, task) order, kept after
        the parts go: what each batch scored and how fast (the report's throughput chart). Not
        ``*.jsonl``: that names a dry run's batch requests."""
        ordered = sorted(records, key=lambda r: (r.batch, r.task))
        lines = "".join(json.dumps(r.dump()) + "\n" for r in ordered)
        with _space():
            write_atomic(self.out / UNITS, lambda tmp: tmp.write_text(lines, encoding="utf-8"))

    def complete(self, manifest: Manifest) -> None:
        """Writes the manifest, last, and drops the parts."""
        with _space():
            write_json_atomic(manifest.dump(), self.manifest_path)
        shutil.rmtree(self.parts, ignore_errors=True)

    def add_json_lines(self, manifest: Manifest, files: Mapping[str, pl.LazyFrame]) -> Manifest:
        """Files made from a complete run, as JSON lines, then its manifest listing them: the
        manifest never names a file that is not there."""
        listed = manifest.model_copy(update={"files": manifest.files | {n: n for n in files}})
        with _space():
            for name, frame in files.items():
                write_atomic(self.out / name, frame.sink_ndjson)
            write_json_atomic(listed.dump(), self.manifest_path)
        return listed

    def _remove_leftovers(self) -> None:
        """Temporary files of a writer killed mid-write: under the lock none is being written.
        Only those of the files a run writes (``evaluate`` writes beside them, unlocked)."""
        stale = temporary_files(self.out, "*.parquet") + temporary_files(self.out, MANIFEST)
        stale += temporary_files(self.out, "*.jsonl") + temporary_files(self.out, UNITS)
        stale += temporary_files(self.parts, recursive=True)
        for path in stale:
            path.unlink(missing_ok=True)
        if stale:
            log.info("%s: removed %d temporary files of an interrupted run", self.out, len(stale))

    def _part(self, batch: int, task: Task) -> Path:
        return self.parts / str(task) / f"{batch:06d}.arrow"

    def _rejects_part(self, batch: int, task: Task) -> Path:
        return self.parts / str(task) / f"{batch:06d}.rejects.arrow"

    def _record(self, batch: int, task: Task) -> Path:
        return self.parts / str(task) / f"{batch:06d}.json"


def _acquire(fd: int, out: Path) -> None:
    """Takes the lock without waiting and writes who holds it; an error naming the holder."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise RunFolderError(
            f"{out} is being written by another run ({_holder(fd)}); wait for it to end, "
            "or write this run to another --out"
        ) from None
    started = datetime.now(UTC).isoformat(timespec="seconds")
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "started_at": started}
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
    except OSError as exc:
        raise RunFolderError(f"{out} cannot hold a run: {exc.strerror} ({out / LOCK})") from exc


def _holder(fd: int) -> str:
    """The lock holder as its lock file names it."""
    try:
        holder = json.loads(os.pread(fd, 4096, 0))
        return f"pid {holder['pid']} on host {holder['host']}, started {holder['started_at']}"
    except (ValueError, KeyError, TypeError):
        return "a process that has not yet written its pid"


@contextmanager
def _space() -> Iterator[None]:
    """A full disk as a one-line error: what is committed stays, and a rerun resumes from it."""
    try:
        yield
    except DiskFull as exc:
        raise RunFolderError(
            f"{exc.filename}: {exc.strerror}; the batches committed so far are kept: free some "
            "space and run the same command again to resume"
        ) from exc


def _concat(parts: list[Path], schema: pl.Schema, path: Path) -> None:
    # No batches (an empty shard) still gives the files, empty, with their columns.
    concat_parquet_atomic(parts, path, pl.DataFrame(schema=schema))


def _differences(previous: dict[str, Any], current: dict[str, Any]) -> str:
    """`` (differs: scoring.batch_size, ...)`` between two stored configurations."""
    old, new = _flat(previous), _flat(current)
    keys = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    keys = [k for k in keys if not k.startswith("output.")]
    return f" (differs: {', '.join(keys)})" if keys else ""


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for key, inner in value.items():
            flat |= _flat(inner, f"{prefix}{key}.")
        return flat
    return {prefix.rstrip("."): value}
