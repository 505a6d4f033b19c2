"""Golden tests: each of ITDR's seven published instances, rebuilt from its structured parts.

The expected text is the instance's Task Description, a newline, and its Input, as transcribed in
shared/data/itdr-samples (read PROVENANCE.md there). Where the transcription cannot show a byte,
the choice is stated next to the test.
"""

import json
import re
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from itdr_batch.prompts.build import PromptConfig, build_prompts
from itdr_batch.tasks import Task


@pytest.fixture(scope="module")
def instances(shared_data: Path) -> dict[str, dict[str, Any]]:
    path = shared_data / "itdr-samples" / "figure_examples_transcribed.json"
    return {e["abbrev"]: e for e in json.loads(path.read_text())["examples"]}


def expected(instance: dict[str, Any]) -> str:
    return f"{instance['task_description']}\n{instance['input']}"


def catalogue(titles: list[str], **columns: list[Any]) -> pl.DataFrame:
    return pl.DataFrame({"item_id": list(range(len(titles))), "title": titles, **columns})


def history(user: int, item_ids: list[int], **columns: list[Any]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "user_id": [user] * len(item_ids),
            "item_id": item_ids,
            "timestamp": list(range(len(item_ids))),
            **columns,
        }
    )


def numbered(block: str) -> list[str]:
    """The titles of a `1. title` list, one per line."""
    return [re.sub(r"^\d+\. ", "", line) for line in block.split("\n")]


def only_prompt(rows: pl.DataFrame, items: pl.DataFrame, inter: pl.DataFrame, **config: Any) -> str:
    out = build_prompts(rows, inter, items, PromptConfig(**config))
    assert out["status"].to_list() == ["ok"]
    return str(out["prompt"].item())


def test_rp(instances: dict[str, dict[str, Any]]) -> None:
    instance = instances["RP"]
    rated = re.search(r"ratings: (.*)\. Predict his rating for (.*)\.$", instance["input"])
    assert rated is not None
    pairs = re.findall(r"(.+?) \((\d+)\)(?:, |$)", rated.group(1))
    titles = [title for title, _ in pairs] + [rated.group(2)]
    items = catalogue(titles)
    inter = history(1, list(range(len(pairs))), rating=[float(r) for _, r in pairs])
    rows = pl.DataFrame({"user_id": [1], "target_item_id": [len(pairs)]})
    prompt = only_prompt(rows, items, inter, task=Task.RP, domain="anime")
    assert prompt == expected(instance)


def test_tkr(instances: dict[str, dict[str, Any]]) -> None:
    instance = instances["TKR"]
    watched, candidates = re.search(
        r"as follows:\n(.*)\nBased on.*\nCandidate list:\n(.*)$", instance["input"], re.S
    ).groups()  # type: ignore[union-attr]
    seen, offered = numbered(watched), numbered(candidates)
    items = catalogue(seen + offered)
    inter = history(1, list(range(len(seen))))
    rows = pl.DataFrame({"user_id": [1], "candidates": [list(range(len(seen), len(seen) + 10))]})
    prompt = only_prompt(rows, items, inter, task=Task.TKR, domain="short_video")
    assert prompt == expected(instance)


def test_cdr(instances: dict[str, dict[str, Any]]) -> None:
    # Choice: the "," after the beauty list and the "." after the fashion and candidate lists
    # belong to the template (the output's copy of the last candidate has no period).
    instance = instances["CDR"]
    source, target, candidates = re.search(
        r"as follows:\n(.*),\nand in the fashion domain is as follows: (.*)\.\nBased on.*"
        r"Product list:\n(.*)\.$",
        instance["input"],
        re.S,
    ).groups()  # type: ignore[union-attr]
    beauty, fashion, offered = numbered(source), numbered(target), numbered(candidates)
    titles = beauty + fashion + offered
    domains = ["beauty"] * len(beauty) + ["fashion"] * (len(fashion) + len(offered))
    items = catalogue(titles, domain=domains)
    inter = history(1, list(range(len(beauty) + len(fashion))))
    first = len(beauty) + len(fashion)
    rows = pl.DataFrame({"user_id": [1], "candidates": [list(range(first, first + 10))]})
    prompt = only_prompt(
        rows,
        items,
        inter,
        task=Task.CDR,
        domain="product",
        source_domain="beauty",
        target_domain="fashion",
    )
    assert prompt == expected(instance)


