"""The Rust extension, called over Arrow data, and its hand-written stubs."""

import struct
import subprocess
import sys

import polars as pl
import pyarrow as pa
import pytest
import xxhash
from hypothesis import given
from hypothesis import strategies as st

from itdr_batch import _core
from itdr_batch.tables.ids import stable_hash


def reference(ids: list[int] | list[str]) -> list[int]:
    """The documented hash, computed by the independent C implementation of XXH3."""
    return [
        xxhash.xxh3_64_intdigest(struct.pack("<q", i) if isinstance(i, int) else i.encode())
        for i in ids
    ]


def test_stubs_match_the_built_module() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "itdr_batch._core"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    "ids",
    [
        pa.array([1, -5, 2**62], pa.int64()),
        pa.chunked_array([["a", "b"], ["ü", ""]], pa.string()),
        pa.array(["x", "y"], pa.large_string()),
        pa.array(["x", "y"], pa.string_view()),
        pl.Series([3, 4, 5]),
        pl.Series(["u1", "u2"]),
    ],
    ids=[
        "pyarrow-int64",
        "pyarrow-chunked",
        "large-string",
        "string-view",
        "polars-int",
        "polars-str",
    ],
)
def test_core_hashes_any_arrow_producer(ids: pa.Array | pa.ChunkedArray | pl.Series) -> None:
    hashes = pa.chunked_array(_core.stable_hash(ids))
    assert hashes.type == pa.uint64()
    values = ids.to_list() if isinstance(ids, pl.Series) else ids.to_pylist()
    assert hashes.to_pylist() == reference(values)


def test_core_keeps_chunks() -> None:
    ids = pa.chunked_array([[1, 2], [3]], pa.int64())
    assert _core.stable_hash(ids).num_chunks == 2


def test_null_id_is_rejected_with_position() -> None:
    with pytest.raises(ValueError, match="null id at position 1"):
        _core.stable_hash(pa.array(["a", None]))


def test_float_ids_are_rejected() -> None:
    with pytest.raises(ValueError, match="ids must be int64 or string, got Float64"):
        _core.stable_hash(pa.array([1.5]))
    with pytest.raises(TypeError, match="'score' must be integers or strings"):
        stable_hash(pl.Series("score", [1.5]))


@given(st.lists(st.integers(min_value=-(2**63), max_value=2**63 - 1), max_size=50))
def test_int_ids_match_reference(ids: list[int]) -> None:
    assert stable_hash(pl.Series(ids, dtype=pl.Int64)).to_list() == reference(ids)


@given(st.lists(st.text(), max_size=50))
def test_string_ids_match_reference(ids: list[str]) -> None:
    assert stable_hash(pl.Series(ids, dtype=pl.String)).to_list() == reference(ids)


def test_narrow_int_ids_hash_as_int64() -> None:
    narrow = stable_hash(pl.Series("user_id", [1, 2], dtype=pl.Int32))
    assert narrow.name == "user_id"
    assert narrow.to_list() == reference([1, 2])
