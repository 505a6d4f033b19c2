"""The bundled sample: an exact, licensed subset of ml-latest-small, and the README's main job."""

import subprocess
import sys
from pathlib import Path

import polars as pl

from itdr_batch.datasets import SAMPLE


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().split(b"\r\n")


def test_sample_is_an_exact_subset_of_the_release(shared_data: Path) -> None:
    full = shared_data / "movielens-latest-small"
    ratings = lines(full / "ratings.csv")
    sample_ratings = lines(SAMPLE / "ratings.csv")
    assert sample_ratings == [ratings[0]] + [
        line for line in ratings[1:] if line and int(line.split(b",")[0]) <= 50
    ] + [b""]
    rated = {int(line.split(b",")[1]) for line in sample_ratings[1:] if line}
    movies = lines(full / "movies.csv")
    assert lines(SAMPLE / "movies.csv") == [movies[0]] + [
        line for line in movies[1:] if line and int(line.split(b",")[0]) in rated
    ] + [b""]
    # The license travels with the data, unchanged.
    assert (SAMPLE / "README.txt").read_bytes() == (full / "README.txt").read_bytes()


def test_readme_main_command_ingests_the_sample(tmp_path: Path) -> None:
    """`itdr-batch ingest movielens --out DIR`, as a user runs it: the installed console script."""
    script = Path(sys.executable).parent / "itdr-batch"
    result = subprocess.run(
        [str(script), "ingest", "movielens", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "users: 50  items: 2,892" in result.stdout
    interactions = pl.read_parquet(tmp_path / "interactions.parquet")
    assert interactions.height == 7_422
    assert interactions["user_id"].max() == 50
    assert "redistribut" in (SAMPLE / "README.txt").read_text()