def test_nir(instances: dict[str, dict[str, Any]]) -> None:
    # Choice: lists are written as Python writes them, so the candidate holding an apostrophe
    # ("Let's go! ...") is double-quoted; the transcription shows single quotes, which the
    # figure cannot tell apart (PROVENANCE.md).
    instance = instances["NIR"]
    watched, offered = re.findall(r"\[(.*?)\]", instance["input"])
    seen = [re.sub(r"^'\d+\.|'$", "", e) for e in watched.split("', ")]
    candidates = [e.strip("'") for e in offered.split("', '")]
    parts = [e.rsplit(":", 1) for e in seen + candidates]
    items = catalogue([t for t, _ in parts], category=[c for _, c in parts])
    inter = history(1, list(range(len(seen))))
    rows = pl.DataFrame({"user_id": [1], "candidates": [list(range(len(seen), len(parts)))]})
    prompt = only_prompt(
        rows, items, inter, task=Task.NIR, domain="short_video", candidates=len(candidates)
    )
    apostrophe = "'Let's go! # Bear-infested # quadratic nova:Anime'"
    assert prompt == expected(instance).replace(apostrophe, f'"{apostrophe[1:-1]}"')


def test_uap(instances: dict[str, dict[str, Any]]) -> None:
    instance = instances["UAP"]
    liked = re.search(r"He/She likes watching (.*)\.\n", instance["input"])
    assert liked is not None
    movies = re.findall(r"(.+? \(\d{4}\)): ([^,]+)(?:, |$)", liked.group(1))
    assert len(movies) == 20
    items = catalogue([t for t, _ in movies], genres=[g.split("|") for _, g in movies])
    inter = history(1, list(range(len(movies))))
    rows = pl.DataFrame({"user_id": [1]})
    prompt = only_prompt(rows, items, inter, task=Task.UAP, history_len=20)
    assert prompt == expected(instance)


def test_ir(instances: dict[str, dict[str, Any]]) -> None:
    instance = instances["IR"]
    liked, disliked = re.search(
        r"Liked books:\n(.*)\nDisliked books:\n(.*)\nBased on", instance["input"], re.S
    ).groups()  # type: ignore[union-attr]
    # A title ends at the first ": " that is followed by the review (titles may hold ": ").
    titles = [
        "Little House on the Prairie",
        "Little Lord Fauntleroy",
        "My Sweet Audrina",
        "Silas Marner: The weaver of Raveloe, (The Academy series of English classics)",
        "Can't Wait to Get to Heaven: A Novel",
        "Silas Marner (New Windmill)",
    ]
    lines = liked.split("\n") + disliked.split("\n")
    reviews = [line.removeprefix(f"{title}: ") for title, line in zip(titles, lines, strict=True)]
    items = catalogue(titles)
    inter = history(1, list(range(6)), rating=[5.0, 5.0, 4.0, 1.0, 1.0, 2.0], review=reviews)
    rows = pl.DataFrame({"user_id": [1]})
    prompt = only_prompt(rows, items, inter, task=Task.IR, domain="book")
    assert prompt == expected(instance)


def test_tui(instances: dict[str, dict[str, Any]]) -> None:
    # Choice: attributes are `key: value` joined by ",\n"; the figure prints "publisher" on the
    # line of "specs" (layout), which the transcription kept.
    instance = instances["TUI"]
    attributes = {
        "genres": ["Action", "Casual"],
        "tags": ["Casual", "Action", "Simulation"],
        "specs": ["Single-player"],
        "publisher": "Viva Media",
    }
    comments = re.search(r"as follows:\n1\. (.*)\n2\. (.*)\n3\. (.*)\nBased", instance["input"])
    assert comments is not None
    items = catalogue(["Cooking Academy Fire and Knives"], attributes=[json.dumps(attributes)])
    inter = pl.DataFrame(
        {
            "user_id": [7, 8, 9],
            "item_id": [0, 0, 0],
            "timestamp": [1, 2, 3],
            "review": list(comments.groups()),
        }
    )
    prompt = only_prompt(pl.DataFrame({"item_id": [0]}), items, inter, task=Task.TUI, domain="game")
    layout = "specs: ['Single-player'], publisher"
    assert prompt == expected(instance).replace(layout, "specs: ['Single-player'],\npublisher")
