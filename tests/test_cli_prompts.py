"""`itdr-batch prompts` and `itdr-batch bench prompts`, through the CLI."""

import json
from pathlib import Path

import polars as pl
from typer.testing import CliRunner

from itdr_batch.cli import app


def ingest_sample(cli: CliRunner, out: Path) -> None:
    result = cli.invoke(app, ["ingest", "movielens", "--out", str(out)])
    assert result.exit_code == 0, result.output


def test_prompts_prints_the_first_prompts(cli: CliRunner, tmp_path: Path) -> None:
    ingest_sample(cli, tmp_path)
    args = ["prompts", "--task", "nir", "--interactions", str(tmp_path / "interactions.parquet")]
    args += ["--items", str(tmp_path / "items.parquet"), "-n", "2", "--field", "category=genres"]
    result = cli.invoke(app, [*args, "--evaluation", "--candidates", "5"])
    assert result.exit_code == 0, result.output
    assert result.output.count("Given that a movie user has watched") == 2
    assert "user_id 1 " in result.output
    assert "held_out_position=" in result.output


def test_prompts_for_a_users_shard(cli: CliRunner, tmp_path: Path) -> None:
    ingest_sample(cli, tmp_path)
    pl.DataFrame({"user_id": [7, 99999]}).write_parquet(tmp_path / "shard.parquet")
    args = ["prompts", "--task", "uap", "--interactions", str(tmp_path / "interactions.parquet")]
    args += ["--items", str(tmp_path / "items.parquet"), "--users", str(tmp_path / "shard.parquet")]
    result = cli.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "user_id 7 " in result.output
    assert "status=empty_history" in result.output
    assert "(no prompt)" in result.output


def test_prompts_reports_configuration_errors(cli: CliRunner, tmp_path: Path) -> None:
    ingest_sample(cli, tmp_path)
    args = ["prompts", "--task", "nir", "--interactions", str(tmp_path / "interactions.parquet")]
    result = cli.invoke(
        app, [*args, "--items", str(tmp_path / "items.parquet"), "--field", "category=nope"]
    )
    assert result.exit_code == 2
    assert "template field {category} is not an items column" in result.output
    result = cli.invoke(app, [*args, "--items", str(tmp_path / "items.parquet"), "--field", "x"])
    assert result.exit_code == 2
    assert "expected FIELD=COLUMN, got 'x'" in result.output


def test_bench_prompts_writes_figures_for_identical_bytes(cli: CliRunner, tmp_path: Path) -> None:
    """A small run: the four implementations must agree byte for byte (no timing is asserted)."""
    out = tmp_path / "prompts.json"
    args = ["bench", "prompts", "--users", "3000", "--python-users", "1000"]
    result = cli.invoke(app, [*args, "--data", str(tmp_path / "none"), "--json", str(out)])
    assert result.exit_code == 0, result.output
    figures = json.loads(out.read_text())
    assert figures["byte_identical"] == {"python": True, "polars": True}
    assert set(figures["prompts_per_s"]) == {"rust", "python", "polars", "floor"}
    assert figures["candidates_per_s"] > 0
    assert figures["users"] == 3000
    assert "replicating the bundled sample" in result.output
