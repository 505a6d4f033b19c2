"""Writing results so that readers never see a partial file."""

import errno
import json
import math
import os
from collections.abc import Callable
from pathlib import Path

import polars as pl


def write_parquet_atomic(frame: pl.DataFrame | pl.LazyFrame, path: Path) -> None:
    """A frame, or a lazy one streamed (memory bounded by its batches, not its size); zstd."""
    if isinstance(frame, pl.LazyFrame):
        write_atomic(path, frame.sink_parquet)
    else:
        write_atomic(path, frame.write_parquet)


def write_json_atomic(value: object, path: Path) -> None:
    """``value`` as strict JSON: NaN and infinities, which JSON lacks, are written as null (as
    JavaScript's ``JSON.stringify`` does), so a reader sees a missing number, never invalid JSON."""
    text = json.dumps(_finite(value), indent=2, sort_keys=True, allow_nan=False) + "\n"
    write_atomic(path, lambda tmp: tmp.write_text(text))


def _finite(value: object) -> object:
    """``value`` with every non-finite float, at any depth of dicts and lists, as None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


# Out of space, or over a quota: what a rerun after freeing space gets past.
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class DiskFull(OSError):
    """``path`` could not be written for lack of space (``errno``: ENOSPC or EDQUOT)."""


def write_atomic(path: Path, write: Callable[[Path], object]) -> None:
    """``write(tmp)`` to a temporary file beside ``path``, synced, then renamed into place.

    A full disk raises ``DiskFull`` naming ``path``, whichever library did the writing."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        with tmp.open("rb") as f:
            os.fsync(f.fileno())
        tmp.replace(path)
    except Exception as exc:
        if (code := _disk_full(exc)) is None:
            raise
        raise DiskFull(code, os.strerror(code), str(path)) from exc
    finally:
        tmp.unlink(missing_ok=True)


def temporary_files(folder: Path, name: str = "*", *, recursive: bool = False) -> list[Path]:
    """The temporary files a ``write_atomic`` killed mid-write left in ``folder`` (and below it,
    ``recursive``) for the files named ``name`` (a glob)."""
    pattern = f".{name}.*.tmp"
    return sorted(folder.rglob(pattern) if recursive else folder.glob(pattern))


def _disk_full(exc: BaseException) -> int | None:
    """ENOSPC or EDQUOT behind ``exc``: an ``OSError``'s errno, or the Rust I/O error text inside
    a Polars error (Polars reports a failed write as a ``ComputeError``, or as an ``OSError``
    without an errno: its IPC writer)."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return exc.errno if exc.errno in _DISK_FULL else None
    return next((code for code in _DISK_FULL if f"(os error {code})" in str(exc)), None)


# Rows per row group of a concatenated file: the streaming writer holds about a row group per
# core before writing, and a prompt is ~1 KB (its default of ~500k rows took 0.5 GB more).
CONCAT_ROW_GROUP = 10_000


def write_ipc_atomic(frame: pl.DataFrame, path: Path) -> None:
    """A frame as an uncompressed Arrow IPC file: the cheapest to write and read back once."""
    write_atomic(path, lambda tmp: frame.write_ipc(tmp, compression="uncompressed"))


def concat_parquet_atomic(parts: list[Path], path: Path, empty: pl.DataFrame) -> None:
    """The parts (Arrow IPC files, ``write_ipc_atomic``, of one schema) as one Parquet file,
    streamed (memory follows a few row groups, not the total) and compressed on every core;
    ``empty`` (the schema) when there are none. Row groups are the writer's, not the parts':
    many small (or empty) parts do not make as many groups."""
    if not parts:
        write_parquet_atomic(empty, path)
        return
    scan = pl.scan_ipc(parts)
    write_atomic(path, lambda tmp: scan.sink_parquet(tmp, row_group_size=CONCAT_ROW_GROUP))
