"""Issue 14, "Tried as a new user would": a dry run without a model, HTML entities in every
ingest, a small empty rejects file, flags without a type in the help, RecBole's read counts."""

import csv
from pathlib import Path

import polars as pl
import pytest
from helpers import Canonical
from typer.testing import CliRunner

from itdr_batch.cli import app
from itdr_batch.run import load_config, run_job
from itdr_batch.run.config import ConfigError, JobConfig
from itdr_batch.run.plan import Ids
from itdr_batch.run.results import rejects_schema


def write_dry_job(folder: Path, data: Canonical, model: str) -> Path:
    """A TKR job on ``data`` whose ``[model]`` section holds ``model`` (TOML lines)."""
    path = folder / "job.toml"
    path.write_text(
        f'[data]\ninteractions = "{data.interactions}"\nitems = "{data.items}"\n'
        f'[prompts]\ntasks = ["tkr"]\nhistory_len = 3\ncandidates = 3\n{model}'
    )
    return path


def test_a_dry_run_needs_no_model(movielens: Canonical, tmp_path: Path) -> None:
    job = write_dry_job(tmp_path, movielens, "")
    out = tmp_path / "run"
    result = run_job(load_config(job), movielens.users, out, dry_run=True)
    prompts = pl.read_parquet(out / "tkr.parquet")["prompt"]
    assert result.manifest.dry_run
    assert prompts.len() > 0
    # No [model]: the default chat format (qwen).
    assert prompts[0].startswith("<|im_start|>system")


def test_a_dry_run_uses_the_chat_format_of_a_model_section_without_path(
    movielens: Canonical, tmp_path: Path
) -> None:
    job = write_dry_job(tmp_path, movielens, '[model]\nchat = "llama3"\n')
    run_job(load_config(job), movielens.users, tmp_path / "run", dry_run=True)
    prompt = pl.read_parquet(tmp_path / "run" / "tkr.parquet")["prompt"][0]
    assert prompt.startswith("<|begin_of_text|>")


def test_scoring_without_a_model_path_names_the_key(
    movielens: Canonical, tmp_path: Path, cli: CliRunner
) -> None:
    job = write_dry_job(tmp_path, movielens, "")
    out = tmp_path / "run"
    result = cli.invoke(
        app, ["score", "--users", str(movielens.users), "--config", str(job), "--out", str(out)]
    )
    assert result.exit_code == 2, result.output
    assert "model.path: required key missing (only a --dry-run runs without a model)" in (
        " ".join(result.output.split())
    )
    assert not out.exists()
    with pytest.raises(ConfigError, match=r"model\.path: required key missing"):
        load_config(job).engine_config()


def test_the_digest_of_an_existing_configuration_is_unchanged() -> None:
    config = JobConfig.model_validate(
        {
            "data": {"interactions": "/d/i.parquet", "items": "/d/items.parquet"},
            "model": {"path": "/m/qwen", "chat": "glm4"},
            "prompts": {"tasks": ["tkr", "rp"]},
        }
    )
    # The plan resolves an unset domain (here: items without one) before the run id is made.
    resolved = config.prompts.model_copy(update={"domain": "movie"})
    config = config.model_copy(update={"prompts": resolved})
    # The digest before [model] became optional (it names run folders: they must not move).
    assert config.digest() == "5447e723cbd89a118ac901839145024b1a6c6af05ce6271bc9841a044510ceb4"


def test_a_run_without_rejects_writes_a_small_rejects_file(
    movielens: Canonical, tmp_path: Path
) -> None:
    # One batch per user, 60 batches: each used to add an empty row group (~250 bytes).
    users = tmp_path / "users.parquet"
    interactions = pl.read_parquet(movielens.interactions)
    interactions.select(pl.col("user_id").unique().sort().head(60)).write_parquet(users)
    job = write_dry_job(tmp_path, movielens, "")
    out = tmp_path / "run"
    run_job(load_config(job, {"scoring.batch_size": 1}), users, out, dry_run=True)
    rejects = out / "rejects.parquet"
    assert pl.read_parquet(rejects).height == 0
    assert rejects.stat().st_size < 4_000
    ids = Ids("user_id", pl.Int64(), pl.Int64())
    assert pl.read_parquet(rejects).schema == rejects_schema(ids)


