"""Interactions files whose rows were checked when they were written: a stamp beside them.

``itdr-batch shard --interactions`` validates the whole log and writes each shard's
interactions canonical, its drops made; each shard's run then checked those rows again (a
1M-user shard's 165M interactions: 1.6-3.6 s of a 20 s dry run on 2 cores). ``_checked.json``
beside the files records each one's sha256, the sha256 of the items file it was checked against
(unknown items are dropped) and the package version (the rules). A run reads a log without
checking its rows only when all three match what it reads (the run hashes its inputs anyway, for
its id); any other file, a changed one, other items or another version is checked in full.
"""

import json
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

from pydantic import BaseModel, ValidationError

from itdr_batch.hashing import file_digest
from itdr_batch.tables.sink import write_json_atomic

STAMP = "_checked.json"


class Stamp(BaseModel):
    version: str
    items_sha256: str
    # File name (in the stamp's folder) to sha256.
    files: dict[str, str]


def stamp_path(log: Path) -> Path:
    return log.parent / STAMP


def write_stamp(logs: Sequence[Path], items: Path) -> None:
    """Records ``logs`` (canonical interactions written from a validated log, all in one folder)
    as checked against ``items``; files the folder's stamp already lists for the same items and
    version stay listed."""
    if not logs:
        return
    folder = {log.parent for log in logs}
    assert len(folder) == 1, "the logs of one stamp share a folder"
    items_sha256 = file_digest(items)
    stamp = _read(stamp_path(logs[0]))
    files = {}
    if stamp and stamp.version == _version() and stamp.items_sha256 == items_sha256:
        files = stamp.files
    files |= {log.name: file_digest(log) for log in logs}
    new = Stamp(version=_version(), items_sha256=items_sha256, files=files)
    write_json_atomic(new.model_dump(), stamp_path(logs[0]))


def is_checked(log: Path, log_sha256: str, items_sha256: str) -> bool:
    """Whether ``log`` (of content ``log_sha256``) was checked against items of content
    ``items_sha256`` by this version."""
    stamp = _read(stamp_path(log))
    return (
        stamp is not None
        and stamp.version == _version()
        and stamp.items_sha256 == items_sha256
        and stamp.files.get(log.name) == log_sha256
    )


def _read(path: Path) -> Stamp | None:
    """The stamp, or None when there is none or it cannot be read (nothing is then skipped)."""
    try:
        return Stamp.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, ValidationError):
        return None


def _version() -> str:
    return metadata.version("itdr-batch")
