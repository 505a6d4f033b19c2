"""Domain words: from prompts.domain, else the items' single `domain` value, else the default
(movie) with one WARNING; and `ingest ... --domain` writes the items' `domain` column."""

import logging
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from itdr_batch.cli import app
from itdr_batch.run import load_config, run_job
from itdr_batch.run.manifest import Manifest
from itdr_batch.run.plan import resolve_domain

GAME_WORDS = "Given a user's game playing records"
MOVIE_WORDS = "Given a user's movie watching records"


def write_tables(folder: Path, domain: str | None) -> tuple[Path, Path, Path]:
    """Three users' histories over eight items, the items tagged with ``domain`` if given."""
    items = pl.DataFrame({"item_id": list(range(8)), "title": [f"Title {i}" for i in range(8)]})
    if domain is not None:
        items = items.with_columns(domain=pl.lit(domain))
    interactions = pl.DataFrame(
        {
            "user_id": [u for u in range(3) for _ in range(4)],
            "item_id": [(u + i) % 8 for u in range(3) for i in range(4)],
            "timestamp": list(range(12)),
            "rating": [4.0] * 12,
        }
    )
    paths = folder / "items.parquet", folder / "interactions.parquet", folder / "users.parquet"
    items.write_parquet(paths[0])
    interactions.write_parquet(paths[1])
    pl.DataFrame({"user_id": [0, 1, 2]}).write_parquet(paths[2])
    return paths


def dry_run(
    folder: Path, domain: str | None, out: str = "out", **overrides: object
) -> tuple[Manifest, list[str]]:
    items, interactions, users = write_tables(folder, domain)
    settings = {
        "data.items": str(items),
        "data.interactions": str(interactions),
        "prompts.tasks": ["tkr"],
        "model.chat": "raw",
    }
    config = load_config(None, settings | overrides)
    result = run_job(config, users, folder / out, dry_run=True)
    prompts = pl.read_parquet(result.out / result.manifest.files["tkr"])["prompt"].to_list()
    return result.manifest, prompts


def test_items_domain_gives_the_words(tmp_path: Path) -> None:
    manifest, prompts = dry_run(tmp_path, "game")
    assert all(p.startswith(GAME_WORDS) for p in prompts), prompts[0]
    assert manifest.domain == "game"
    assert manifest.config.prompts.domain == "game"


def test_no_domain_is_movie_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        manifest, prompts = dry_run(tmp_path, None)
    assert all(p.startswith(MOVIE_WORDS) for p in prompts)
    assert manifest.domain == "movie"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "no domain column" in warnings[0]
    assert "(movie)" in warnings[0]


def test_configured_domain_wins(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        manifest, prompts = dry_run(tmp_path, "game", **{"prompts.domain": "book"})
    assert all(p.startswith("Given a user's book reading records") for p in prompts)
    assert manifest.domain == "book"
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


def test_resolved_default_keeps_the_run_id(tmp_path: Path) -> None:
    """A job that omits the domain, on items without one, is the run it was when the default was
    written into the configuration."""
    implicit, _ = dry_run(tmp_path, None, "implicit")
    explicit, _ = dry_run(tmp_path, None, "explicit", **{"prompts.domain": "movie"})
    assert implicit.config_hash == explicit.config_hash
    assert implicit.run_id == explicit.run_id


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (["Books"], "book"),
        (["Video_Games"], "game"),
        (["short videos"], "short_video"),
        (["Electronics"], "movie"),
        (["book", "movie"], "movie"),
        ([None, "anime"], "anime"),
    ],
)
def test_spellings(values: list[str | None], expected: str) -> None:
    items = pl.DataFrame({"item_id": list(range(len(values))), "domain": values})
    assert resolve_domain(items, None) == expected


def test_prompts_command_uses_the_items_domain(tmp_path: Path) -> None:
    items, interactions, _ = write_tables(tmp_path, "game")
    args = ["prompts", "--task", "tkr", "--items", str(items), "--interactions", str(interactions)]
    result = CliRunner().invoke(app, [*args, "-n", "1"])
    assert result.exit_code == 0, result.output
    assert GAME_WORDS in result.output


def test_ingest_recbole_domain(tmp_path: Path) -> None:
    inter = tmp_path / "x.inter"
    inter.write_text("user_id:token\titem_id:token\ttimestamp:float\n1\t10\t1\n1\t11\t2\n")
    item = tmp_path / "x.item"
    item.write_text("item_id:token\ttitle:token_seq\n10\tPong\n11\tTetris\n")
    args = ["ingest", "recbole", "--inter", str(inter), "--item", str(item)]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "out"), "--domain", "game"])
    assert result.exit_code == 0, result.output
    assert "not a domain word" not in result.output
    items = pl.read_parquet(tmp_path / "out" / "items.parquet")
    assert items["domain"].to_list() == ["game", "game"]


def test_ingest_movielens_domain(tmp_path: Path) -> None:
    """The bundled sample; a free-text domain is kept, with a note in the summary."""
    for domain, note in (("movie", False), ("Films", True)):
        out = tmp_path / domain
        args = ["ingest", "movielens", "--out", str(out), "--domain", domain]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        assert ("not a domain word" in result.output) is note
        assert set(pl.read_parquet(out / "items.parquet")["domain"].to_list()) == {domain}
