"""Prompt construction and candidate sampling: properties, determinism and formats."""

import ast
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from itdr_batch.datasets import SAMPLE, read_movielens
from itdr_batch.prompts.build import PromptConfig, build_prompts
from itdr_batch.prompts.chat import CHAT_FORMATS, ChatFormat
from itdr_batch.prompts.templates import TEMPLATES, ListSpec, TaskTemplate
from itdr_batch.tables.ids import stable_hash
from itdr_batch.tasks import Task

# Titles as real catalogues have them, and worse.
TITLES = st.text(
    alphabet=st.characters(exclude_categories=("Cs", "Co", "Cn")), min_size=1, max_size=30
).filter(lambda t: t.strip() != "")
NASTY = ["It's", 'Say "hi"', "a\nb", "🙂 emoji", "中文标题", "tab\there", "back\\slash", "x\u2028y"]


@pytest.fixture(scope="module")
def sample() -> tuple[pl.DataFrame, pl.DataFrame]:
    data = read_movielens(SAMPLE)
    assert data.interactions is not None
    return data.items, data.interactions


@pytest.fixture(scope="module")
def replicated(sample: tuple[pl.DataFrame, pl.DataFrame]) -> pl.DataFrame:
    """The sample's 50 histories copied to 5,000 users (more than one Rust chunk of rows)."""
    _, interactions = sample
    return pl.concat(
        interactions.with_columns(user_id=pl.col("user_id") + 1000 * copy) for copy in range(100)
    )


def catalogue_and_history(
    titles: list[str], seen: list[int], categories: list[str] | None = None
) -> tuple[pl.DataFrame, pl.DataFrame]:
    items = pl.DataFrame({"item_id": [f"i{k}" for k in range(len(titles))], "title": titles})
    if categories is not None:
        items = items.with_columns(category=pl.Series(categories))
    inter = pl.DataFrame(
        {"user_id": ["u"] * len(seen), "item_id": [f"i{k}" for k in seen], "timestamp": seen}
    )
    return items, inter


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    titles=st.lists(
        st.one_of(TITLES, st.sampled_from(NASTY)), min_size=2, max_size=40, unique=True
    ),
    data=st.data(),
)
def test_tkr_lists_every_candidate_once_and_never_a_seen_item(
    titles: list[str], data: st.DataObject
) -> None:
    n = len(titles)
    seen = data.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=n, unique=True))
    count = data.draw(st.integers(1, 12))
    items, inter = catalogue_and_history(titles, seen)
    config = PromptConfig(task=Task.TKR, candidates=count, seed=data.draw(st.integers(0, 2**32)))
    row = build_prompts(pl.DataFrame({"user_id": ["u"]}), inter, items, config).row(0, named=True)

    candidates = row["candidates"]
    unseen = n - len(seen)
    assert len(candidates) == min(count, unseen)
    assert len(set(candidates)) == len(candidates)
    assert not {f"i{k}" for k in seen} & set(candidates)
    assert row["status"] == ("ok" if unseen >= count else "too_few_candidates")
    title_of = dict(zip(items["item_id"], items["title"], strict=True))
    listed = "\n".join(f"{i}. {title_of[c]}" for i, c in enumerate(candidates, start=1))
    assert row["prompt"].endswith("Candidate list:\n" + listed)


@settings(max_examples=60, deadline=None)
@given(
    titles=st.lists(
        st.one_of(TITLES, st.sampled_from(NASTY)), min_size=3, max_size=20, unique=True
    ),
    categories=st.lists(st.one_of(st.just(""), TITLES), min_size=20, max_size=20),
)
def test_nir_lists_are_python_literals(titles: list[str], categories: list[str]) -> None:
    """NIR's lists parse back, with Python's own parser, to exactly the entries shown."""
    items, inter = catalogue_and_history(titles, [0, 1], categories[: len(titles)])
    config = PromptConfig(task=Task.NIR, candidates=len(titles) - 2)
    row = build_prompts(pl.DataFrame({"user_id": ["u"]}), inter, items, config).row(0, named=True)
    history_part, candidate_part = (
        row["prompt"]
        .split(" in chronological order: ")[1]
        .split(
            ", please select the next movie the user is most likely to watch from the "
            "candidate list: "
        )
    )
    labels = [f"{t}:{c}" for t, c in zip(titles, categories, strict=False)]
    label = dict(zip(items["item_id"], labels, strict=True))
    shown_history = [f"1.{label['i0']}", f"2.{label['i1']}"]
    shown_candidates = [label[c] for c in row["candidates"]]
    assert ast.literal_eval(history_part) == shown_history
    assert ast.literal_eval(candidate_part) == shown_candidates
    # Byte for byte as Python writes the lists.
    assert history_part == repr(shown_history)
    assert candidate_part == repr(shown_candidates)


