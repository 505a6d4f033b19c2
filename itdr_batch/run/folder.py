"""The run folder (README, "Results"): where a run's parts, records and final files live.

Layout::

    DIR/_parts/_run.json                   RunState: the run in progress
    DIR/_parts/<task>/<batch>.parquet      a committed unit's results ...
    DIR/_parts/<task>/<batch>.rejects.parquet   ... and rejects
    DIR/_parts/<task>/<batch>.json         UnitRecord, written last: the unit is committed
    DIR/<task>.parquet, DIR/rejects.parquet     the final files (parts concatenated)
    DIR/_manifest.json                     Manifest, written last: the run is complete

Every file is written atomically, so a run killed at any point leaves only whole files, and a
unit without its record is simply done again.
"""

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import polars as pl

from itdr_batch.errors import ItdrError
from itdr_batch.run.manifest import Manifest, RunState, UnitRecord, read_record
from itdr_batch.tables.sink import concat_parquet_atomic, write_json_atomic, write_parquet_atomic
from itdr_batch.tasks import Task

MANIFEST = "_manifest.json"
PARTS = "_parts"
RUN_STATE = "_run.json"
REJECTS = "rejects.parquet"


class RunFolderError(ItdrError):
    """The folder holds another run, complete or not."""


class RunFolder:
    def __init__(self, out: Path) -> None:
        self.out = Path(out)

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
        write_json_atomic(state.dump(), path)
        return state

    def committed(self, batch: int, task: Task) -> bool:
        return self._record(batch, task).is_file()

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
        write_parquet_atomic(results, part)
        write_parquet_atomic(rejects, part.with_suffix(".rejects.parquet"))
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
        for task in tasks:
            parts = [self._part(b, task) for b in range(batches)]
            _concat(parts, schemas[task], self.out / f"{task}.parquet")
            files[str(task)] = f"{task}.parquet"
        reject_parts = [
            self._part(b, t).with_suffix(".rejects.parquet") for b in range(batches) for t in tasks
        ]
        _concat(reject_parts, rejects, self.out / REJECTS)
        files["rejects"] = REJECTS
        return files

    def complete(self, manifest: Manifest) -> None:
        """Writes the manifest, last, and drops the parts."""
        write_json_atomic(manifest.dump(), self.manifest_path)
        shutil.rmtree(self.parts, ignore_errors=True)

    def _part(self, batch: int, task: Task) -> Path:
        return self.parts / str(task) / f"{batch:06d}.parquet"

    def _record(self, batch: int, task: Task) -> Path:
        return self.parts / str(task) / f"{batch:06d}.json"


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
