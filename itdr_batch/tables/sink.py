"""Writing results so that readers never see a partial file."""

import json
import os
from collections.abc import Callable
from pathlib import Path

import polars as pl


def write_parquet_atomic(frame: pl.DataFrame | pl.LazyFrame, path: Path) -> None:
    """A frame, or a lazy one streamed (memory bounded by its batches, not its size)."""
    if isinstance(frame, pl.LazyFrame):
        write_atomic(path, frame.sink_parquet)
    else:
        write_atomic(path, frame.write_parquet)


def write_json_atomic(value: object, path: Path) -> None:
    text = json.dumps(value, indent=2, sort_keys=True) + "\n"
    write_atomic(path, lambda tmp: tmp.write_text(text))


def write_atomic(path: Path, write: Callable[[Path], object]) -> None:
    """``write(tmp)`` to a temporary file beside ``path``, synced, then renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        with tmp.open("rb") as f:
            os.fsync(f.fileno())
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def concat_parquet_atomic(parts: list[Path], path: Path, empty: pl.DataFrame) -> None:
    """The parts (same schema) as one file, one row group per part, read one part at a time, so
    memory follows the largest part, not the total; ``empty`` (the schema) when there are none."""
    if not parts:
        write_parquet_atomic(empty, path)
        return
    import pyarrow.parquet as pq

    def write(tmp: Path) -> None:
        schema = pq.read_schema(parts[0])
        with pq.ParquetWriter(tmp, schema) as writer:
            for part in parts:
                writer.write_table(pq.read_table(part, schema=schema))

    write_atomic(path, write)
