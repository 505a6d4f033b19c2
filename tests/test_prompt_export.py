"""Prompt export: ``score --dry-run --format jsonl`` writes OpenAI batch requests, one per dry-run
prompt, that vLLM's own batch runner reads; the Parquet output stays what a dry run writes."""

import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from helpers import Canonical, toml_value
from typer.testing import CliRunner, Result

from itdr_batch.cli import app
from itdr_batch.prompts.chat import QWEN_SYSTEM
from itdr_batch.run.export import PLACEHOLDER_MODEL, ExportError, export_requests
from itdr_batch.tasks import spec

TASKS = ("tkr", "rp", "uap")
MODEL = "Qwen2.5-7B-Instruct"


def score(*args: str | Path) -> Result:
    return CliRunner().invoke(app, ["score", *map(str, args)])


def dry_job(folder: Path, data: Canonical) -> Path:
    """A job without a model: what a team scoring elsewhere writes."""
    settings: dict[str, dict[str, object]] = {
        "data": {"interactions": str(data.interactions), "items": str(data.items)},
        "prompts": {"tasks": list(TASKS), "domain": "movie", "evaluation": True},
        "scoring": {"batch_size": 5},
    }
    lines = [
        f"[{name}]\n" + "\n".join(f"{k} = {toml_value(v)}" for k, v in values.items())
        for name, values in settings.items()
    ]
    path = folder / "job.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def dry_run(job: Path, users: Path, out: Path, *args: str) -> Path:
    result = score("--users", users, "--config", job, "--out", out, "--dry-run", *args)
    assert result.exit_code == 0, result.output
    return out


def said(result: Result) -> str:
    """The output's words, without the lines and frame of Typer's error box."""
    return " ".join(result.output.replace("│", " ").split())


def requests(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def job(movielens: Canonical, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return dry_job(tmp_path_factory.mktemp("export"), movielens)


@pytest.fixture(scope="module")
def raw(job: Path, movielens: Canonical) -> dict[str, list[str]]:
    """Each task's prompts in the raw chat format: the user turn alone."""
    out = dry_run(job, movielens.users, job.parent / "raw", "--set", 'model.chat="raw"')
    return {task: pl.read_parquet(out / f"{task}.parquet")["prompt"].to_list() for task in TASKS}


def test_every_request_is_a_vllm_batch_line_for_a_dry_run_prompt(
    job: Path, movielens: Canonical, raw: dict[str, list[str]], tmp_path: Path
) -> None:
    from vllm.entrypoints.launchers.run_batch import BatchRequestInput

    out = dry_run(job, movielens.users, tmp_path / "run", "--format", "jsonl", "--model", MODEL)
    manifest = json.loads((out / "_manifest.json").read_text())
    for task in TASKS:
        assert manifest["files"][f"{task}.jsonl"] == f"{task}.jsonl"
        prompts = pl.read_parquet(out / f"{task}.parquet")
        lines = (out / f"{task}.jsonl").read_text().splitlines()
        assert len(lines) == prompts.height > 0
        for line in lines:
            request = BatchRequestInput.model_validate_json(line)
            # vLLM keeps unknown fields (and ignores them): a misspelt one would pass unseen.
            assert (request.model_extra, request.body.model_extra) == ({}, {}), line
            assert (request.method, request.url) == ("POST", "/v1/chat/completions")
        bodies = [r["body"] for r in requests(out / f"{task}.jsonl")]
        ids = [r["custom_id"] for r in requests(out / f"{task}.jsonl")]
        assert len(set(ids)) == len(ids)
        users = prompts["user_id"].to_list()
        assert [i.split("/", 2) for i in ids] == [[manifest["run_id"], task, str(u)] for u in users]
        assert [b["messages"] for b in bodies] == [
            [{"role": "system", "content": QWEN_SYSTEM}, {"role": "user", "content": p}]
            for p in raw[task]
        ]
        rules = spec(task)
        widths = prompts["candidates"].list.len() if rules.ranking else [0] * prompts.height
        assert [b["max_tokens"] for b in bodies] == [rules.max_new_tokens(n) for n in widths]
        assert {(b["model"], b["temperature"]) for b in bodies} == {(MODEL, 0)}


def test_parquet_output_is_unchanged_and_a_complete_dry_run_can_be_exported(
    job: Path, movielens: Canonical, tmp_path: Path
) -> None:
    plain = dry_run(job, movielens.users, tmp_path / "plain")
    exported = dry_run(job, movielens.users, tmp_path / "jsonl", "--format", "jsonl")
    for name in [*(f"{task}.parquet" for task in TASKS), "rejects.parquet"]:
        assert (plain / name).read_bytes() == (exported / name).read_bytes(), name
    assert not list(plain.glob("*.jsonl"))
    # The same command with --format jsonl on the complete run adds the requests.
    again = dry_run(job, movielens.users, plain, "--format", "jsonl")
    manifest = json.loads((again / "_manifest.json").read_text())
    for task in TASKS:
        assert (plain / f"{task}.jsonl").read_bytes() == (exported / f"{task}.jsonl").read_bytes()
        assert manifest["files"][f"{task}.jsonl"] == f"{task}.jsonl"
    assert {r["body"]["model"] for r in requests(plain / "tkr.jsonl")} == {PLACEHOLDER_MODEL}


def test_a_format_without_system_text_sends_the_user_turn_alone(
    job: Path, movielens: Canonical, raw: dict[str, list[str]], tmp_path: Path
) -> None:
    out = dry_run(
        job, movielens.users, tmp_path / "run", "--format", "jsonl", "--set", 'model.chat="glm4"'
    )
    messages = [r["body"]["messages"] for r in requests(out / "tkr.jsonl")]
    assert messages == [[{"role": "user", "content": p}] for p in raw["tkr"]]


def test_format_errors_exit_2_before_any_output(movielens: Canonical, tmp_path: Path) -> None:
    job, out = dry_job(tmp_path, movielens), tmp_path / "run"
    common: list[str | Path] = ["--users", movielens.users, "--config", job, "--out", out]
    result = score(*common, "--dry-run", "--format", "csv")
    assert result.exit_code == 2
    assert "'csv' is not one of 'parquet', 'jsonl'" in said(result)
    result = score(*common, "--format", "jsonl")
    assert result.exit_code == 2
    assert "--format: only a --dry-run writes prompts" in said(result)
    assert not out.exists()
    with pytest.raises(ExportError, match="holds no complete dry run"):
        export_requests(out)
