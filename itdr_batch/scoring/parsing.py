"""Parsers for what the adapters generate, per subtask (README, "Engines and scoring modes").

Each parser returns its value with a status, so fallbacks stay visible and nothing is dropped:
``ok`` (parsed as trained), ``fuzzy`` (titles matched only approximately), ``partial`` (some
candidates not named: they follow in presented order), ``unparsed`` (nothing usable: the
presented order, or no value), ``out_of_scale`` (a rating clipped into the scale).
"""

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

from rapidfuzz import fuzz, process

from itdr_batch.status import ScoreStatus

# A title matches fuzzily at this rapidfuzz ratio (0-100) or above.
FUZZY_CUTOFF = 85.0
NUMBERING = re.compile(r"^\s*(?:\d+\s*[.):\]]|[-*•])\s*")
NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")
TRAILING = ".,;:!?"
QUOTES = "\"'`"
# Typographic quotes read as plain ones.
PLAIN_QUOTES = str.maketrans("\u201c\u201d\u2018\u2019", "\"\"''")


@dataclass(frozen=True)
class Ranking:
    """Positions into the presented candidates, best first: always each candidate once."""

    order: list[int]
    status: ScoreStatus


def normalise(title: str) -> str:
    """Case, Unicode form, whitespace, surrounding quotes and trailing punctuation do not count."""
    text = " ".join(unicodedata.normalize("NFKC", title).translate(PLAIN_QUOTES).casefold().split())
    return text.strip(QUOTES).rstrip(TRAILING).strip().strip(QUOTES)


def parse_ranking(text: str, titles: Sequence[str], single: bool = False) -> Ranking:
    """A generated ranked list (TKR/CDR: ``1. <title>`` lines; NIR, ``single``: one title)."""
    keys = [normalise(t) for t in titles]
    lines = [NUMBERING.sub("", line) for line in text.splitlines()]
    lines = [line for line in lines if line.strip()][: 1 if single else None]
    order: list[int] = []
    fuzzy = False
    for line in lines:
        found, approximate = _match(line, keys, order)
        if found is not None:
            order.append(found)
            fuzzy |= approximate
    named = len(order)
    order += [i for i in range(len(titles)) if i not in order]
    if named == 0:
        status = ScoreStatus.UNPARSED
    elif not single and named < len(titles):
        status = ScoreStatus.PARTIAL
    else:
        status = ScoreStatus.FUZZY if fuzzy else ScoreStatus.OK
    return Ranking(order, status)


def parse_rating(text: str, scale: Sequence[float]) -> tuple[float | None, ScoreStatus]:
    """The first number in ``text``, clipped into the scale (``out_of_scale`` when clipped)."""
    match = NUMBER.search(text)
    if match is None:
        return None, ScoreStatus.UNPARSED
    value = float(match.group())
    low, high = min(scale), max(scale)
    if low <= value <= high:
        return value, ScoreStatus.OK
    return min(max(value, low), high), ScoreStatus.OUT_OF_SCALE


def parse_attributes(text: str) -> tuple[dict[str, str], ScoreStatus]:
    """UAP's ``key:value,key:value.`` into a mapping (keys normalised)."""
    fields: dict[str, str] = {}
    for part in text.strip().rstrip(".").split(","):
        key, sep, value = part.partition(":")
        if sep and key.strip() and value.strip():
            fields[normalise(key)] = value.strip()
    return fields, ScoreStatus.OK if fields else ScoreStatus.UNPARSED


def parse_text(text: str) -> tuple[str, ScoreStatus]:
    """IR/TUI free text, trimmed."""
    stripped = text.strip()
    return stripped, ScoreStatus.OK if stripped else ScoreStatus.UNPARSED


def _match(line: str, keys: list[str], taken: list[int]) -> tuple[int | None, bool]:
    """The first untaken candidate the line names: exactly, before a ``:category``, or fuzzily."""
    wanted = normalise(line)
    options = [wanted]
    if ":" in wanted:
        options.append(normalise(wanted.rsplit(":", 1)[0]))
    for option in options:
        for i, key in enumerate(keys):
            if key == option and i not in taken:
                return i, False
    free = {i: keys[i] for i in range(len(keys)) if i not in taken}
    best = process.extractOne(wanted, free, scorer=fuzz.ratio, score_cutoff=FUZZY_CUTOFF)
    return (best[2], True) if best else (None, False)
