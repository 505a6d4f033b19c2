"""Candidate sampling and ITDR prompt construction: Polars prepares, the Rust core renders.

Polars does the joins and grouping (each row's history as list columns in timestamp order,
ties in input order); ``_core.build_prompts`` samples each row's candidates and writes its prompt
in parallel, with the GIL released, and returns Arrow. A row's candidates depend only on the
seed, its id and the configuration (README, "Stable hash"), so any sharding or batching gives the
same rows. Popularity weights are counted over the whole interactions table, never over a shard.
"""

import functools
import json
import logging
import string
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import polars as pl
from arro3.core.types import ArrowStreamExportable

from itdr_batch import _core
from itdr_batch.core_args import EntryField, ListFormat, PromptJob, Sampling
from itdr_batch.errors import ItdrError
from itdr_batch.prompts.chat import ChatFormat, chat_format
from itdr_batch.prompts.templates import DOMAINS, TEMPLATES, Domain, TaskTemplate
from itdr_batch.status import PROMPT_STATUS, PromptStatus
from itdr_batch.tables.shard import item_counts
from itdr_batch.tasks import ResultKind, Task, spec

# Entry fields that are not item fields (the rest are item columns).
ENTRY_FIELDS: dict[str, EntryField] = {
    "index": {"field": "index"},
    "rating": {"field": "rating"},
    "text": {"field": "text"},
}
# Descriptive item fields an entry shows without when the items lack them (titles-only
# catalogues): `{title}:{category}` becomes `{title}` (README, "Prompts and candidates").
OPTIONAL_FIELDS = ("category", "genres")
# Evaluation runs of text tasks: the held-out review's item and text (``_held_out``).
HELD_OUT_TEXT = ("held_out_item_id", "held_out_text")
# What a content-free prompt shows in place of each list.
CONTENT_FREE = "N/A"
# A row's position in its frame: extracted interactions' link to their row (``prepare``), and
# a row's place while its presentation orders are interleaved.
ROW = "__row"
# Extracted interactions' item: its position among the items (the cut looked the id up).
ITEM = "__item"

log = logging.getLogger(__name__)


# A piece of a compiled text besides literal strings: a list number or an entry field.
P = TypeVar("P", int, EntryField)


class PromptError(ItdrError):
    """A prompt configuration or template that cannot be built from the given tables."""


@dataclass(frozen=True)
class PromptConfig:
    """Everything that shapes a task's prompts and candidates."""

    task: Task
    domain: Domain | str = "movie"
    chat: ChatFormat | str = "raw"
    template: TaskTemplate | None = None
    history_len: int = 10
    candidates: int = 10
    strategy: Literal["uniform", "popularity"] = "uniform"
    popularity_exponent: float = 1.0
    evaluation: bool = False
    seed: int = 0
    # Template fields (e.g. `category`) read from differently named item columns (`genres`).
    item_fields: Mapping[str, str] = field(default_factory=dict)
    # How list-valued item fields (genres, category) are joined.
    list_separator: str = "|"
    source_domain: str | None = None
    target_domain: str | None = None
    liked_min_rating: float = 4.0
    disliked_max_rating: float = 2.0
    # The closed range of ratings RP shows and IR reads as liked or disliked (the job's rating
    # scale); None: any finite rating. Interactions without such a rating (null, NaN, infinite,
    # out of range) are left out of those tasks' histories and counted per row in `unrated`.
    rating_range: tuple[float, float] | None = None
    attribute_names: tuple[str, ...] = ("age group", "gender", "occupation")

    def __post_init__(self) -> None:
        spec(self.task)
        if self.history_len < 1 or self.candidates < 1:
            raise PromptError("history_len and candidates must be at least 1")
        if self.strategy not in ("uniform", "popularity"):
            raise PromptError(f"strategy must be uniform or popularity, not {self.strategy!r}")
        if not 0 <= self.popularity_exponent < float("inf"):
            raise PromptError("popularity_exponent must be finite and at least 0")
        if isinstance(self.domain, str) and self.domain not in DOMAINS:
            known = ", ".join(DOMAINS)
            raise PromptError(f"unknown domain {self.domain!r}; known: {known}")

    def words(self) -> dict[str, str]:
        domain = self.domain if isinstance(self.domain, Domain) else DOMAINS[self.domain]
        names = list(self.attribute_names)
        spoken = (
            ", ".join(names[:-1]) + ", and " + names[-1] if len(names) > 2 else " and ".join(names)
        )
        return domain.words() | {
            "source_domain": self.source_domain or "",
            "target_domain": self.target_domain or "",
            "attribute_names": spoken,
        }


