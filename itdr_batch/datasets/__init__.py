"""Readers that turn public recommendation datasets into the canonical tables."""

from importlib.resources import files
from pathlib import Path

from itdr_batch.datasets.amazon2018 import read_amazon2018
from itdr_batch.datasets.canonical import Ingested, IngestError, Summary, write_canonical
from itdr_batch.datasets.movielens import read_movielens
from itdr_batch.datasets.recbole import read_recbole

# A redistributable subset of MovieLens latest-small, shipped in the package (see its SAMPLE.md).
SAMPLE = Path(str(files("itdr_batch") / "data" / "ml-latest-small-sample"))

__all__ = [
    "SAMPLE",
    "IngestError",
    "Ingested",
    "Summary",
    "read_amazon2018",
    "read_movielens",
    "read_recbole",
    "write_canonical",
]
