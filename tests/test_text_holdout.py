"""IR and TUI in evaluation mode (issue #14, item 7): each row's last shown review is held out of
the prompt and becomes the reference text, so BLEU and ROUGE are computed; where a text task has
no reference, ``evaluate`` says why instead of leaving the table silent."""

import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from helpers import Canonical, job_toml
from rich.console import Console
from test_evaluate import text_frame, write_run
from typer.testing import CliRunner

from itdr_batch.cli import app
from itdr_batch.dev.tiny import Tiny
from itdr_batch.evaluate import evaluate, render
from itdr_batch.prompts.build import PromptConfig, build_prompts
from itdr_batch.run.build import build_unit
from itdr_batch.run.config import load_config
from itdr_batch.run.extract import extract
from itdr_batch.run.plan import make_plan
from itdr_batch.tasks import Task

TITLES = ["Heat", "Ran", "Alien", "Brazil", "Fargo"]
# (user, item, timestamp, rating, review), in input order. User 1's reviews are out of time
# order; user 2's last two share a timestamp (the later in input order is the last); user 3 has
# one review. Item 4's only review is by a neutral rating, which IR does not show.
REVIEWS = [
    (1, 1, 10, 5.0, "loved the quiet ending"),
    (1, 2, 30, 1.0, "dull and slow"),
    (1, 3, 20, 4.0, "warm and funny"),
    (1, 4, 40, 3.0, "so so"),
    (1, 5, 50, 5.0, None),
    (2, 2, 5, 1.0, "too loud"),
    (2, 3, 70, 5.0, "first at seventy"),
    (2, 1, 70, 4.0, "second at seventy"),
    (3, 5, 1, 5.0, "the only one"),
]
USERS = [1, 2, 3]


def tables() -> tuple[pl.DataFrame, pl.DataFrame]:
    """Items (with TUI's attributes) and the interactions of ``REVIEWS``."""
    items = pl.DataFrame(
        {
            "item_id": list(range(1, len(TITLES) + 1)),
            "title": TITLES,
            "attributes": [json.dumps({"year": 1990 + i}) for i in range(len(TITLES))],
        }
    )
    columns = ["user_id", "item_id", "timestamp", "rating", "review"]
    interactions = pl.DataFrame(REVIEWS, schema=columns, orient="row")
    return items, interactions


def prompts(
    task: Task, rows: pl.DataFrame, interactions: pl.DataFrame, **config: Any
) -> dict[Any, dict[str, Any]]:
    items, _ = tables()
    built = build_prompts(rows, interactions, items, PromptConfig(task=task, **config))
    key = "item_id" if task is Task.TUI else "user_id"
    return {row[key]: row for row in built.iter_rows(named=True)}


def without(interactions: pl.DataFrame, review: str) -> pl.DataFrame:
    return interactions.filter(pl.col("review").ne_missing(review))


def test_ir_holds_out_the_last_shown_review() -> None:
    _, interactions = tables()
    rows = pl.DataFrame({"user_id": USERS})
    held = prompts(Task.IR, rows, interactions, evaluation=True)
    expected = {1: (2, "dull and slow"), 2: (1, "second at seventy"), 3: (5, "the only one")}
    for user, (item, review) in expected.items():
        assert (held[user]["held_out_item_id"], held[user]["held_out_text"]) == (item, review)
    # The prompt is the one the data without the held-out review gives outside evaluation runs:
    # the review left the liked or disliked list and the history.
    for user in (1, 2):
        review = expected[user][1]
        assert review not in held[user]["prompt"]
        plain = prompts(Task.IR, rows, without(interactions, review))
        assert held[user]["prompt"] == plain[user]["prompt"]
    assert "first at seventy" in held[2]["prompt"]
    # A user whose only shown review is held out has nothing left to show, as in ranking tasks.
    assert (held[3]["status"], held[3]["prompt"]) == ("empty_history", None)


def test_tui_holds_out_each_items_last_review() -> None:
    _, interactions = tables()
    rows = pl.DataFrame({"item_id": [1, 3, 4]})
    held = prompts(Task.TUI, rows, interactions, evaluation=True)
    assert held[1]["held_out_text"] == "second at seventy"
    assert held[3]["held_out_text"] == "first at seventy"
    assert [held[i]["held_out_item_id"] for i in (1, 3, 4)] == [1, 3, 4]
    for item in (1, 3):
        review = held[item]["held_out_text"]
        assert review not in held[item]["prompt"]
        plain = prompts(Task.TUI, rows, without(interactions, review))
        assert held[item]["prompt"] == plain[item]["prompt"]
    assert "warm and funny" in held[3]["prompt"]
    assert (held[4]["status"], held[4]["held_out_text"]) == ("empty_history", "so so")


def test_outside_evaluation_runs_every_review_is_shown() -> None:
    _, interactions = tables()
    ir = prompts(Task.IR, pl.DataFrame({"user_id": USERS}), interactions)
    tui = prompts(Task.TUI, pl.DataFrame({"item_id": [1]}), interactions)
    for review in ("dull and slow", "loved the quiet ending", "warm and funny"):
        assert review in ir[1]["prompt"]
    assert "second at seventy" in ir[2]["prompt"]
    assert ir[3]["status"] == "ok"
    assert "second at seventy" in tui[1]["prompt"]
    for built in (ir[1], tui[1]):
        assert not {"held_out_item_id", "held_out_text"} & set(built)


