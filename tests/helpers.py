"""Shared test code that is not a fixture: paths, the canonical MovieLens tables' type and the
job file writer. Fixtures live in conftest.py; tests import these with ``from helpers import``."""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from itdr_batch.dev.tiny import Tiny

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
# Users of MovieLens latest-small the job tests score (the first ones by id).
JOB_USERS = 12


@dataclass(frozen=True)
class Canonical:
    """MovieLens latest-small as canonical Parquet, and a users shard of its first users."""

    interactions: Path
    items: Path
    users: Path


class WriteJob(Protocol):
    def __call__(self, folder: Path, **sections: dict[str, object]) -> Path: ...


def job_toml(
    folder: Path, tiny: Tiny, data: Canonical, sections: dict[str, dict[str, object]]
) -> Path:
    """Writes ``folder/job.toml``: the tiny model (transformers engine, adapter a1) on ``data``;
    ``sections`` replace or add keys, e.g. ``{"scoring": {"batch_size": 3}}``."""
    settings: dict[str, dict[str, object]] = {
        "data": {"interactions": str(data.interactions), "items": str(data.items)},
        "model": {"path": str(tiny.model), "chat": "qwen", "dtype": "float32"},
        "prompts": {
            "tasks": ["tkr", "rp"],
            "domain": "movie",
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
        lines += [f"{key} = {toml_value(value)}" for key, value in values.items()]
    path = folder / "job.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def toml_value(value: object) -> str:
    """``value`` as a TOML value: JSON for scalars and lists, inline tables for dicts."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)


def committed_units(out: Path) -> int:
    """The units a run in progress has committed; none while a folder it renames (the extract's
    temporary one) vanishes under the glob."""
    try:
        return len(list(out.glob("_parts/*/[0-9]*.json")))
    except FileNotFoundError:
        return 0
