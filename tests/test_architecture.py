"""The single places rules live: the task table, the status vocabulary, the Rust boundary's types,
the manifest model and the one error class the CLI turns into exit status 2."""

import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from typer.testing import CliRunner

from itdr_batch import _core, cli
from itdr_batch.errors import ItdrError
from itdr_batch.nightly import transient
from itdr_batch.prompts.build import PromptConfig, build_prompts, prepare
from itdr_batch.prompts.templates import TEMPLATES
from itdr_batch.run import AccountingError, EngineCrashed, Manifest, ManifestError
from itdr_batch.run.manifest import read_record
from itdr_batch.scoring import Scored
from itdr_batch.status import PROMPT_STATUS, PromptStatus, ScoreStatus
from itdr_batch.tasks import TASKS, Mode, Task, spec


def test_every_task_has_its_rules_and_its_texts() -> None:
    assert set(TASKS) == set(Task) == set(TEMPLATES)
    for task, rules in TASKS.items():
        assert rules.task is task
        assert rules.default_mode in rules.modes
        assert Mode.GENERATE in rules.modes  # every task can be generated and parsed
        assert rules.generate_tokens > 0
        # Likelihood scores a written answer per candidate, or the rating scale.
        if Mode.LIKELIHOOD in rules.modes and rules.likelihood_answer is not None:
            assert "{title}" in rules.likelihood_answer
            assert rules.ranking
        # Ranking tasks show sampled candidates: their template has a candidates list.
        assert rules.ranking == ("candidates" in TEMPLATES[task].lists)


def test_prompt_statuses_come_from_rust_by_name() -> None:
    items = pl.DataFrame({"item_id": [1, 2, 3], "title": ["A", "B", "C"]})
    interactions = pl.DataFrame({"user_id": [10], "item_id": [1], "timestamp": [0]})
    users = pl.DataFrame({"user_id": [10, 11]})
    built = build_prompts(users, interactions, items, PromptConfig(task=Task.TKR, candidates=5))
    assert built["status"].dtype == PROMPT_STATUS
    assert built["status"].to_list() == [
        PromptStatus.TOO_FEW_CANDIDATES,
        PromptStatus.EMPTY_HISTORY,
    ]
    assert built["candidate_titles"].to_list() == [["B", "C"], []]


def test_rust_boundary_names_a_missing_or_wrong_key() -> None:
    items = pl.DataFrame({"item_id": [1, 2], "title": ["A", "B"]})
    interactions = pl.DataFrame({"user_id": [10], "item_id": [1], "timestamp": [0]})
    job = prepare(pl.DataFrame({"user_id": [10]}), interactions, items, PromptConfig(Task.TKR)).job
    broken: dict[str, Any] = {**job}
    del broken["slots"]
    with pytest.raises(KeyError, match="slots"):
        _core.build_prompts(broken)  # type: ignore[arg-type]
    wrong = {**job, "lists": [{**job["lists"][0], "source": "elsewhere"}]}
    with pytest.raises(ValueError, match='unknown list source "elsewhere"'):
        _core.build_prompts(wrong)  # type: ignore[arg-type]


def test_a_status_outside_the_vocabulary_fails_where_it_is_made() -> None:
    text: Any = "fuzzy"
    assert Scored(text).status is ScoreStatus.FUZZY
    with pytest.raises(ValueError, match="'fuzzyz' is not a valid ScoreStatus"):
        Scored(text + "z")


def test_unknown_modes_and_tasks_are_refused_by_the_table() -> None:
    with pytest.raises(ValueError, match="'lottery' is not a valid Task"):
        spec("lottery")
    assert spec("tui").key == "item_id"
    assert spec(Task.RP).max_new_tokens(10) == 8
    assert spec(Task.TKR).max_new_tokens(10) == 240


def test_a_foreign_manifest_names_its_problem(tmp_path: Path) -> None:
    path = tmp_path / "_manifest.json"
    path.write_text(json.dumps({"run_id": "x", "status": "complete"}))
    with pytest.raises(ManifestError, match=r"not a Manifest of this version: dry_run: Field"):
        read_record(path, Manifest)
    path.write_text("{")
    with pytest.raises(ManifestError, match="is not valid JSON"):
        read_record(path, Manifest)


def test_cli_turns_bad_input_into_exit_2_and_keeps_bugs_loud(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = CliRunner()
    users = tmp_path / "users.parquet"
    pl.DataFrame({"user_id": [1]}).write_parquet(users)
    missing = runner.invoke(cli.app, ["score", "--users", str(users), "--set", "seed=1"])
    assert missing.exit_code == 2
    assert "required key missing" in missing.output

    def bug(*_: object, **__: object) -> None:
        raise KeyError("an internal bug")

    monkeypatch.setattr(cli, "run_job", bug)
    config = tmp_path / "job.toml"
    config.write_text('[data]\ninteractions = "i"\nitems = "j"\n[model]\npath = "m"\n')
    crashed = runner.invoke(cli.app, ["score", "--users", str(users), "--config", str(config)])
    assert isinstance(crashed.exception, KeyError)
    assert crashed.exit_code == 1
    assert "error:" not in crashed.output


class _State:
    def __init__(self, error: BaseException) -> None:
        self.error = error

    def result(self) -> None:
        raise self.error


@pytest.mark.parametrize(
    ("error", "retried"),
    [
        (EngineCrashed("all requests failed"), True),
        (OSError("disk"), True),
        (ItdrError("bad input"), False),
        (AccountingError("1 + 1 != 3"), False),
        (RuntimeError("a bug"), False),
    ],
)
def test_nightly_retries_only_transient_failures(error: BaseException, retried: bool) -> None:
    assert transient(None, None, _State(error)) is retried
