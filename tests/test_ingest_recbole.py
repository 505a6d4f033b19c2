"""RecBole atomic files: typed headers, plain interactions and sequence files."""

from pathlib import Path

import polars as pl
from typer.testing import CliRunner

from itdr_batch.cli import app

ITEMS = (
    "item_id:token\tmovie_title:token_seq\trelease_year:token\tgenre:token_seq\n"
    "242\tKolya\t1996\tComedy\n"
    "302\tL.A. Confidential\t1997\tCrime Film-Noir Mystery Thriller\n"
    "377\tHeavyweights\t1994\tChildren's Comedy\n"
    "51\t\t1994\tDrama\n"
)


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def run(cli: CliRunner, inter: Path, item: Path, out: Path) -> str:
    result = cli.invoke(
        app, ["ingest", "recbole", "--inter", str(inter), "--item", str(item), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    return result.output


def test_plain_interactions(cli: CliRunner, tmp_path: Path) -> None:
    inter = write(
        tmp_path,
        "ml.inter",
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        "196\t242\t3\t881250949\n"
        "186\t302\t3\t891717742.0\n"
        "22\t377\t1\t878887116\n"
        "22\t51\t2\t878887117\n",
    )
    output = run(cli, inter, write(tmp_path, "ml.item", ITEMS), tmp_path / "out")
    items = pl.read_parquet(tmp_path / "out" / "items.parquet")
    interactions = pl.read_parquet(tmp_path / "out" / "interactions.parquet")
    assert items.to_dicts() == [
        {"item_id": "242", "title": "Kolya", "release_year": "1996", "genres": ["Comedy"]},
        {
            "item_id": "302",
            "title": "L.A. Confidential",
            "release_year": "1997",
            "genres": ["Crime", "Film-Noir", "Mystery", "Thriller"],
        },
        {
            "item_id": "377",
            "title": "Heavyweights",
            "release_year": "1994",
            "genres": ["Children's", "Comedy"],
        },
    ]
    assert interactions.to_dicts() == [
        {"user_id": "196", "item_id": "242", "timestamp": 881250949, "rating": 3.0},
        {"user_id": "186", "item_id": "302", "timestamp": 891717742, "rating": 3.0},
        {"user_id": "22", "item_id": "377", "timestamp": 878887116, "rating": 1.0},
    ]
    assert "1 no title" in output
    assert "1 unknown item_id" in output


def test_sequences_expand_in_list_order(cli: CliRunner, tmp_path: Path) -> None:
    inter = write(
        tmp_path,
        "ml.train.inter",
        "user_id:token\titem_id_list:token_seq\titem_id:token\n"
        "1\t242\t302\n"
        "1\t242 302\t377\n"
        "2\t377 242\t302\n",
    )
    output = run(cli, inter, write(tmp_path, "ml.item", ITEMS), tmp_path / "out")
    interactions = pl.read_parquet(tmp_path / "out" / "interactions.parquet")
    assert interactions.rows() == [
        ("1", "242", 0),
        ("1", "302", 1),
        ("1", "377", 2),
        ("2", "377", 0),
        ("2", "242", 1),
        ("2", "302", 2),
    ]
    assert "1 superseded sequence (longest kept)" in output
    assert "users: 2  items: 3" in output


def test_plain_file_without_timestamps_uses_file_order(cli: CliRunner, tmp_path: Path) -> None:
    inter = write(tmp_path, "x.inter", "user_id:token\titem_id:token\nu\t302\nu\t242\n")
    run(cli, inter, write(tmp_path, "x.item", ITEMS), tmp_path / "out")
    interactions = pl.read_parquet(tmp_path / "out" / "interactions.parquet")
    assert interactions["timestamp"].to_list() == [0, 1]


def test_unknown_field_type_is_named(cli: CliRunner, tmp_path: Path) -> None:
    inter = write(tmp_path, "x.inter", "user_id:token\titem_id:tok\nu\t1\n")
    item = write(tmp_path, "x.item", ITEMS)
    result = cli.invoke(
        app, ["ingest", "recbole", "--inter", str(inter), "--item", str(item), "--out", "o"]
    )
    assert result.exit_code == 2
    assert f"{inter}: field 'item_id:tok' has type 'tok', expected one of token" in result.output


def test_item_file_needs_a_title(cli: CliRunner, tmp_path: Path) -> None:
    inter = write(tmp_path, "x.inter", "user_id:token\titem_id:token\nu\t1\n")
    item = write(tmp_path, "x.item", "item_id:token\tname:token_seq\n1\tx\n")
    result = cli.invoke(
        app, ["ingest", "recbole", "--inter", str(inter), "--item", str(item), "--out", "o"]
    )
    assert result.exit_code == 2
    assert f"{item}: an item file needs item_id and a title field" in result.output