def test_same_rows_for_any_sharding_and_thread_count(
    sample: tuple[pl.DataFrame, pl.DataFrame], replicated: pl.DataFrame, tmp_path: Path
) -> None:
    items, _ = sample
    users = replicated.select("user_id").unique(maintain_order=True)
    assert users.height == 5_000
    config = PromptConfig(task=Task.TKR, evaluation=True, strategy="popularity", seed=7)
    whole = build_prompts(users, replicated, items, config)

    shard = stable_hash(users["user_id"]) % 3
    parts = [build_prompts(users.filter(shard == k), replicated, items, config) for k in range(3)]
    resharded = pl.concat(parts).sort("user_id")
    assert resharded.equals(whole.sort("user_id"))

    reversed_batch = build_prompts(users.reverse(), replicated, items, config)
    assert reversed_batch.reverse().equals(whole)

    # One thread instead of all of them, in a fresh process.
    users.write_parquet(tmp_path / "users.parquet")
    replicated.write_parquet(tmp_path / "inter.parquet")
    items.write_parquet(tmp_path / "items.parquet")
    code = (
        "import polars as pl;"
        "from itdr_batch.prompts.build import PromptConfig, build_prompts;"
        "from itdr_batch.tasks import Task;"
        f"d = {str(tmp_path)!r};"
        "out = build_prompts(pl.read_parquet(d + '/users.parquet'), pl.read_parquet(d + "
        "'/inter.parquet'), pl.read_parquet(d + '/items.parquet'), PromptConfig(task=Task.TKR, "
        "evaluation=True, strategy='popularity', seed=7));"
        "out.write_parquet(d + '/one_thread.parquet')"
    )
    env = os.environ | {"RAYON_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
    one_thread = pl.read_parquet(tmp_path / "one_thread.parquet")
    assert one_thread.with_columns(status=pl.col("status").cast(pl.String)).equals(
        whole.with_columns(status=pl.col("status").cast(pl.String))
    )


def test_golden_candidates(sample: tuple[pl.DataFrame, pl.DataFrame]) -> None:
    """Pins the candidates of fixed users: a change here changes every run's rows."""
    items, interactions = sample
    users = pl.DataFrame({"user_id": [1, 2, 3]})
    config = PromptConfig(task=Task.TKR, candidates=5, seed=2026, evaluation=True)
    out = build_prompts(users, interactions, items, config)
    assert out["candidates"].to_list() == GOLDEN_CANDIDATES
    assert out["held_out_position"].to_list() == GOLDEN_POSITIONS


GOLDEN_CANDIDATES = [
    [597, 8636, 2492, 95167, 6387],
    [7458, 1250, 80489, 3035, 3400],
    [6552, 3254, 4211, 2424, 2115],
]
GOLDEN_POSITIONS = [2, 2, 3]


def test_held_out_position_is_uniform(
    sample: tuple[pl.DataFrame, pl.DataFrame], replicated: pl.DataFrame
) -> None:
    items, _ = sample
    users = replicated.select("user_id").unique()
    out = build_prompts(users, replicated, items, PromptConfig(task=Task.TKR, evaluation=True))
    counts = out["held_out_position"].value_counts()["count"].to_list()
    assert len(counts) == 10
    assert min(counts) > 400  # 500 expected per position
    # The held-out item is the user's last interaction, and sits at its position.
    first = out.row(0, named=True)
    assert first["candidates"][first["held_out_position"]] == first["held_out_item_id"]


def test_popularity_prefers_popular_items(sample: tuple[pl.DataFrame, pl.DataFrame]) -> None:
    items, interactions = sample
    users = interactions.select("user_id").unique()
    counts = interactions.group_by("item_id").len()
    mean_count: dict[str, float] = {}
    for strategy in ("uniform", "popularity"):
        config = PromptConfig(task=Task.TKR, strategy=strategy, candidates=20)
        drawn = build_prompts(users, interactions, items, config).explode("candidates")
        joined = drawn.join(counts, left_on="candidates", right_on="item_id", how="left")
        mean_count[strategy] = float(joined["len"].fill_null(0).cast(pl.Float64).sum()) / len(
            joined
        )
    assert mean_count["popularity"] > 1.5 * mean_count["uniform"]


def test_unknown_and_empty_users_are_reported(sample: tuple[pl.DataFrame, pl.DataFrame]) -> None:
    items, interactions = sample
    users = pl.DataFrame({"user_id": [1, 424242], "candidates": [[1, -5, 2], None]})
    out = build_prompts(users, interactions, items, PromptConfig(task=Task.TKR, candidates=3))
    assert out["status"].to_list() == ["ok", "empty_history"]
    assert out["prompt"][1] is None
    assert out["candidates"][0].to_list()[:2] == [1, 2]
    assert out["unknown_candidates"].to_list() == [1, 0]


def test_history_keeps_the_most_recent_items(sample: tuple[pl.DataFrame, pl.DataFrame]) -> None:
    items, interactions = sample
    user = interactions.filter(pl.col("user_id") == 3).sort("timestamp", maintain_order=True)
    last = user.tail(2).join(items, on="item_id", maintain_order="left")["title"].to_list()
    config = PromptConfig(task=Task.TKR, history_len=2)
    prompt = build_prompts(pl.DataFrame({"user_id": [3]}), interactions, items, config)["prompt"][0]
    assert f"as follows:\n1. {last[0]}\n2. {last[1]}\nBased on" in prompt


@pytest.mark.parametrize(
    ("name", "wrapped"),
    [
        (
            "qwen",
            "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
            "assistant.<|im_end|>\n<|im_start|>user\nTD\nIN<|im_end|>\n<|im_start|>assistant\n",
        ),
        ("glm4", "[gMASK]<sop><|user|>\nTD\nIN<|assistant|>"),
        (
            "llama3",
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nTD\nIN<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n",
        ),
        ("raw", "TD\nIN"),
    ],
)
def test_chat_formats(name: str, wrapped: str) -> None:
    before, after = CHAT_FORMATS[name].split()
    assert before + "TD\nIN" + after == wrapped


def test_template_override(sample: tuple[pl.DataFrame, pl.DataFrame]) -> None:
    items, interactions = sample
    mine = TaskTemplate(
        description="Rank.",
        input="Seen: {history}\nPick from {candidates} ({items}).",
        lists={
            "history": ListSpec("{title} [{genres}]", "; "),
            "candidates": ListSpec("{index}) {title}", " | "),
        },
    )
    config = PromptConfig(task=Task.TKR, template=mine, history_len=2, candidates=3)
    row = build_prompts(pl.DataFrame({"user_id": [1]}), interactions, items, config).row(
        0, named=True
    )
    title = dict(zip(items["item_id"], items["title"], strict=True))
    offered = " | ".join(f"{i}) {title[c]}" for i, c in enumerate(row["candidates"], start=1))
    assert row["prompt"].startswith("Rank.\nSeen: ")
    assert row["prompt"].endswith(f"\nPick from {offered} (movies).")
    assert row["prompt"].count("; ") == 1
    assert "|" in row["prompt"].split("Seen: ")[1].split("; ")[0]  # genres joined with "|"


def test_chat_format_override_reaches_the_prompt(sample: tuple[pl.DataFrame, pl.DataFrame]) -> None:
    items, interactions = sample
    custom = ChatFormat("<s>[INST] <<{system}>> {content} [/INST]", system="be brief")
    config = PromptConfig(task=Task.UAP, chat=custom)
    prompt = build_prompts(pl.DataFrame({"user_id": [1]}), interactions, items, config)["prompt"][0]
    assert prompt.startswith("<s>[INST] <<be brief>> The objective of attribute prediction")
    assert prompt.endswith("predict his/her age group, gender, and occupation. [/INST]")


def test_configuration_errors_name_the_problem(sample: tuple[pl.DataFrame, pl.DataFrame]) -> None:
    items, interactions = sample
    users = pl.DataFrame({"user_id": [1]})
    # Mapped to a column the items lack (unmapped, NIR falls back: test_category_fallback).
    nir = PromptConfig(task=Task.NIR, item_fields={"category": "nope"})
    with pytest.raises(ValueError, match=r"template field \{category\} is not an items column"):
        build_prompts(users, interactions, items, nir)
    with pytest.raises(ValueError, match="unknown chat format 'qwen3'; known: qwen, glm4"):
        build_prompts(users, interactions, items, PromptConfig(task=Task.TKR, chat="qwen3"))
    with pytest.raises(ValueError, match="task cdr: set source_domain and target_domain"):
        build_prompts(users, interactions, items, PromptConfig(task=Task.CDR))
    with pytest.raises(ValueError, match=r"task ir: interactions need column\(s\) \['review'\]"):
        build_prompts(users, interactions, items, PromptConfig(task=Task.IR))
    odd = TaskTemplate(
        description="TD", input="{history} for {nope}", lists=TEMPLATES[Task.TKR].lists
    )
    with pytest.raises(ValueError, match=r"unknown placeholder \{nope\}; known: item, items"):
        build_prompts(users, interactions, items, PromptConfig(task=Task.TKR, template=odd))
    with pytest.raises(ValueError, match="unknown domain 'films'; known: movie, anime"):
        PromptConfig(task=Task.TKR, domain="films")
    with pytest.raises(ValueError, match="popularity_exponent must be finite"):
        PromptConfig(task=Task.TKR, popularity_exponent=-1)
    with pytest.raises(ValueError, match="'lottery' is not a valid Task"):
        PromptConfig(task="lottery")  # type: ignore[arg-type]