@dataclass(frozen=True)
class Slot:
    """A row's entries for one data source: item indices and/or ratings and/or texts."""

    items: str | None = None
    ratings: str | None = None
    texts: str | None = None
    max_entries: int | None = None


def build_prompts(
    rows: pl.DataFrame,
    interactions: pl.LazyFrame | pl.DataFrame,
    items: pl.DataFrame,
    config: PromptConfig,
    item_counts: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """One prompt per row of ``rows`` (a users shard; for TUI, a frame of ``item_id``s).

    Returns the row's id, ``prompt`` (null unless it could be built), ``candidates`` (item ids
    in presented order, ranking tasks) and their ``candidate_titles``,
    ``held_out_item_id``/``held_out_position`` (evaluation; text tasks: ``held_out_item_id`` and
    ``held_out_text``, the held-out review, the reference), ``target_item_id`` (RP),
    ``unknown_candidates`` (provided candidates not in the items), ``unrated`` (RP, IR: the row's
    interactions left out for want of a usable rating, see ``rated``) and ``status``
    (``PromptStatus``). ``item_counts`` (``popularity_counts`` of the whole table) spares
    the popularity strategy a pass over ``interactions`` when they hold only the rows' histories.
    """
    return prepare(rows, interactions, items, config, item_counts).render()


def popularity_counts(interactions: pl.LazyFrame | pl.DataFrame) -> pl.DataFrame:
    """Interactions per item id (columns ``item_id``, ``count``): the popularity weights' base,
    counted as a split counts the whole log (``tables.shard.item_counts``)."""
    return item_counts(interactions)


@dataclass(frozen=True)
class Prepared:
    """A task's rows with their lists, and the Rust call's argument that renders them."""

    task: Task
    key: str
    frame: pl.DataFrame
    hold_out: bool
    job: PromptJob

    def render(self) -> pl.DataFrame:
        return self.finish(_core.build_prompts(self.job))

    def content_free_prompt(self) -> str:
        """The task's prompt with every list shown as ``N/A`` (the content-free input of Zhao et
        al. 2021): what the model answers with no user in it, the item-prior's condition."""
        return "".join(
            part if isinstance(part, str) else CONTENT_FREE for part in self.job["parts"]
        )

    def render_orders(self, orders: int) -> pl.DataFrame:
        """One prompt per row and presentation order of its candidates (``order``: 0 is the
        drawn list, the others its balanced cyclic shifts), a row's orders next to each other.
        Every order holds the same candidates; rows without candidates get ``orders`` copies."""
        sampling = self.job["sampling"]
        frames = []
        for order in range(orders):
            job = (
                self.job
                if sampling is None
                else self.job | {"sampling": sampling | {"order": order, "orders": orders}}
            )
            frame = self.finish(_core.build_prompts(job))
            frames.append(frame.with_columns(order=pl.lit(order, pl.UInt32)).with_row_index(ROW))
        return pl.concat(frames).sort(ROW, maintain_order=True).drop(ROW)

    def finish(self, table: ArrowStreamExportable) -> pl.DataFrame:
        """The rows' ids next to what the Rust core returned; statuses as ``PromptStatus``."""
        built = pl.DataFrame(table)
        out = self.frame.select(self.key).with_columns(
            prompt=built["prompt"].cast(pl.String),
            # Strict: a status Rust names but the vocabulary lacks is an error here.
            status=built["status"].cast(pl.String).cast(PROMPT_STATUS),
        )
        task = spec(self.task)
        if task.ranking:
            out = out.with_columns(
                candidates=built["candidates"], candidate_titles=built["candidate_titles"]
            )
        if self.hold_out:
            out = out.with_columns(
                held_out_item_id=built["held_out_item"],
                held_out_position=built["held_out_position"],
            )
        if task.result is ResultKind.RATING and not self.hold_out:
            no_target = pl.col("status").eq(PromptStatus.OK) & self.frame["target"].list.len().eq(0)
            out = out.with_columns(
                target_item_id=self.frame["target_item_id"],
                prompt=pl.when(no_target).then(None).otherwise("prompt"),
                status=pl.when(no_target)
                .then(pl.lit(PromptStatus.NO_TARGET, PROMPT_STATUS))
                .otherwise("status"),
            )
        for column in ("unknown_candidates", "unrated", *HELD_OUT_TEXT):
            if column in self.frame.columns:
                out = out.with_columns(self.frame[column])
        return out


def prepare(
    rows: pl.DataFrame,
    interactions: pl.LazyFrame | pl.DataFrame,
    items: pl.DataFrame,
    config: PromptConfig,
    item_counts: pl.DataFrame | None = None,
    *,
    extracted: bool = False,
) -> Prepared:
    """Polars' half of the work: each row's lists, the compiled template, the sampler's pool.

    ``extracted``: ``interactions`` are the rows' own, by row and each row's in time order, with
    ``ROW`` (the row's position in ``rows``, flagged sorted) in place of the key and, unless the
    rows are items, ``ITEM`` in place of ``item_id`` (a run's ``Extract.batch``): neither
    filtered nor sorted again, grouped by runs of ``ROW``, items not looked up again."""
    task = Task(config.task)
    rules = spec(task)
    template = config.template or TEMPLATES[task]
    indexed = items.with_row_index("idx")
    # Ties in time keep the input order: everything below filters, joins keeping the left
    # order, and sorts stably (``_grouped``).
    frame, slots, history, also_seen = _row_data(
        task, rows, interactions.lazy(), indexed, config, extracted
    )

    fields: list[str] = []
    fallbacks = missing_fields(items.columns, config)
    for name in fallbacks:
        _warn_fallback(task, name, tuple(items.columns))
    parts, lists = _compile(config, template, slots, fields, fallbacks)
    # Text tasks hold their review out in Polars (``_row_data``), the others in the Rust core.
    hold_out = config.evaluation and rules.holds_out and rules.result is not ResultKind.TEXT
    if hold_out and rules.result is ResultKind.RATING:
        # The target is the held-out entry, not the shard's target item.
        target = list(slots).index("target")
        for entry in lists:
            if entry["source"] == target:
                entry["source"] = "held_out"
    sampling = None
    if rules.ranking:
        sampling = _sampling(task, frame, interactions, indexed, config, item_counts)
    job: PromptJob = {
        "row_ids": frame[rules.key],
        "seed": config.seed,
        "parts": parts,
        "lists": lists,
        "slots": [
            {
                "items": None if s.items is None else frame[s.items],
                "ratings": None if s.ratings is None else frame[s.ratings],
                "texts": None if s.texts is None else frame[s.texts],
                "max_entries": s.max_entries,
            }
            for s in slots.values()
        ],
        "item_ids": indexed["item_id"],
        "item_titles": indexed["title"] if rules.ranking else None,
        "item_fields": [_item_field(indexed, name, config) for name in fields],
        "history": list(slots).index(history),
        "also_seen": [list(slots).index(name) for name in also_seen],
        "hold_out_last": hold_out,
        "sampling": sampling,
    }
    return Prepared(task, rules.key, frame, hold_out, job)


def missing_fields(columns: Collection[str], config: PromptConfig) -> list[str]:
    """The template's optional fields (``OPTIONAL_FIELDS``) that are no items column and not
    mapped by ``item_fields``: its entries show without them. A mapped field stays required."""
    template = config.template or TEMPLATES[Task(config.task)]
    used = {
        name
        for list_spec in template.lists.values()
        for _, name, _, _ in string.Formatter().parse(list_spec.entry)
        if name is not None
    }
    return [
        name
        for name in OPTIONAL_FIELDS
        if name in used and name not in columns and name not in config.item_fields
    ]


@functools.cache
def _warn_fallback(task: Task, name: str, columns: tuple[str, ...]) -> None:
    """Once per task, field and items columns: the prompts differ from ITDR's."""
    other = [c for c in OPTIONAL_FIELDS if c in columns]
    hint = f"; map a column with item_fields={{'{name}': '{other[0]}'}}" if other else ""
    log.warning(
        "task %s: items have no %r column; its entries show without {%s}%s",
        task,
        name,
        name,
        hint,
    )


def _row_data(
    task: Task,
    rows: pl.DataFrame,
    interactions: pl.LazyFrame,
    items: pl.DataFrame,
    config: PromptConfig,
    extracted: bool,
) -> tuple[pl.DataFrame, dict[str, Slot], str, list[str]]:
    """The rows with their list columns, the task's data slots, and which slots hold history."""
    n = config.history_len
    _require_columns(task, config, interactions, items)
    if task is Task.TUI:
        kept, held_out = _held_out(task, _has_text(), config)
        by = ROW if extracted else "item_id"
        reviews = _grouped(
            interactions.filter(_has_text()),
            items,
            by,
            extracted,
            texts=pl.col("review").filter(kept),
            **held_out,
        )
        frame = _attach(rows.select("item_id"), reviews, by).join(
            items.select("item_id", item_idx="idx"), on="item_id", how="left", maintain_order="left"
        )
        frame = frame.with_columns(
            *_first(held_out), target=pl.concat_list("item_idx").list.drop_nulls()
        )
        slots = {"reviews": Slot(texts="texts", max_entries=n), "target": Slot(items="target")}
        return frame, slots, "reviews", []

    columns: dict[str, pl.Expr]
    idx = pl.col("idx")
    if task is Task.CDR:
        domain = pl.col("domain")
        columns = {
            "source": idx.filter(domain == config.source_domain),
            "items": idx.filter(domain == config.target_domain),
        }
        slots = {
            "source": Slot(items="source", max_entries=n),
            "history": Slot(items="items", max_entries=n),
        }
        also_seen = ["source"]
    elif task is Task.IR:
        rating, reviewed, usable = pl.col("rating"), _has_text(), rated(config)
        liked = reviewed & usable & (rating >= config.liked_min_rating)
        disliked = reviewed & usable & (rating <= config.disliked_max_rating)
        kept, held_out = _held_out(task, liked | disliked, config)
        liked, disliked = liked & kept, disliked & kept
        columns = {
            **held_out,
            "unrated": (reviewed & ~usable).sum(),
            "items": idx.filter(liked | disliked),
            "liked": idx.filter(liked),
            "liked_texts": pl.col("review").filter(liked),
            "disliked": idx.filter(disliked),
            "disliked_texts": pl.col("review").filter(disliked),
        }
        slots = {
            "history": Slot(items="items"),
            "liked": Slot(items="liked", texts="liked_texts", max_entries=n),
            "disliked": Slot(items="disliked", texts="disliked_texts", max_entries=n),
        }
        also_seen = []
    else:
        columns = {"items": idx}
        history = Slot(items="items", max_entries=n)
        if task is Task.RP:
            usable = rated(config)
            columns = {
                "items": idx.filter(usable),
                "ratings": pl.col("rating").filter(usable),
                "unrated": (~usable).sum(),
            }
            history = Slot(items="items", ratings="ratings", max_entries=n)
        slots = {"history": history}
        also_seen = []

    if not extracted:
        interactions = interactions.filter(pl.col("user_id").is_in(rows["user_id"].implode()))
    by = ROW if extracted else "user_id"
    grouped = _grouped(interactions, items, by, extracted, **columns)
    frame = _attach(rows, grouped, by).with_columns(*_first(columns))
    if spec(task).result is ResultKind.RATING:
        if "target_item_id" not in frame.columns:
            frame = frame.with_columns(target_item_id=pl.lit(None, items["item_id"].dtype))
        frame = frame.with_columns(target=item_indices(pl.concat_list("target_item_id"), items))
        slots["target"] = Slot(items="target")
    if spec(task).ranking and "candidates" in rows.columns:
        known = item_indices(pl.col("candidates"), items)
        frame = frame.with_columns(
            provided=known,
            unknown_candidates=(pl.col("candidates").list.len() - known.list.len())
            .fill_null(0)
            .cast(pl.UInt32),
        )
    return frame, slots, "history", also_seen


def _held_out(
    task: Task, shown: pl.Expr, config: PromptConfig
) -> tuple[pl.Expr, dict[str, pl.Expr]]:
    """Text tasks in evaluation runs: the interactions still shown, and (as one-entry lists) the
    item and review of the last ``shown`` one, held out as the reference text.

    Its review leaves the prompt, as a ranking task's held-out item leaves the history; not by the
    Rust core's ``hold_out_last``, which would take it from one list of IR's three only.
    """
    if not (config.evaluation and spec(task).holds_out):
        return shown, {}
    last = shown & (shown.cum_sum() == shown.sum())
    held = {"held_out_item_id": pl.col("item_id"), "held_out_text": pl.col("review")}
    return shown & ~last, {name: column.filter(last) for name, column in held.items()}


def _first(columns: Mapping[str, pl.Expr]) -> list[pl.Expr]:
    """The ``HELD_OUT_TEXT`` lists among ``columns`` as values (null for an empty list)."""
    return [pl.col(c).list.first() for c in HELD_OUT_TEXT if c in columns]


def _require_columns(
    task: Task, config: PromptConfig, interactions: pl.LazyFrame, items: pl.DataFrame
) -> None:
    """Tasks that show ratings, reviews or domains need those columns (``TaskSpec``)."""
    rules = spec(task)
    if rules.needs_domains and not (config.source_domain and config.target_domain):
        raise PromptError(f"task {task}: set source_domain and target_domain")
    present = interactions.collect_schema().names()
    missing = [c for c in rules.interaction_columns if c not in present]
    if missing:
        raise PromptError(f"task {task}: interactions need column(s) {missing}")
    missing = [c for c in rules.item_columns if c not in items.columns]
    if missing:
        raise PromptError(f"task {task}: items need column(s) {missing}")


def _grouped(
    interactions: pl.LazyFrame,
    items: pl.DataFrame,
    by: str,
    extracted: bool,
    /,
    **columns: pl.Expr,
) -> pl.DataFrame:
    """Per ``by`` (a key, or ``ROW`` when ``extracted``), lists of `columns` over its
    interactions by timestamp (ties: input order); ``extracted``: they already are, by row."""
    if ITEM in interactions.collect_schema().names():
        # Item positions from the cut: ids and domains are gathers (dropped unless used).
        ordered = interactions.with_columns(
            pl.lit(items[c]).gather(ITEM).alias(c)
            for c in ("idx", "item_id", "domain")
            if c in items.columns
        )
    else:
        # Each interaction's item index (and domain), interactions of unknown items dropped:
        # an inner join with the items keeping the interactions' order, at half the cost.
        item = pl.col("item_id")
        ordered = interactions.with_columns(
            item.replace_strict(items["item_id"], items[c], default=None).alias(c)
            for c in ("idx", "domain")
            if c in items.columns
        ).drop_nulls("idx")
    if extracted:
        # Runs of a sorted column: grouped without hashing (several times faster than by key),
        # the groups in row order (``_attach``).
        ordered = ordered.with_columns(pl.col(by).set_sorted())
    else:
        # A stable sort on time alone keeps input order among ties, and a group keeps the
        # frame's order: twice as fast as sorting on (key, timestamp, input order).
        ordered = ordered.sort("timestamp", maintain_order=True)
    return ordered.group_by(by, maintain_order=extracted).agg(**columns).collect()


def _attach(rows: pl.DataFrame, grouped: pl.DataFrame, by: str) -> pl.DataFrame:
    """Each row with its lists (empty when it has no interactions), in the rows' order."""
    lists = grouped.drop(by)
    if by == ROW and grouped.height == rows.height and not set(lists.columns) & set(rows.columns):
        # Every row has interactions: its groups are rows 0..n-1 in order, and the lists sit
        # beside the rows, copied into one chunk (the core reads many chunks at half speed): a
        # join gathered every list again, a fifth of a batch's build at 165 interactions a row.
        frame = rows.hstack(lists.rechunk())
    elif by == ROW:
        frame = rows.with_row_index(ROW).join(grouped, on=ROW, how="left", maintain_order="left")
        frame = frame.drop(ROW)
    else:
        frame = rows.join(grouped, on=by, how="left", maintain_order="left")
    # Lists (empty) and counts (0) of the rows without interactions.
    return frame.with_columns(
        pl.col(c).fill_null([] if isinstance(dtype, pl.List) else 0)
        for c, dtype in grouped.schema.items()
        if c != by
    )


def item_indices(ids: pl.Expr, items: pl.DataFrame) -> pl.Expr:
    """Item ids (a list per row) to dense item indices (`items`' `idx`); unknown ids are dropped."""
    mapping = items.select("item_id", "idx")
    return (
        ids.list.eval(pl.element().replace_strict(mapping["item_id"], mapping["idx"], default=None))
        .list.drop_nulls()
        .cast(pl.List(pl.UInt32))
    )


def rated(config: PromptConfig) -> pl.Expr:
    """Interactions whose rating RP can show and IR can read: finite and within
    ``config.rating_range`` (a null rating is none: RP would show an empty `()`)."""
    rating = pl.col("rating")
    if config.rating_range is None:
        return rating.is_finite().fill_null(False)
    low, high = config.rating_range
    return rating.is_between(low, high).fill_null(False)


def _has_text() -> pl.Expr:
    return pl.col("review").is_not_null() & (pl.col("review").str.strip_chars() != "")


def _sampling(
    task: Task,
    frame: pl.DataFrame,
    interactions: pl.LazyFrame | pl.DataFrame,
    items: pl.DataFrame,
    config: PromptConfig,
    item_counts: pl.DataFrame | None,
) -> Sampling:
    pool = items
    if spec(task).needs_domains:
        # Cross-domain: candidates come from the target domain only.
        pool = items.filter(pl.col("domain") == config.target_domain)
    weights = None
    if config.strategy == "popularity":
        counts = popularity_counts(interactions) if item_counts is None else item_counts
        counted = pool.join(counts, on="item_id", how="left", maintain_order="left")
        weights = counted["count"].fill_null(0).cast(pl.Float64).pow(config.popularity_exponent)
    provided = frame["provided"] if "provided" in frame.columns else None
    return {
        "pool": pool["idx"],
        "weights": weights,
        "count": config.candidates,
        "provided": provided,
        "order": 0,
        "orders": 1,
    }


def _compile(
    config: PromptConfig,
    template: TaskTemplate,
    slots: Mapping[str, Slot],
    fields: list[str],
    dropped: Collection[str] = (),
) -> tuple[list[str | int], list[ListFormat]]:
    """The template as `_core` takes it: literal text and list numbers; fills `fields`.
    Entries show without the `dropped` fields (``missing_fields``)."""
    before, after = chat_format(config.chat).split()
    words = config.words()
    names = list(template.lists)

    def placeholder(name: str) -> str | int:
        if name in words:
            return words[name]
        if name in names:
            return names.index(name)
        known = ", ".join([*words, *names])
        raise PromptError(f"task {config.task}: unknown placeholder {{{name}}}; known: {known}")

    def entry_field(name: str) -> str | EntryField:
        if name in ENTRY_FIELDS:
            return ENTRY_FIELDS[name]
        if name not in fields:
            fields.append(name)
        return {"field": fields.index(name)}

    parts = [before + template.description + "\n", *_pieces(template.input, placeholder), after]
    lists: list[ListFormat] = []
    data = list(slots)
    for name, list_spec in template.lists.items():
        shown = list_spec.source or name
        source: int | Literal["candidates"]
        if shown == "candidates":
            source = "candidates"
        elif shown in data:
            source = data.index(shown)
        else:
            raise PromptError(f"task {config.task}: list {name!r} shows unknown data {shown!r}")
        entry = _pieces(list_spec.entry, entry_field, dropped)
        lists.append({"entry": entry, "separator": list_spec.separator, "source": source})
    return _merged(parts), lists


def _pieces(
    text: str, resolve: Callable[[str], str | P], dropped: Collection[str] = ()
) -> list[str | P]:
    """`text` split at its `{name}` placeholders, each replaced by `resolve(name)`. A `dropped`
    field goes with the text joining it to the field before (`{title}:{category}` -> `{title}`),
    or, when no field comes before, to the field after (`{category}: {title}` -> `{title}`)."""
    pieces: list[str | P] = []
    # No field yet: the text before a dropped field stays, the text after it goes.
    field_seen = joiner_gone = False
    for before, name, _, _ in string.Formatter().parse(text):
        if name is not None and name in dropped:
            if not field_seen and not joiner_gone:
                pieces.append(before)
                joiner_gone = True
            continue
        pieces.append("" if joiner_gone and not field_seen else before)
        if name is not None:
            pieces.append(resolve(name))
            field_seen = True
    return _merged(pieces)


def _merged(pieces: list[str | P]) -> list[str | P]:
    """Adjacent literal pieces as one (fewer copies per row), empty ones dropped."""
    merged: list[str | P] = []
    for piece in pieces:
        if isinstance(piece, str) and merged and isinstance(merged[-1], str):
            merged[-1] += piece
        elif piece != "":
            merged.append(piece)
    return merged


def _item_field(items: pl.DataFrame, name: str, config: PromptConfig) -> pl.Series:
    """One item field as text, in item order: lists joined, attributes as `key: value` lines."""
    column = config.item_fields.get(name, name)
    if column not in items.columns:
        raise PromptError(
            f"task {config.task}: template field {{{name}}} is not an items column "
            f"(columns: {', '.join(items.columns)}); map it with item_fields={{'{name}': ...}}"
        )
    values = items[column]
    if name == "attributes":
        return pl.Series(name, [_attributes_text(v) for v in values.to_list()], pl.String)
    if isinstance(values.dtype, pl.List):
        return values.cast(pl.List(pl.String)).list.join(config.list_separator)
    return values.cast(pl.String)


def _attributes_text(value: Any) -> str:
    """`key: value` lines joined by ",\\n"; list values as Python list literals (as ITDR)."""
    if value is None:
        return ""
    attributes = json.loads(value) if isinstance(value, str) else value
    return ",\n".join(
        f"{k}: {v!r}" if isinstance(v, list) else f"{k}: {v}" for k, v in attributes.items()
    )
