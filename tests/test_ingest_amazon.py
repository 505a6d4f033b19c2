"""Amazon Review Data (2018) ingest on small files in the public files' exact line formats."""

import gzip
import json
from pathlib import Path

import polars as pl
from typer.testing import CliRunner

from itdr_batch.cli import app

REVIEWS = [
    {
        "overall": 5.0,
        "verified": True,
        "reviewTime": "09 4, 2015",
        "reviewerID": "A1",
        "asin": "B001",
        "reviewerName": "Ann",
        "reviewText": "Loved it",
        "summary": "Five Stars",
        "unixReviewTime": 1441324800,
    },
    {
        "overall": 2.0,
        "reviewerID": "A1",
        "asin": "B002",
        "reviewText": "Meh",
        "summary": "Two",
        "unixReviewTime": 1441411200,
    },
    {
        "overall": 4.0,
        "reviewerID": "A2",
        "asin": "B003",
        "summary": "untitled item",
        "unixReviewTime": 1441411300,
    },
    {
        "overall": 3.0,
        "reviewerID": "A2",
        "asin": "B999",
        "reviewText": "not in meta",
        "unixReviewTime": 1441411400,
    },
    {"overall": 3.0, "reviewerID": "A3", "asin": "B001", "reviewText": "no time"},
]
# Python dict literals, as some public metadata files hold them.
META_LINES = [
    "{'asin': 'B001', 'title': 'Caf&eacute; Beans &amp; Co', 'category': ['Grocery', 'Coffee'],"
    " 'brand': 'Acme', 'description': ['Dark roast.', ' Whole bean. '], 'price': '$9.99'}",
    json.dumps(
        {"asin": "B002", "title": "Tea \u00e0 la carte", "category": [], "main_cat": "Grocery"}
    ),
    "{'asin': 'B003', 'title': '', 'category': ['Grocery']}",
    "{'asin': 'B001', 'title': 'Duplicate of B001'}",
    "{'title': 'no asin at all'}",
]


def write_files(folder: Path, *, gz: bool) -> tuple[Path, Path]:
    reviews = folder / ("reviews.json.gz" if gz else "reviews.json")
    meta = folder / ("meta.json.gz" if gz else "meta.json")
    opener = gzip.open if gz else open
    with opener(reviews, "wt", encoding="utf-8") as f:
        f.write("\n".join(json.dumps(r) for r in REVIEWS) + "\n")
    with opener(meta, "wt", encoding="utf-8") as f:
        f.write("\n".join(META_LINES) + "\n\n")
    return reviews, meta


def run(cli: CliRunner, reviews: Path, meta: Path, out: Path, *extra: str) -> str:
    args = ["ingest", "amazon2018", "--reviews", str(reviews), "--meta", str(meta)]
    result = cli.invoke(app, [*args, "--out", str(out), *extra])
    assert result.exit_code == 0, result.output
    return result.output


def test_ingest_keeps_titled_items_and_their_reviews(cli: CliRunner, tmp_path: Path) -> None:
    reviews, meta = write_files(tmp_path, gz=False)
    output = run(cli, reviews, meta, tmp_path / "out", "--domain", "grocery")
    items = pl.read_parquet(tmp_path / "out" / "items.parquet")
    interactions = pl.read_parquet(tmp_path / "out" / "interactions.parquet")

    assert items.to_dicts() == [
        {
            "item_id": "B001",
            "title": "Café Beans & Co",
            "category": ["Grocery", "Coffee"],
            "attributes": json.dumps(
                {"brand": "Acme", "description": "Dark roast. Whole bean.", "price": "$9.99"}
            ),
            "domain": "grocery",
        },
        {
            "item_id": "B002",
            "title": "Tea à la carte",
            "category": [],
            "attributes": json.dumps({"main_cat": "Grocery"}),
            "domain": "grocery",
        },
    ]
    assert interactions.to_dicts() == [
        {
            "user_id": "A1",
            "item_id": "B001",
            "timestamp": 1441324800,
            "rating": 5.0,
            "review": "Loved it",
            "summary": "Five Stars",
        },
        {
            "user_id": "A1",
            "item_id": "B002",
            "timestamp": 1441411200,
            "rating": 2.0,
            "review": "Meh",
            "summary": "Two",
        },
    ]
    for reason in (
        "1 no title",
        "1 repeated item_id (first kept)",
        "1 no asin",
        "1 no unixReviewTime",
        "2 unknown item_id",
    ):
        assert reason in output
    assert "users: 1  items: 2" in output


def test_gzipped_files_give_the_same_tables(cli: CliRunner, tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    zipped = tmp_path / "gz"
    plain.mkdir()
    zipped.mkdir()
    run(cli, *write_files(plain, gz=False), plain / "out")
    run(cli, *write_files(zipped, gz=True), zipped / "out")
    for table in ("items", "interactions"):
        a = pl.read_parquet(plain / "out" / f"{table}.parquet")
        b = pl.read_parquet(zipped / "out" / f"{table}.parquet")
        assert a.equals(b)


def test_a_broken_line_is_named(cli: CliRunner, tmp_path: Path) -> None:
    reviews, meta = write_files(tmp_path, gz=False)
    with meta.open("a", encoding="utf-8") as f:
        f.write("{'asin': 'B004', 'title': \n")
    out = tmp_path / "out"
    result = cli.invoke(
        app,
        ["ingest", "amazon2018", "--reviews", str(reviews), "--meta", str(meta), "--out", str(out)],
    )
    assert result.exit_code == 2
    assert f"{meta}:7: neither a JSON object nor a Python dict literal" in result.output
    assert not out.exists()
