"""Shared fixtures: the real public data in ../shared/data, a CLI runner, the tiny model and
one engine of each kind per session (vLLM takes ~20 s to start here)."""

import os
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest
from helpers import JOB_USERS, SHARED_DATA, Canonical, WriteJob, job_toml
from typer.testing import CliRunner

from itdr_batch.datasets import read_movielens, write_canonical
from itdr_batch.dev.tiny import Tiny, build_tiny
from itdr_batch.engines import Engine, load_tokenizer, open_engine


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data; on CI its absence is a failure, elsewhere the test is skipped."""
    if not SHARED_DATA.is_dir():
        message = f"real test data not found at {SHARED_DATA} (the shared/ folder beside the repo)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return SHARED_DATA


@pytest.fixture
def cli() -> CliRunner:
    return CliRunner()


@pytest.fixture(scope="session")
def tiny(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Tiny:
    """The tiny Qwen2 model with the real Qwen2.5 tokenizer, and two adapters (a1, a2)."""
    return build_tiny(tmp_path_factory.mktemp("tiny"), shared_data / "qwen2.5-tokenizer")


@pytest.fixture(scope="session")
def tokenizer(tiny: Tiny) -> object:
    return load_tokenizer(tiny.config())


@pytest.fixture(scope="session")
def vllm_engine(tiny: Tiny) -> Iterator[Engine]:
    """vLLM's CPU build, chosen by ``engine = "auto"``."""
    engine = open_engine(tiny.config(engine="auto", chunk_size=16))
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def hf_engine(tiny: Tiny) -> Iterator[Engine]:
    engine = open_engine(tiny.config(engine="hf", chunk_size=16))
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def movielens(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Canonical:
    out = tmp_path_factory.mktemp("movielens")
    write_canonical(read_movielens(shared_data / "movielens-latest-small"), out)
    users = pl.read_parquet(out / "interactions.parquet").select("user_id").unique()
    users.sort("user_id").head(JOB_USERS).write_parquet(out / "users.parquet")
    return Canonical(out / "interactions.parquet", out / "items.parquet", out / "users.parquet")


@pytest.fixture(scope="session")
def write_job(tiny: Tiny, movielens: Canonical) -> WriteJob:
    """Writes ``folder/job.toml``: the tiny model (transformers engine, adapter a1) on
    MovieLens; ``sections`` replace or add keys, e.g. ``scoring={"batch_size": 3}``."""

    def write(folder: Path, **sections: dict[str, object]) -> Path:
        return job_toml(folder, tiny, movielens, sections)

    return write
