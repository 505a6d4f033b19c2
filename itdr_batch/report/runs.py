"""What the report reads from each RUN it is given: a run folder, or a night of shard runs.

A night folder (``out/nightly/<night>``) holds one run folder per shard: the same job on disjoint
users, so the report treats them as one run of all their users (``evaluate.evaluation`` over the
shards), named by the folder.
"""

from dataclasses import dataclass
from pathlib import Path

import polars as pl

from itdr_batch.errors import ItdrError
from itdr_batch.evaluate import Evaluation, evaluation, run_folders, task_counts
from itdr_batch.run.folder import MANIFEST, UNITS
from itdr_batch.run.manifest import AdapterCounts, Manifest, ManifestError, read_record
from itdr_batch.tasks import ResultKind, Task, spec


class ReportError(ItdrError):
    """A RUN the report cannot read: what is wrong and where."""


@dataclass(frozen=True)
class Run:
    """``evaluation`` is None for a run not in evaluation mode (no held-out labels)."""

    name: str
    path: Path
    folders: list[Path]
    manifests: list[Manifest]
    evaluation: Evaluation | None

    @property
    def users(self) -> int:
        return sum(m.counts.rows for m in self.manifests)

    def counts(self, task: Task) -> dict[str, AdapterCounts]:
        """Per adapter, the task's rows scored and rejected by reason over all folders."""
        return task_counts(self.manifests, task)

    def units(self) -> pl.DataFrame:
        """Every unit's record (``_units.ndjson``) of every folder."""
        frames = [
            pl.read_ndjson(folder / UNITS).select(
                "batch", "task", "prompts", "prompt_tokens", "build_s", "score_s", "finished_at"
            )
            for folder in self.folders
            if (folder / UNITS).is_file()
        ]
        return pl.concat(frames, how="vertical_relaxed") if frames else pl.DataFrame()

    def scores(self, task: Task) -> dict[str, pl.Series]:
        """Per adapter, what the task wrote as its score: ``score`` for ranking tasks, the
        expected ``rating`` for rp; nothing for the others."""
        column = {ResultKind.RANKING: "score", ResultKind.RATING: "rating"}.get(spec(task).result)
        if column is None:
            return {}
        paths = [f / m.files[task.value] for f, m in zip(self.folders, self.manifests, strict=True)]
        frame = (
            pl.scan_parquet(paths)
            .select(pl.col("adapter").fill_null("base"), column)
            .filter(pl.col(column).is_finite())
            .collect()
        )
        return {
            adapter: group[column]
            for (adapter,), group in frame.sort("adapter").group_by("adapter", maintain_order=True)
        }


def read_run(path: Path) -> Run:
    """The run folder or night at ``path``, evaluated when it ran in evaluation mode."""
    folders = run_folders(path)
    if not folders:
        raise ReportError(
            f"{path}: neither a run folder (no {MANIFEST}) nor a night of shard runs "
            f"(no */{MANIFEST})"
        )
    manifests = []
    for folder in folders:
        try:
            manifest = read_record(folder / MANIFEST, Manifest)
        except ManifestError as exc:
            raise ReportError(str(exc)) from exc
        if manifest.status != "complete" or manifest.dry_run:
            raise ReportError(
                f"{folder / MANIFEST}: a report needs a complete scored run "
                f"(status {manifest.status!r}, dry run: {manifest.dry_run})"
            )
        manifests.append(manifest)
    scored = manifests[0].config.prompts.evaluation
    result = evaluation(folders) if scored else None
    return Run(path.name or str(path), path, folders, manifests, result)
