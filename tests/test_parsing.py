"""Parsers of generated answers: every presented candidate ranked once, fallbacks flagged."""

from hypothesis import given
from hypothesis import strategies as st

from itdr_batch.scoring.parsing import (
    normalise,
    parse_attributes,
    parse_ranking,
    parse_rating,
    parse_text,
)

TITLES = ["Toy Story (1995)", "Heat (1995)", "Star Wars: Episode IV - A New Hope (1977)", "Jumanji"]


def test_a_trained_ranked_list_parses_exactly() -> None:
    text = "\n".join(["1. Heat (1995)", "2. Jumanji", "3. Toy Story (1995)", f"4. {TITLES[2]}"])
    assert parse_ranking(text, TITLES).order == [1, 3, 0, 2]
    assert parse_ranking(text, TITLES).status == "ok"


def test_case_whitespace_quotes_and_trailing_punctuation_do_not_count() -> None:
    lines = ['1)  "heat  (1995)".', "2. JUMANJI!", "3. toy story (1995)", f"4. {TITLES[2].lower()}"]
    text = "\n".join(lines)
    assert parse_ranking(text, TITLES).order == [1, 3, 0, 2]
    assert parse_ranking(text, TITLES).status == "ok"


def test_near_misses_match_fuzzily_and_say_so() -> None:
    text = (
        "1. Toy Stroy (1995)\n2. Heat (1995)\n3. Jumanji\n4. Star Wars Episode IV A New Hope (1977)"
    )
    ranking = parse_ranking(text, TITLES)
    assert ranking.order == [0, 1, 3, 2]
    assert ranking.status == "fuzzy"


def test_unnamed_candidates_follow_in_presented_order() -> None:
    ranking = parse_ranking("1. Jumanji\n2. Some other film\n3. Jumanji", TITLES)
    assert ranking.order == [3, 0, 1, 2]
    assert ranking.status == "partial"
    assert parse_ranking("I cannot decide.", TITLES) == parse_ranking("", TITLES)
    assert parse_ranking("", TITLES).order == [0, 1, 2, 3]
    assert parse_ranking("", TITLES).status == "unparsed"


def test_nir_takes_one_title_even_with_its_category() -> None:
    ranking = parse_ranking("Heat (1995):Action|Crime\nJumanji", TITLES, single=True)
    assert ranking.order == [1, 0, 2, 3]
    assert ranking.status == "ok"
    # A title that itself holds a colon is still found whole.
    colon = parse_ranking("Star Wars: Episode IV - A New Hope (1977)", TITLES, single=True)
    assert colon.order[0] == 2


@given(st.text(), st.lists(st.text(min_size=1), min_size=1, max_size=8))
def test_any_text_gives_a_complete_ranking(text: str, titles: list[str]) -> None:
    ranking = parse_ranking(text, titles)
    assert sorted(ranking.order) == list(range(len(titles)))
    assert ranking.status in {"ok", "fuzzy", "partial", "unparsed"}


def test_ratings_are_read_and_clipped_into_the_scale() -> None:
    scale = (1.0, 2.0, 3.0, 4.0, 5.0)
    assert parse_rating("4", scale) == (4.0, "ok")
    assert parse_rating("Rating: 3.5.", scale) == (3.5, "ok")
    assert parse_rating("7", scale) == (5.0, "out_of_scale")
    assert parse_rating("no idea", scale) == (None, "unparsed")


def test_attributes_and_free_text() -> None:
    fields, status = parse_attributes("Age group:25-34, Gender:male,Occupation: writer.")
    assert fields == {"age group": "25-34", "gender": "male", "occupation": "writer"}
    assert status == "ok"
    assert parse_attributes("a user who likes films") == ({}, "unparsed")
    assert parse_text("  likes thrillers \n") == ("likes thrillers", "ok")
    assert parse_text(" \n") == ("", "unparsed")


def test_normalise() -> None:
    assert normalise("  “Amélie”  (2001)… ") == normalise('"amélie" (2001)...')
