"""MovieLens ingest on the real releases in ../shared/data, through the CLI."""

from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from itdr_batch.cli import app


def ingest(cli: CliRunner, src: Path, out: Path) -> str:
    result = cli.invoke(app, ["ingest", "movielens", str(src), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return result.output


def title_of(out: Path, item_id: int) -> str:
    items = pl.read_parquet(out / "items.parquet")
    return str(items.filter(pl.col("item_id") == item_id)["title"].item())


def test_latest_small(cli: CliRunner, shared_data: Path, tmp_path: Path) -> None:
    output = ingest(cli, shared_data / "movielens-latest-small", tmp_path)
    interactions = pl.read_parquet(tmp_path / "interactions.parquet")
    items = pl.read_parquet(tmp_path / "items.parquet")
    assert interactions.height == 100_836
    assert interactions["user_id"].n_unique() == 610
    assert items.height == 9_742
    assert not (tmp_path / "users.parquet").exists()
    assert "users: 610  items: 9,742" in output
    assert "100,836" in output
    first = interactions.row(0, named=True)
    assert first == {"user_id": 1, "item_id": 1, "timestamp": 964982703, "rating": 4.0}
    toy_story = items.row(0, named=True)
    assert toy_story == {
        "item_id": 1,
        "title": "Toy Story (1995)",
        "genres": ["Adventure", "Animation", "Children", "Comedy", "Fantasy"],
    }
    # UTF-8 CSV with quoted titles and CRLF line endings.
    assert (
        title_of(tmp_path, 293) == "Léon: The Professional (a.k.a. The Professional) (Léon) (1994)"
    )
    assert title_of(tmp_path, 11) == "American President, The (1995)"
    no_genres = items.filter(pl.col("item_id") == 114335)  # "(no genres listed)"
    assert no_genres["genres"].to_list() == [[]]


def test_100k(cli: CliRunner, shared_data: Path, tmp_path: Path) -> None:
    output = ingest(cli, shared_data / "movielens-100k", tmp_path)
    interactions = pl.read_parquet(tmp_path / "interactions.parquet")
    users = pl.read_parquet(tmp_path / "users.parquet")
    assert interactions.height == 100_000
    assert interactions["user_id"].n_unique() == 943
    assert pl.read_parquet(tmp_path / "items.parquet").height == 1_682
    assert users.height == 943
    assert "users: 943  items: 1,682" in output
    # latin-1 titles decoded.
    assert title_of(tmp_path, 543) == "Misérables, Les (1995)"
    assert title_of(tmp_path, 1633) == "Á köldum klaka (Cold Fever) (1994)"
    assert title_of(tmp_path, 1104) == "C'est arrivé près de chez vous (1992)"
    goldeneye = pl.read_parquet(tmp_path / "items.parquet").row(1, named=True)
    assert goldeneye["genres"] == ["Action", "Adventure", "Thriller"]
    assert users.row(0, named=True) == {
        "user_id": 1,
        "gender": "M",
        "age": 24,
        "age_group": "18-24",
        "occupation": "technician",
        "zip": "85711",
    }


def test_1m_items_and_users(cli: CliRunner, shared_data: Path, tmp_path: Path) -> None:
    output = ingest(cli, shared_data / "movielens-1m", tmp_path)
    items = pl.read_parquet(tmp_path / "items.parquet")
    users = pl.read_parquet(tmp_path / "users.parquet")
    assert items.height == 3_883
    assert users.height == 6_040
    # The shared copy has no ratings.dat: said plainly, and no interactions file is written.
    assert "ratings.dat not found" in output
    assert not (tmp_path / "interactions.parquet").exists()
    assert title_of(tmp_path, 73) == "Misérables, Les (1995)"
    assert title_of(tmp_path, 570) == "Slingshot, The (Kådisbellan ) (1993)"
    assert items.row(0, named=True)["genres"] == ["Animation", "Children's", "Comedy"]
    assert users.row(0, named=True) == {
        "user_id": 1,
        "gender": "F",
        "age": 1,
        "age_group": "Under 18",
        "occupation": "K-12 student",
        "zip": "48067",
    }
    assert users["occupation"].null_count() == 0
    assert users["age_group"].null_count() == 0


def test_not_a_movielens_folder(cli: CliRunner, tmp_path: Path) -> None:
    result = cli.invoke(app, ["ingest", "movielens", str(tmp_path), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert f"{tmp_path}: not a MovieLens folder" in result.output
    assert "ml-100k: u.item (+ u.data)" in result.output
    assert not (tmp_path / "o").exists()


def test_malformed_ratings_fail_before_any_output(cli: CliRunner, tmp_path: Path) -> None:
    (tmp_path / "u.item").write_bytes(b"1|Toy Story (1995)|01-Jan-1995||url" + b"|0" * 19 + b"\n")
    (tmp_path / "u.genre").write_text("".join(f"g{i}|{i}\n" for i in range(19)))
    (tmp_path / "u.data").write_text("1\t1\t5\t881250949\n2\t1\tfive\t881250950\n")
    out = tmp_path / "out"
    result = cli.invoke(app, ["ingest", "movielens", str(tmp_path), "--out", str(out)])
    assert result.exit_code == 2
    assert f"{tmp_path / 'u.data'}: cannot be parsed" in result.output
    assert not out.exists()


@pytest.mark.parametrize("table", ["items", "interactions"])
def test_outputs_are_valid_canonical_tables(
    cli: CliRunner, shared_data: Path, tmp_path: Path, table: str
) -> None:
    from itdr_batch.tables.load import load_interactions, load_items

    ingest(cli, shared_data / "movielens-100k", tmp_path)
    items = load_items(tmp_path / "items.parquet")
    loaded = (
        items if table == "items" else load_interactions(tmp_path / "interactions.parquet", items)
    )
    assert loaded.frame.collect().height > 0
