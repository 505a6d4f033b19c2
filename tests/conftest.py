"""Shared fixtures: the real public data in ../shared/data, a CLI runner, the tiny model and
one engine of each kind per session (vLLM takes ~20 s to start here)."""

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import polars as pl
import pytest
from typer.testing import CliRunner

from itdr_batch.datasets import read_movielens, write_canonical
from itdr_batch.engines import Engine, load_tokenizer, open_engine
from itdr_batch.testing import Tiny, build_tiny

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
# Users of MovieLens latest-small the job tests score (the first ones by id).
JOB_USERS = 12


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


@dataclass(frozen=True)
class Canonical:
    """MovieLens latest-small as canonical Parquet, and a users shard of its first users."""

    interactions: Path
    items: Path
    users: Path


@pytest.fixture(scope="session")
def movielens(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Canonical:
    out = tmp_path_factory.mktemp("movielens")
    write_canonical(read_movielens(shared_data / "movielens-latest-small"), out)
    users = pl.read_parquet(out / "interactions.parquet").select("user_id").unique()
    users.sort("user_id").head(JOB_USERS).write_parquet(out / "users.parquet")
    return Canonical(out / "interactions.parquet", out / "items.parquet", out / "users.parquet")


class WriteJob(Protocol):
    def __call__(self, folder: Path, **sections: dict[str, object]) -> Path: ...


@pytest.fixture(scope="session")
def write_job(tiny: Tiny, movielens: Canonical) -> WriteJob:
    """Writes ``folder/job.toml``: the tiny model (transformers engine, adapter a1) on
    MovieLens; ``sections`` replace or add keys, e.g. ``scoring={"batch_size": 3}``."""

    def write(folder: Path, **sections: dict[str, object]) -> Path:
        return _job_toml(folder, tiny, movielens, sections)

    return write


def _job_toml(
    folder: Path, tiny: Tiny, data: Canonical, sections: dict[str, dict[str, object]]
) -> Path:
    settings: dict[str, dict[str, object]] = {
        "data": {"interactions": str(data.interactions), "items": str(data.items)},
        "model": {"path": str(tiny.model), "chat": "qwen", "dtype": "float32"},
        "prompts": {
            "tasks": ["tkr", "rp"],
            "evaluation": True,
            "history_len": 5,
            "candidates": 5,
            "item_fields": {"category": "genres"},
        },
        "engine": {"kind": "hf", "max_model_len": 1024, "kv_cache_gib": 1, "enforce_eager": True},
        "scoring": {"batch_size": 4},
    }
    for name, values in sections.items():
        settings[name] = settings.get(name, {}) | values
    adapter = tiny.adapters[0]
    lines = [
        f"[[adapters]]\nname = {json.dumps(adapter.name)}\npath = {json.dumps(str(adapter.path))}"
    ]
    for name, values in settings.items():
        lines.append(f"[{name}]")
        lines += [f"{key} = {_toml(value)}" for key, value in values.items()]
    path = folder / "job.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _toml(value: object) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)
