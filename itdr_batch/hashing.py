"""Content hashes of files: the identities of inputs, models and adapters (and so of runs)."""

import hashlib
from collections.abc import Iterable
from pathlib import Path


def file_sha256(path: Path) -> bytes:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").digest()


def file_digest(path: Path) -> str:
    """One file's identity, as a run's manifest records it (``inputs.<name>.sha256``)."""
    return files_digest([path], names=False)


def files_digest(paths: Iterable[Path], *, names: bool = True) -> str:
    """sha256 over each file's sha256, preceded by its file name when ``names``.

    Content, not location: the same files anywhere give the same digest.
    """
    digest = hashlib.sha256()
    for path in paths:
        if names:
            digest.update(path.name.encode())
        digest.update(file_sha256(path))
    return digest.hexdigest()
