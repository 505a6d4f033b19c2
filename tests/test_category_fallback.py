"""Titles-only catalogues: NIR and UAP entries show without the category/genres they lack.

The fallback is visible (a warning, the run's manifest) and narrow: a mapped field, or any other
unknown template field, is still an error.
"""

import ast
import json
import logging
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from helpers import Canonical, WriteJob

from itdr_batch.errors import ItdrError
from itdr_batch.prompts.build import PromptConfig, PromptError, _warn_fallback, build_prompts
from itdr_batch.prompts.templates import TEMPLATES, ListSpec, TaskTemplate
from itdr_batch.run.config import load_config
from itdr_batch.run.job import run_job
from itdr_batch.tasks import Task

TITLES = ["Alien (1979)", "Heat (1995)", "Up (2009)", "Jaws (1975)", "Big (1988)"]
ITEMS = pl.DataFrame({"item_id": [1, 2, 3, 4, 5], "title": TITLES})
WATCHED = pl.DataFrame({"user_id": [7, 7, 7], "item_id": [1, 2, 3], "timestamp": [10, 20, 30]})
ROWS = pl.DataFrame({"user_id": [7], "candidates": [[4, 5]]})


def prompts(items: pl.DataFrame, **config: Any) -> pl.DataFrame:
    return build_prompts(ROWS, WATCHED, items, PromptConfig(**config))


def test_nir_without_category_shows_titles_alone() -> None:
    out = prompts(ITEMS, task=Task.NIR, candidates=2)
    assert out["candidates"].to_list() == [[4, 5]]
    assert out["prompt"].item() == (
        TEMPLATES[Task.NIR].description + "\n"
        "Given that a movie user has watched the following movies in chronological order: "
        "['1.Alien (1979)', '2.Heat (1995)', '3.Up (2009)'], please select the next movie the "
        "user is most likely to watch from the candidate list: ['Jaws (1975)', 'Big (1988)']"
    )


def test_uap_without_genres_shows_titles_alone() -> None:
    out = prompts(ITEMS, task=Task.UAP)
    assert out["prompt"].item() == (
        TEMPLATES[Task.UAP].description + "\n"
        "The user's movie preferences are as follows:\n"
        "He/She likes watching Alien (1979), Heat (1995), Up (2009).\n"
        "Based on the user's movie preferences, predict his/her age group, gender, and "
        "occupation."
    )


def test_the_fallback_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    _warn_fallback.cache_clear()
    with caplog.at_level(logging.WARNING, "itdr_batch.prompts.build"):
        for _ in range(3):
            prompts(ITEMS, task=Task.NIR, candidates=2)
    assert [r.getMessage() for r in caplog.records] == [
        "task nir: items have no 'category' column; its entries show without {category}"
    ]


@pytest.fixture(scope="module")
def titles_only(movielens: Canonical, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The MovieLens sample's items with the genres column dropped: ``item_id, title``."""
    path = tmp_path_factory.mktemp("titles") / "items.parquet"
    pl.read_parquet(movielens.items).drop("genres").write_parquet(path)
    return path


def test_movielens_titles_only(movielens: Canonical, titles_only: Path) -> None:
    items = pl.read_parquet(titles_only)
    assert items.columns == ["item_id", "title"]
    full = pl.read_parquet(movielens.items)
    inter = pl.read_parquet(movielens.interactions)
    rows = pl.read_parquet(movielens.users).head(3)
    nir = build_prompts(rows, inter, items, PromptConfig(Task.NIR, history_len=5, evaluation=True))
    assert nir["status"].to_list() == ["ok"] * 3
    for prompt, titles in nir.select("prompt", "candidate_titles").iter_rows():
        head, candidates = prompt.rsplit(" from the candidate list: ", 1)
        history = head.split(" in chronological order: ", 1)[1].rsplit(", please select", 1)[0]
        entries = [e.split(".", 1) for e in ast.literal_eval(history)]
        assert [number for number, _ in entries] == ["1", "2", "3", "4", "5"]
        assert {title for _, title in entries} <= set(items["title"])
        assert ast.literal_eval(candidates) == titles
    # UAP: the prompt with genres, less each entry's `: genres`.
    config = PromptConfig(Task.UAP, history_len=5)
    bare = build_prompts(rows, inter, items, config)["prompt"].to_list()
    with_genres = build_prompts(rows, inter, full, config)["prompt"].to_list()
    expected = with_genres
    for title, genres in full.select("title", pl.col("genres").list.join("|")).iter_rows():
        expected = [p.replace(f"{title}: {genres}", title) for p in expected]
    assert bare == expected
    assert bare != with_genres


def test_dry_run_records_the_fallback(
    write_job: WriteJob, titles_only: Path, movielens: Canonical, tmp_path: Path
) -> None:
    job = write_job(
        tmp_path,
        data={"items": str(titles_only)},
        prompts={"tasks": ["nir", "uap", "tkr"], "item_fields": {}},
    )
    out = tmp_path / "out"
    run_job(load_config(job), movielens.users, out, dry_run=True)
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["prompt_fallbacks"] == {"nir": ["category"], "uap": ["genres"]}
    nir = pl.read_parquet(out / "nir.parquet")
    assert nir["prompt"].is_not_null().all()
    assert not nir["prompt"].str.contains(r"\d{4}\)':").any()


def test_a_run_with_the_column_records_no_fallback(
    write_job: WriteJob, movielens: Canonical, tmp_path: Path
) -> None:
    job = write_job(tmp_path, prompts={"tasks": ["nir", "uap"]})
    run_job(load_config(job), movielens.users, tmp_path / "out", dry_run=True)
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    assert manifest["prompt_fallbacks"] == {}


def test_a_mapped_field_stays_required(
    write_job: WriteJob, titles_only: Path, movielens: Canonical, tmp_path: Path
) -> None:
    with pytest.raises(PromptError, match=r"\{category\} is not an items column"):
        prompts(ITEMS, task=Task.NIR, candidates=2, item_fields={"category": "nope"})
    job = write_job(
        tmp_path,
        data={"items": str(titles_only)},
        prompts={"tasks": ["nir"], "item_fields": {"category": "nope"}},
    )
    with pytest.raises(ItdrError, match=r"\{category\} is not an items column"):
        run_job(load_config(job), movielens.users, tmp_path / "out", dry_run=True)
    assert not (tmp_path / "out").exists()


def test_a_template_typo_stays_an_error() -> None:
    typo = TaskTemplate(
        description="d",
        input="{history} {candidates}",
        lists={"history": ListSpec("{titel}", ", "), "candidates": ListSpec("{title}", ", ")},
    )
    with pytest.raises(PromptError, match=r"\{titel\} is not an items column"):
        prompts(ITEMS, task=Task.NIR, candidates=2, template=typo)