def write_job(folder: Path, task: str, **prompts: object) -> Path:
    """A job over ``tables()`` for plans and dry runs: no model is read."""
    items, interactions = tables()
    items.write_parquet(folder / "items.parquet")
    interactions.write_parquet(folder / "interactions.parquet")
    settings = {"tasks": [task], "history_len": 10} | prompts
    lines = [
        "[data]",
        f"interactions = {json.dumps(str(folder / 'interactions.parquet'))}",
        f"items = {json.dumps(str(folder / 'items.parquet'))}",
        "[model]",
        'path = "no-model"',
        "[prompts]",
        *(f"{key} = {json.dumps(value)}" for key, value in settings.items()),
    ]
    (folder / "job.toml").write_text("\n".join(lines) + "\n")
    return folder / "job.toml"


def truth(folder: Path, task: Task, rows: pl.DataFrame, **prompts: object) -> list[str | None]:
    config = load_config(write_job(folder, task.value, **prompts))
    rows.write_parquet(folder / "rows.parquet")
    plan = make_plan(config, folder / "rows.parquet", dry_run=True)
    with extract(plan, folder / "parts") as cut:
        history = cut.batch(0)
    return build_unit(plan, 0, task, history).prompts["truth"].to_list()


def test_job_truth_is_the_held_out_review(tmp_path: Path) -> None:
    users = pl.DataFrame({"user_id": USERS})
    assert truth(tmp_path, Task.IR, users, evaluation=True) == [
        "dull and slow",
        "second at seventy",
        "the only one",
    ]
    assert truth(tmp_path, Task.IR, users) == [None, None, None]
    items = pl.DataFrame({"item_id": [1, 3]})
    assert truth(tmp_path, Task.TUI, items, evaluation=True) == [
        "second at seventy",
        "first at seventy",
    ]


def test_a_shards_reference_column_wins(tmp_path: Path) -> None:
    """User-provided ground truth where the shard has it; the held-out review where it is null."""
    users = pl.DataFrame({"user_id": [1, 2], "reference": ["likes quiet dramas", None]})
    assert truth(tmp_path, Task.IR, users, evaluation=True) == [
        "likes quiet dramas",
        "second at seventy",
    ]


def test_evaluate_says_why_a_text_task_has_no_metrics(tmp_path: Path) -> None:
    """A run whose text rows have no reference (one made before reviews were held out)."""
    ir = text_frame(["a summary"], [None], "user_id")
    result = evaluate(write_run(tmp_path, {"ir": ir}))
    assert result["tasks"]["ir"]["base"]["metrics"]["model"] is None
    assert "ir: no BLEU/ROUGE, as no scored row has a reference text" in result["note"]
    console = Console(record=True, width=100)
    console.print(render(result))
    assert "ir: no BLEU/ROUGE" in " ".join(console.export_text().split())


def run_ir(cli: CliRunner, tiny: Tiny, folder: Path, users: list[int], evaluation: bool) -> Path:
    """The score job on ``tables()``: IR with the tiny model on transformers, adapter a1."""
    folder.mkdir()
    items, interactions = tables()
    data = Canonical(folder / "interactions.parquet", folder / "items.parquet", folder / "u.pq")
    items.write_parquet(data.items)
    interactions.write_parquet(data.interactions)
    pl.DataFrame({"user_id": users}).write_parquet(data.users)
    prompts = {"tasks": ["ir"], "evaluation": evaluation}
    job = job_toml(folder, tiny, data, {"prompts": prompts, "scoring": {"max_new_tokens": 8}})
    out = folder / "run"
    args = ["score", "--users", data.users, "--config", job, "--out", out]
    result = cli.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.slow
def test_evaluation_run_scores_ir_against_the_held_out_reviews(
    cli: CliRunner, tiny: Tiny, tmp_path: Path
) -> None:
    out = run_ir(cli, tiny, tmp_path / "eval", USERS, evaluation=True)
    labels = pl.read_parquet(out / "ir.parquet").sort("user_id")
    assert labels["label"].to_list() == ["dull and slow", "second at seventy"]
    result = cli.invoke(app, ["evaluate", str(out)])
    assert result.exit_code == 0, result.output
    group = json.loads((out / "evaluation.json").read_text())["tasks"]["ir"]["a1"]
    assert (group["users"], group["rejected"]) == (2, 1)
    assert set(group["metrics"]["model"]) == {"bleu", "rouge1", "rouge2", "rougeL"}
    assert "no BLEU/ROUGE" not in result.output
    # Every user's only review held out: nothing is scored, and the table says so.
    out = run_ir(cli, tiny, tmp_path / "single", [3], evaluation=True)
    result = cli.invoke(app, ["evaluate", str(out)])
    assert result.exit_code == 0, result.output
    assert "ir: no BLEU/ROUGE, as no row was scored (1 rejected" in " ".join(result.output.split())
    note = json.loads((out / "evaluation.json").read_text())["note"]
    assert "ir: no BLEU/ROUGE, as no row was scored" in note
    # Outside evaluation runs nothing is held out, and evaluate says there is nothing to score.
    out = run_ir(cli, tiny, tmp_path / "plain", USERS, evaluation=False)
    assert pl.read_parquet(out / "ir.parquet")["label"].null_count() == len(USERS)
    result = cli.invoke(app, ["evaluate", str(out)])
    assert result.exit_code == 2
    assert "not an evaluation-mode run" in " ".join(result.output.split())
