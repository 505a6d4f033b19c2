"""Type stubs for the Rust extension (checked against the built module by stubtest in the tests)."""

from arro3.core import ChunkedArray
from arro3.core.types import ArrowArrayExportable, ArrowStreamExportable

__all__ = ["__version__", "stable_hash"]

__version__: str

def stable_hash(ids: ArrowArrayExportable | ArrowStreamExportable) -> ChunkedArray:
    """Stable 64-bit hash of each id (int64 or string): XXH3-64, seed 0, over the id's bytes."""
