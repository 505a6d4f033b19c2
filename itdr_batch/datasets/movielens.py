"""MovieLens readers: ml-latest-small (CSV), ml-100k (tab/pipe, latin-1) and ml-1m ('::', latin-1).

Titles are kept as "Title (Year)", as ITDR's prompts use them. Ratings files are optional so that
catalogue-only copies (ml-1m without ratings.dat) still yield items and users.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from itdr_batch.datasets.canonical import Ingested, IngestError, tag_domain

if TYPE_CHECKING:
    from polars._typing import SchemaDict

# Age buckets and occupation codes of ml-1m (its README); ml-100k ages are bucketed alike.
AGE_GROUPS = {
    1: "Under 18",
    18: "18-24",
    25: "25-34",
    35: "35-44",
    45: "45-49",
    50: "50-55",
    56: "56+",
}
OCCUPATIONS = [
    "other",
    "academic/educator",
    "artist",
    "clerical/admin",
    "college/grad student",
    "customer service",
    "doctor/health care",
    "executive/managerial",
    "farmer",
    "homemaker",
    "K-12 student",
    "lawyer",
    "programmer",
    "retired",
    "sales/marketing",
    "scientist",
    "self-employed",
    "technician/engineer",
    "tradesman/craftsman",
    "unemployed",
    "writer",
]
# Every release's ratings file has these fields in this order.
RATINGS_SCHEMA = {
    "user_id": pl.Int64,
    "item_id": pl.Int64,
    "rating": pl.Float64,
    "timestamp": pl.Int64,
}

FLAVOURS = {
    "ml-latest-small": ("ratings.csv", "movies.csv"),
    "ml-100k": ("u.data", "u.item"),
    "ml-1m": ("ratings.dat", "movies.dat"),
}


def detect(src: Path) -> str:
    """Which MovieLens release a folder holds, from its items file."""
    for flavour, (_, items_file) in FLAVOURS.items():
        if (src / items_file).is_file():
            return flavour
    expected = "; ".join(f"{f}: {i} (+ {r})" for f, (r, i) in FLAVOURS.items())
    raise IngestError(f"{src}: not a MovieLens folder; expected one of {expected}")


def read_movielens(src: Path, domain: str | None = None) -> Ingested:
    """Reads any supported MovieLens release from its folder; ``domain`` tags every item."""
    flavour = detect(src)
    reader = {
        "ml-latest-small": _latest_small,
        "ml-100k": _ml_100k,
        "ml-1m": _ml_1m,
    }[flavour]
    data = reader(src)
    data.source = f"MovieLens {flavour} ({src})"
    data.read = {
        name: frame.height
        for name, frame in (
            ("items", data.items),
            ("interactions", data.interactions),
            ("users", data.users),
        )
        if frame is not None
    }
    ratings_file = src / FLAVOURS[flavour][0]
    if data.interactions is None:
        data.notes.append(f"{ratings_file.name} not found: no interactions.parquet written")
    return tag_domain(data, domain)


def _latest_small(src: Path) -> Ingested:
    movies = _read_csv(
        src / "movies.csv",
        has_header=True,
        quote_char='"',
        schema={
            "item_id": pl.Int64,
            "title": pl.String,
            "genres": pl.String,
        },
    )
    genres = pl.col("genres").str.split("|")
    items = movies.select(
        "item_id",
        pl.col("title").str.strip_chars(),
        # "(no genres listed)" is MovieLens' word for an empty list.
        genres=genres.list.filter(pl.element() != "(no genres listed)"),
    )
    ratings = src / "ratings.csv"
    interactions = None
    if ratings.is_file():
        interactions = _read_csv(ratings, has_header=True, schema=RATINGS_SCHEMA).select(
            _INTERACTION_COLUMNS
        )
    return Ingested(source="", items=items, interactions=interactions)


def _ml_100k(src: Path) -> Ingested:
    genre_names = [
        line.split("|")[0] for line in _latin1(src / "u.genre").splitlines() if line.strip()
    ]
    flags = [f"g{i}" for i in range(len(genre_names))]
    movies = _read_csv(
        src / "u.item",
        separator="|",
        text=_latin1(src / "u.item"),
        schema={
            "item_id": pl.Int64,
            "title": pl.String,
            "release_date": pl.String,
            "video_release_date": pl.String,
            "imdb_url": pl.String,
        }
        | {flag: pl.Int8 for flag in flags},
    )
    items = movies.select(
        "item_id",
        pl.col("title").str.strip_chars(),
        genres=pl.concat_list(
            pl.when(pl.col(flag) == 1).then(pl.lit(name))
            for flag, name in zip(flags, genre_names, strict=True)
            if name != "unknown"  # the "unknown" flag means: no genre known
        ).list.drop_nulls(),
    )
    interactions = None
    if (src / "u.data").is_file():
        interactions = _read_csv(src / "u.data", separator="\t", schema=RATINGS_SCHEMA).select(
            _INTERACTION_COLUMNS
        )
    users = None
    if (src / "u.user").is_file():
        users = _read_csv(
            src / "u.user",
            separator="|",
            text=_latin1(src / "u.user"),
            schema={
                "user_id": pl.Int64,
                "age": pl.Int64,
                "gender": pl.String,
                "occupation": pl.String,
                "zip": pl.String,
            },
        ).select("user_id", "gender", "age", _age_group(pl.col("age")), "occupation", "zip")
    return Ingested(source="", items=items, interactions=interactions, users=users)


def _ml_1m(src: Path) -> Ingested:
    movies = _read_dat(
        src / "movies.dat",
        {
            "item_id": pl.Int64,
            "title": pl.String,
            "genres": pl.String,
        },
    )
    items = movies.select(
        "item_id", pl.col("title").str.strip_chars(), pl.col("genres").str.split("|")
    )
    interactions = None
    if (src / "ratings.dat").is_file():
        interactions = _read_dat(src / "ratings.dat", RATINGS_SCHEMA).select(_INTERACTION_COLUMNS)
    users = None
    if (src / "users.dat").is_file():
        raw = _read_dat(
            src / "users.dat",
            {
                "user_id": pl.Int64,
                "gender": pl.String,
                "age": pl.Int64,
                "occupation": pl.Int64,
                "zip": pl.String,
            },
        )
        users = raw.select(
            "user_id",
            "gender",
            "age",
            age_group=pl.col("age").replace_strict(
                AGE_GROUPS, default=None, return_dtype=pl.String
            ),
            occupation=pl.col("occupation").replace_strict(
                dict(enumerate(OCCUPATIONS)), default=None, return_dtype=pl.String
            ),
            zip=pl.col("zip"),
        )
    return Ingested(source="", items=items, interactions=interactions, users=users)


_INTERACTION_COLUMNS = ["user_id", "item_id", "timestamp", "rating"]


def _age_group(age: pl.Expr) -> pl.Expr:
    """ml-1m's buckets (AGE_GROUPS) applied to an exact age: the highest lower bound reached."""
    group = pl.lit(None, dtype=pl.String)
    for lower in sorted(AGE_GROUPS):  # each higher bucket wraps the lower ones
        group = pl.when(age >= lower).then(pl.lit(AGE_GROUPS[lower])).otherwise(group)
    return group.alias("age_group")


def _latin1(path: Path) -> str:
    try:
        return path.read_bytes().decode("latin-1")
    except OSError as exc:
        raise IngestError(f"{path}: cannot be read: {exc}") from exc


def _read_dat(path: Path, schema: SchemaDict) -> pl.DataFrame:
    """ml-1m's '::'-separated latin-1 files; '::' never occurs inside a field."""
    text = _latin1(path).replace("::", "\x1f")
    return _read_csv(path, separator="\x1f", text=text, schema=schema)


def _read_csv(
    path: Path,
    *,
    schema: SchemaDict,
    separator: str = ",",
    has_header: bool = False,
    quote_char: str | None = None,
    text: str | None = None,
) -> pl.DataFrame:
    """Reads a delimited file (or its already-decoded text) with a fixed, positional schema."""
    source = path if text is None else text.encode()
    try:
        frame = pl.read_csv(
            source,
            separator=separator,
            has_header=False,
            skip_rows=int(has_header),
            quote_char=quote_char,
            schema=schema,
        )
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise IngestError(f"{path}: cannot be parsed: {exc}") from exc
    return frame
