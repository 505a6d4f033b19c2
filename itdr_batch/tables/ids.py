"""Stable hashing of ids (README, "Stable hash"), the Polars face of ``_core.stable_hash``.

A user's shard and candidates depend only on this hash, never on shard composition, so any split
of the users gives the same rows.
"""

import polars as pl

from itdr_batch import _core


def stable_hash(ids: pl.Series) -> pl.Series:
    """XXH3-64 (seed 0) of each id: int64 ids as 8 little-endian bytes, string ids as UTF-8."""
    if ids.dtype.is_integer():
        ids = ids.cast(pl.Int64)
    elif ids.dtype != pl.String:
        raise TypeError(f"ids '{ids.name}' must be integers or strings, got {ids.dtype}")
    return pl.Series(_core.stable_hash(ids)).alias(ids.name)