@pytest.mark.parametrize("command", [[], ["score"], ["ingest", "recbole"], ["prompts"]])
def test_flags_show_no_type_in_the_help(cli: CliRunner, command: list[str]) -> None:
    result = cli.invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "--help" in result.output
    assert "<bool>" not in result.output


def recbole_from_movielens(src: Path, folder: Path, entities: int) -> tuple[Path, Path]:
    """MovieLens latest-small as RecBole atomic files, ``&`` written as ``&amp;`` in the titles
    of the first ``entities`` movies that have one; no category column."""
    item = folder / "ml.item"
    with (src / "movies.csv").open(newline="", encoding="utf-8") as movies:
        rows = list(csv.reader(movies))[1:]
    lines = ["item_id:token\tmovie_title:token_seq"]
    encoded = 0
    for movie_id, title, _genres in rows:
        if "&" in title and encoded < entities:
            title, encoded = title.replace("&", "&amp;"), encoded + 1
        lines.append(f"{movie_id}\t{title}")
    item.write_text("\n".join(lines) + "\n", encoding="utf-8")
    ratings = pl.read_csv(src / "ratings.csv").head(2_000)
    inter = folder / "ml.inter"
    ratings.select(
        pl.col("userId").alias("user_id:token"),
        pl.col("movieId").alias("item_id:token"),
        pl.col("rating").alias("rating:float"),
        pl.col("timestamp").alias("timestamp:float"),
    ).write_csv(inter, separator="\t")
    assert encoded == entities
    return inter, item


def test_recbole_titles_lose_their_html_entities(
    shared_data: Path, cli: CliRunner, tmp_path: Path
) -> None:
    inter, item = recbole_from_movielens(shared_data / "movielens-latest-small", tmp_path, 3)
    out = tmp_path / "out"
    result = cli.invoke(
        app, ["ingest", "recbole", "--inter", str(inter), "--item", str(item), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    titles = pl.read_parquet(out / "items.parquet")["title"]
    assert not titles.str.contains("&amp;", literal=True).any()
    assert titles.str.contains(" & ", literal=True).sum() >= 3
    assert "3 titles had HTML entities, decoded" in " ".join(result.output.split())


def test_movielens_titles_lose_their_html_entities(
    shared_data: Path, cli: CliRunner, tmp_path: Path
) -> None:
    src = tmp_path / "ml"
    src.mkdir()
    movies = (shared_data / "movielens-latest-small" / "movies.csv").read_text(encoding="utf-8")
    (src / "movies.csv").write_text(movies.replace(" & ", " &amp; ", 2), encoding="utf-8")
    out = tmp_path / "out"
    result = cli.invoke(app, ["ingest", "movielens", str(src), "--out", str(out)])
    assert result.exit_code == 0, result.output
    titles = pl.read_parquet(out / "items.parquet")["title"]
    assert not titles.str.contains("&amp;", literal=True).any()
    assert "2 titles had HTML entities, decoded" in " ".join(result.output.split())


def test_recbole_sequences_count_rows_read_and_interactions_expanded(
    cli: CliRunner, tmp_path: Path
) -> None:
    inter = tmp_path / "seq.inter"
    inter.write_text(
        "user_id:token\titem_id_list:token_seq\titem_id:token\nu1\t1\t2\nu1\t1 2\t3\nu2\t1 2 3\t4\n"
    )
    item = tmp_path / "seq.item"
    item.write_text("item_id:token\ttitle:token\n1\tA\n2\tB\n3\tC\n4\tD\n")
    args = ["ingest", "recbole", "--inter", str(inter), "--item", str(item)]
    result = cli.invoke(app, [*args, "--out", str(tmp_path / "out")], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())
    assert "3 sequence rows read, expanded into 7 interactions" in output


def test_score_help_names_the_configuration_keys(cli: CliRunner) -> None:
    """Rich reads `[model.path]` as markup unless escaped; the keys must show."""
    result = cli.invoke(app, ["score", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for key in ("[output.dir]", "[model.path]", "[data.items]", "[scoring.batch_size]", "[seed]"):
        assert key in result.output
