"""evaluate.py on run directories built by hand, so every expected number is known in advance."""

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import polars as pl
import pytest
from rich.console import Console
from typer.testing import CliRunner

from itdr_batch.cli import app
from itdr_batch.evaluate import EvaluationError, evaluate, render, write_json
from itdr_batch.hashing import files_digest

RUN_ID = "run0"
RATING_SCALE = [1.0, 2.0, 3.0, 4.0, 5.0]
ATTRIBUTES = pl.List(pl.Struct({"key": pl.String, "value": pl.String}))


def write_run(
    run: Path,
    tables: dict[str, pl.DataFrame],
    interactions: pl.DataFrame | None = None,
    *,
    key: str = "user_id",
    seed: int = 0,
    **manifest: Any,
) -> Path:
    """A run directory: each task's Parquet file, the interactions table and the manifest."""
    run.mkdir(parents=True, exist_ok=True)
    data = run / "interactions.parquet"
    if interactions is None:
        interactions = pl.DataFrame(
            {"user_id": [0], "item_id": [0], "timestamp": [0], "rating": [3.0]}
        )
    interactions.write_parquet(data)
    for task, frame in tables.items():
        frame.write_parquet(run / f"{task}.parquet")
    prompts: dict[str, Any] = {"tasks": list(tables), "evaluation": True, "candidates": 10}
    if "cdr" in tables:
        prompts |= {"source_domain": "books", "target_domain": "movies"}
    counts = {"scored": 0, "rejected": 0, "reasons": {}}
    body: dict[str, Any] = {
        "run_id": RUN_ID,
        "status": "complete",
        "dry_run": False,
        "key": key,
        "config_hash": "0" * 64,
        "files": {task: f"{task}.parquet" for task in tables} | {"rejects": "rejects.parquet"},
        "config": {
            "data": {"interactions": str(data), "items": str(run / "items.parquet")},
            "model": {"path": str(run / "model")},
            "prompts": prompts,
            "scoring": {"rating_scale": RATING_SCALE},
            "seed": seed,
        },
        "inputs": {
            "interactions": {
                "path": str(data),
                "bytes": data.stat().st_size,
                "sha256": files_digest([data], names=False),
            }
        },
        "model": {"name": "m", "path": "m", "sha256": "0" * 64, "untrained": False},
        "adapters": [],
        "engine": "hf",
        "versions": {},
        "counts": {"rows": 0, "tasks": {task: {"base": counts} for task in tables}},
        "timings": {
            "started_at": "2026-01-01T00:00:00+00:00",
            "finished_at": "2026-01-01T00:00:01+00:00",
            "batch_seconds": 1.0,
            "build_seconds": 0.5,
            "score_seconds": 0.5,
        },
        "throughput": {
            "rows_per_s": None,
            "prompts_per_s": None,
            "prompt_tokens_per_s": None,
            "prompts": 0,
            "prompt_tokens": 0,
        },
    }
    (run / "_manifest.json").write_text(json.dumps(_merged(body, manifest)))
    return run


def _merged(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``changes``; nested tables are merged key by key."""
    merged = dict(base)
    for key, value in changes.items():
        old = merged.get(key)
        merged[key] = (
            _merged(old, value) if isinstance(old, dict) and isinstance(value, dict) else value
        )
    return merged


def ranking_frame(
    scores: npt.NDArray[np.float64],
    labels: npt.NDArray[np.int64],
    items: list[Any] | None = None,
    adapter: str | None = None,
) -> pl.DataFrame:
    """One row per (user, candidate); user u's held-out candidate is at position ``labels[u]``.

    Candidate j of every user is item ``items[j]`` (default: j), so popularity is per position.
    """
    n, width = scores.shape
    ranks = np.argsort(np.argsort(-scores, axis=1, kind="stable"), axis=1, kind="stable") + 1
    positions = np.tile(np.arange(width), n)
    return pl.DataFrame(
        {
            "user_id": np.repeat(np.arange(n), width),
            "adapter": [adapter] * (n * width),
            "item_id": pl.Series([(items or list(range(width)))[j] for j in positions]),
            "position": pl.Series(positions, dtype=pl.UInt32),
            "rank": pl.Series(ranks.ravel(), dtype=pl.UInt32),
            "score": scores.ravel(),
            "prob": pl.Series([None] * (n * width), dtype=pl.Float64),
            "status": ["ok"] * (n * width),
            "label": positions == np.repeat(labels, width),
            "model": ["m"] * (n * width),
            "run_id": [RUN_ID] * (n * width),
        },
        schema_overrides={"adapter": pl.String},
    )


def metrics(result: dict[str, Any], task: str, adapter: str = "base") -> dict[str, Any]:
    block: dict[str, Any] = result["tasks"][task][adapter]["metrics"]
    return block


def test_random_baseline_matches_its_closed_form(tmp_path: Path) -> None:
    """Under i.i.d. scores the held-out item's rank p is uniform on 1..10 whatever its position,
    so each per-user metric has a known mean and variance: the mean over n users lies within
    4 standard errors (sqrt(var / n)) of it."""
    n, width = 2_000, 10
    rng = np.random.default_rng(1)
    frame = ranking_frame(rng.random((n, width)), np.arange(n) % width)
    result = evaluate(write_run(tmp_path, {"tkr": frame}, seed=7))
    random = metrics(result, "tkr")["random"]
    p = np.arange(1, width + 1)
    per_user = {
        "ndcg@10": 1 / np.log2(p + 1),
        "ndcg@5": np.where(p <= 5, 1 / np.log2(p + 1), 0.0),
        "hr@5": (p <= 5).astype(float),
        "hr@1": (p == 1).astype(float),
        "mrr": 1 / p,
    }
    assert per_user["ndcg@10"].mean() == pytest.approx(0.4544, abs=1e-4)
    for name, values in per_user.items():
        standard_error = math.sqrt(values.var() / n)
        assert abs(random[name] - values.mean()) < 4 * standard_error, name
    assert random["hr@10"] == 1.0
    assert random["p@5"] == pytest.approx(random["hr@5"] / 5)
    assert result["tasks"]["tkr"]["base"]["users"] == n


def test_perfect_and_worst_models(tmp_path: Path) -> None:
    n, width = 50, 10
    labels = np.arange(n) % width
    held_out = np.arange(width) == labels[:, None]
    perfect = np.where(held_out, 2.0, np.random.default_rng(0).random((n, width)))
    worst = np.where(held_out, -1.0, 1.0)
    run = write_run(
        tmp_path,
        {
            "tkr": pl.concat(
                [ranking_frame(perfect, labels), ranking_frame(worst, labels, None, "w")]
            )
        },
    )
    result = evaluate(run)
    best, bad = metrics(result, "tkr")["model"], metrics(result, "tkr", "w")["model"]
    assert (best["hr@1"], best["ndcg@10"], best["mrr"], best["p@5"]) == (1.0, 1.0, 1.0, 0.2)
    assert (bad["hr@1"], bad["hr@5"], bad["hr@10"]) == (0.0, 0.0, 1.0)
    assert bad["mrr"] == pytest.approx(0.1)
    assert bad["ndcg@10"] == pytest.approx(1 / math.log2(11))
    assert list(result["tasks"]["tkr"]) == ["base", "w"]


def test_generate_mode_ranks_and_failed_users(tmp_path: Path) -> None:
    """Without scores the rank column orders the list; a user with neither counts as a miss."""
    labels = np.array([0, 1])
    frame = ranking_frame(np.zeros((2, 4)), labels).with_columns(
        score=pl.lit(None, pl.Float64),
        rank=pl.when(pl.col("user_id") == 0)
        .then(pl.col("position") + 1)
        .otherwise(pl.lit(None, pl.UInt32)),
    )
    result = evaluate(write_run(tmp_path, {"cdr": frame}))
    model = metrics(result, "cdr")["model"]
    assert result["tasks"]["cdr"]["base"]["failed"] == 1
    assert model["hr@1"] == 0.5
    assert model["mrr"] == pytest.approx((1 + 1 / 4) / 2)


def test_popularity_baseline_and_position_ties(tmp_path: Path) -> None:
    """Items "a" and "b" are tied for most interactions: the earlier presented one ranks first."""
    items = ["c", "a", "b", "d"]
    interactions = pl.DataFrame(
        {
            "user_id": [1, 2, 3, 1, 2, 3, 1],
            "item_id": ["a", "a", "a", "b", "b", "b", "c"],
            "timestamp": [0] * 7,
            "rating": [4.0] * 7,
        }
    )
    frame = ranking_frame(np.zeros((2, 4)), np.array([1, 2]), items).with_columns(
        pl.col("user_id").cast(pl.String)
    )
    result = evaluate(write_run(tmp_path, {"tkr": frame}, interactions))
    popularity = metrics(result, "tkr")["popularity"]
    # User 0's held-out "a" (position 1) wins the tie; user 1's "b" (position 2) comes second.
    assert popularity["hr@1"] == 0.5
    assert popularity["mrr"] == pytest.approx((1 + 1 / 2) / 2)

    alone = ranking_frame(np.zeros((1, 4)), np.array([1]), items)
    result = evaluate(write_run(tmp_path / "alone", {"tkr": alone}, interactions))
    assert metrics(result, "tkr")["popularity"]["hr@1"] == 1.0


def rp_frame(
    user: list[int], item: list[int], rating: list[float | None], label: list[float]
) -> pl.DataFrame:
    n = len(user)
    return pl.DataFrame(
        {
            "user_id": user,
            "adapter": [None] * n,
            "item_id": item,
            "rating": rating,
            "rating_argmax": [None] * n,
            "status": ["ok"] * n,
            "label": label,
            "model": ["m"] * n,
            "run_id": [RUN_ID] * n,
        },
        schema_overrides={"adapter": pl.String, "rating": pl.Float64, "rating_argmax": pl.Float64},
    )


def test_rating_prediction(tmp_path: Path) -> None:
    interactions = pl.DataFrame(
        {
            "user_id": [0, 5, 6, 1, 2],
            "item_id": [10, 10, 10, 11, 12],
            "timestamp": [0] * 5,
            "rating": [5.0, 1.0, 1.0, 2.0, 4.0],
        }
    )
    # User 2's prediction failed: it counts as 5.0, the end of the scale farthest from 2.0.
    frame = rp_frame([0, 1, 2], [10, 11, 12], [4.5, 2.0, None], [5.0, 2.0, 2.0])
    result = evaluate(write_run(tmp_path, {"rp": frame}, interactions))
    block = metrics(result, "rp")
    truth = np.array([5.0, 2.0, 2.0])
    predicted = np.array([4.5, 2.0, 5.0])
    assert block["model"]["rmse"] == pytest.approx(np.sqrt(np.mean((predicted - truth) ** 2)))
    assert block["model"]["mae"] == pytest.approx(np.mean(np.abs(predicted - truth)))
    assert result["tasks"]["rp"]["base"]["failed"] == 1
    # Item 10 without user 0's own 5.0 averages 1.0 (with it, 7/3); items 11 and 12 have no other
    # rating, so they fall back to the global mean.
    popularity = np.array([1.0, 13 / 5, 13 / 5])
    assert block["popularity"]["mae"] == pytest.approx(np.mean(np.abs(popularity - truth)))
    # The random baseline draws from the scale, the same draws on every call.
    assert block["random"]["mae"] in {float(np.mean(np.abs(d - truth))) for d in _draws(3)}
    assert evaluate(tmp_path) == result


def _draws(n: int) -> list[npt.NDArray[np.float64]]:
    """Every possible vector of n ratings from the scale."""
    grids = np.meshgrid(*[RATING_SCALE] * n, indexing="ij")
    return list(np.stack([g.ravel() for g in grids], axis=1))


def test_user_attributes(tmp_path: Path) -> None:
    def attributes(pairs: dict[str, str] | None) -> list[dict[str, str]] | None:
        return None if pairs is None else [{"key": k, "value": v} for k, v in pairs.items()]

    truth = [{"gender": "F", "age": "25"}, {"gender": "M"}, {"gender": "F"}, None]
    predicted = [{"Gender": " f ", "age": "30"}, {"gender": "F"}, {}, {"gender": "F"}]
    frame = pl.DataFrame(
        {
            "user_id": [0, 1, 2, 3],
            "adapter": [None] * 4,
            "text": ["x"] * 4,
            "fields": [attributes(p) for p in predicted],
            "status": ["ok"] * 4,
            "label": [attributes(t) for t in truth],
            "model": ["m"] * 4,
            "run_id": [RUN_ID] * 4,
        },
        schema_overrides={"adapter": pl.String, "fields": ATTRIBUTES, "label": ATTRIBUTES},
    )
    result = evaluate(write_run(tmp_path, {"uap": frame}))
    group = result["tasks"]["uap"]["base"]
    model = group["metrics"]["model"]
    assert (group["users"], group["failed"]) == (3, 1)
    assert model["accuracy/gender"] == pytest.approx(1 / 3)
    assert model["accuracy/age"] == 0.0
    assert model["accuracy"] == pytest.approx(1 / 6)
    popularity = group["metrics"]["popularity"]
    assert (popularity["accuracy/gender"], popularity["accuracy/age"]) == (pytest.approx(2 / 3), 1)


def text_frame(
    texts: list[str | None], labels: list[str | None], key: str = "item_id"
) -> pl.DataFrame:
    n = len(texts)
    return pl.DataFrame(
        {
            key: [f"k{k}" for k in range(n)],
            "adapter": [None] * n,
            "text": texts,
            "status": ["ok"] * n,
            "label": labels,
            "model": ["m"] * n,
            "run_id": [RUN_ID] * n,
        },
        schema_overrides={"adapter": pl.String, "text": pl.String, "label": pl.String},
    )


def test_text_tasks(tmp_path: Path) -> None:
    same = "a quiet drama about two brothers who run a small bakery in the old town"
    other = "an action film with car chases and explosions in a big city at night"
    # tui's rows are items, so it runs alone: one run per task.
    tui = text_frame([same, "x"], [same, None])
    ir = text_frame([other, None], [same, same], "user_id")
    untrained = {"untrained": True}
    result = evaluate(write_run(tmp_path / "tui", {"tui": tui}, key="item_id", model=untrained))
    exact = metrics(result, "tui")["model"]
    assert exact["bleu"] == pytest.approx(100.0)
    assert (exact["rouge1"], exact["rouge2"], exact["rougeL"]) == (1.0, 1.0, 1.0)
    assert result["tasks"]["tui"]["base"]["users"] == 1
    assert "untrained" in result["note"]
    assert "no baselines" in result["note"]
    result = evaluate(write_run(tmp_path / "ir", {"ir": ir}, model=untrained))
    different = metrics(result, "ir")
    assert different["model"]["bleu"] < 20.0
    assert 0.0 < different["model"]["rougeL"] < 0.5
    assert (different["random"], different["popularity"]) == (None, None)
    assert result["tasks"]["ir"]["base"]["failed"] == 1
    assert "untrained" in result["note"]
    assert "no baselines" in result["note"]


def test_render_and_write_json(tmp_path: Path) -> None:
    labels = np.array([0, 1])
    run = write_run(
        tmp_path / "run",
        {
            "nir": ranking_frame(np.eye(2, 3), labels),
            "ir": text_frame(["one two three four"], ["one two three four"], "user_id"),
        },
    )
    result = evaluate(run)
    assert "untrained" not in result["note"]
    table = render(result)
    assert table.row_count == 7 + 4
    console = Console(record=True, width=200)
    console.print(table)
    rows = [
        [cell.strip() for cell in line.split("│")[1:-1]]
        for line in console.export_text().splitlines()
    ]
    # Two users who both hit: a bootstrap interval of one point.
    hit = ["nir", "base", "2", "0", "hr@1", "1.0000", "[1.0000, 1.0000]", "1.0000", "0.5000"]
    assert hit in rows
    assert ["ir", "base", "1", "0", "rougeL", "1.0000", "-", "-", "-"] in rows
    out = tmp_path / "out" / "metrics.json"
    write_json(result, out)
    assert json.loads(out.read_text()) == result
    assert [p.name for p in out.parent.iterdir()] == ["metrics.json"]


def _two_labels(run: Path) -> None:
    frame = ranking_frame(np.zeros((2, 3)), np.array([0, 1]))
    write_run(run, {"tkr": frame.with_columns(label=pl.col("label") | (pl.col("item_id") == 2))})


def _edit_manifest(run: Path, **changes: Any) -> None:
    write_run(run, {"rp": rp_frame([0], [0], [3.0], [3.0])})
    manifest = json.loads((run / "_manifest.json").read_text())
    for path, value in changes.items():
        *parents, last = path.split("__")
        node = manifest
        for part in parents:
            node = node[part]
        node[last] = value
    (run / "_manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    ("prepare", "message"),
    [
        (lambda run: run.mkdir(), "no _manifest.json"),
        (lambda run: _edit_manifest(run, status="running"), "not 'complete'"),
        (
            lambda run: _edit_manifest(run, config__prompts__evaluation=False),
            "not an evaluation-mode run",
        ),
        (lambda run: _edit_manifest(run, files__rp="gone.parquet"), "missing result file"),
        (lambda run: _two_labels(run), "user_id 0 has 2 candidates labelled true"),
    ],
    ids=["no-manifest", "incomplete", "not-evaluation", "missing-file", "two-labels"],
)
def test_errors_name_the_problem(tmp_path: Path, prepare: Any, message: str) -> None:
    run = tmp_path / "run"
    prepare(run)
    with pytest.raises(EvaluationError, match=message):
        evaluate(run)


def test_baselines_read_only_the_runs_own_interactions(tmp_path: Path) -> None:
    """The baselines' table must be the one the run read (its sha256 in the manifest): a changed
    or missing file is refused by name, and a moved copy is accepted with --interactions."""
    items = ["c", "a", "b", "d"]
    interactions = pl.DataFrame(
        {"user_id": [1, 2, 3], "item_id": ["a", "a", "b"], "timestamp": [0] * 3}
    )
    frame = ranking_frame(np.zeros((2, 4)), np.array([1, 2]), items)
    run = write_run(tmp_path / "run", {"tkr": frame}, interactions)
    expected = metrics(evaluate(run), "tkr")["popularity"]
    table = run / "interactions.parquet"
    moved = tmp_path / "copy.parquet"
    table.rename(moved)
    with pytest.raises(EvaluationError, match=r"interactions.parquet, which is missing; pass"):
        evaluate(run)
    assert metrics(evaluate(run, moved), "tkr")["popularity"] == expected
    interactions.head(2).write_parquet(table)
    with pytest.raises(EvaluationError, match=r"interactions.parquet is not the run's interact"):
        evaluate(run)
    result = CliRunner().invoke(app, ["evaluate", str(run)])
    assert result.exit_code == 2
    assert "is not the run's interactions table" in result.output
    assert (
        CliRunner().invoke(app, ["evaluate", str(run), "--interactions", str(moved)]).exit_code == 0
    )


def test_a_truncated_result_file_is_named(tmp_path: Path) -> None:
    run = write_run(tmp_path, {"rp": rp_frame([0], [0], [3.0], [3.0])})
    data = (run / "rp.parquet").read_bytes()
    (run / "rp.parquet").write_bytes(data[: len(data) // 2])
    with pytest.raises(EvaluationError, match=r"rp.parquet: cannot be read as Parquet"):
        evaluate(run)


def test_a_shard_runs_popularity_baseline_counts_the_whole_table(tmp_path: Path) -> None:
    """A run on a shard's own interactions (``data.item_counts`` set, as the nightly flow runs
    shards) ranks by the whole table's counts, as its sampling did, not by its shard's."""
    items = ["c", "a", "b", "d"]
    shard = pl.DataFrame({"user_id": [1, 2, 3], "item_id": ["a", "a", "b"], "timestamp": [0] * 3})
    whole = pl.concat(
        [shard, pl.DataFrame({"user_id": [9] * 3, "item_id": ["c"] * 3, "timestamp": [0] * 3})]
    )
    frame = ranking_frame(np.zeros((2, 4)), np.array([0, 0]), items)
    by_whole = metrics(evaluate(write_run(tmp_path / "whole", {"tkr": frame}, whole)), "tkr")
    counts = tmp_path / "item_counts.parquet"
    whole.group_by("item_id").len("count").sort("item_id").write_parquet(counts)
    identity = {"path": str(counts), "bytes": 1, "sha256": files_digest([counts], names=False)}
    run = write_run(
        tmp_path / "shard",
        {"tkr": frame},
        shard,
        config={"data": {"item_counts": str(counts)}},
        inputs={"item_counts": identity},
    )
    assert metrics(evaluate(run), "tkr")["popularity"] == by_whole["popularity"]
    by_shard = metrics(evaluate(write_run(tmp_path / "own", {"tkr": frame}, shard)), "tkr")
    assert by_shard["popularity"] != by_whole["popularity"]
    counts.write_bytes(b"not the counts")
    with pytest.raises(EvaluationError, match="is not the run's item counts"):
        evaluate(run)


# Position bias: hit rate and mean rank by the held-out item's presented position, and where
# each scorer's top-ranked candidate stood.
N, WIDTH = 2_000, 10


def bias(result: dict[str, Any], adapter: str = "base") -> dict[str, Any]:
    block: dict[str, Any] = result["tasks"]["tkr"][adapter]["position_bias"]
    return block


def test_a_model_that_always_picks_the_first_candidate_shows_it(tmp_path: Path) -> None:
    labels = np.arange(N) % WIDTH
    first = np.tile(-np.arange(WIDTH, dtype=float), (N, 1))
    result = evaluate(write_run(tmp_path, {"tkr": ranking_frame(first, labels)}))
    got = bias(result)
    assert got["position"] == list(range(WIDTH))
    assert got["users"] == [N // WIDTH] * WIDTH
    assert got["model"]["hr@1"] == [1.0] + [0.0] * (WIDTH - 1)
    assert got["model"]["mean_rank"] == [p + 1.0 for p in range(WIDTH)]
    assert got["model"]["top1_share"] == [1.0] + [0.0] * (WIDTH - 1)
    assert got["model"]["top1_uniform_p"] < 1e-100
    # The random baseline, on the same users: no position stands out.
    assert got["random"]["top1_uniform_p"] > 1e-4


def test_a_perfect_model_and_the_random_baseline_are_flat(tmp_path: Path) -> None:
    labels = np.random.default_rng(3).integers(0, WIDTH, N)
    perfect = np.where(np.arange(WIDTH) == labels[:, None], 2.0, 1.0)
    result = evaluate(write_run(tmp_path, {"tkr": ranking_frame(perfect, labels)}, seed=5))
    got = bias(result)
    assert got["model"]["hr@1"] == [1.0] * WIDTH
    assert got["model"]["mean_rank"] == [1.0] * WIDTH
    # Its top-1 is the held-out item: the shares are where the held-out items stood.
    assert got["model"]["top1_share"] == pytest.approx(np.bincount(labels) / N)
    for p, users in enumerate(got["users"]):
        # i.i.d. scores: hit rate 1/10 at every position, within 4 standard errors.
        error = 4 * np.sqrt(0.1 * 0.9 / users)
        assert abs(got["random"]["hr@1"][p] - 0.1) < error
        assert abs(got["random"]["mean_rank"][p] - 5.5) < 4 * np.sqrt(8.25 / users)


def test_short_lists_count_only_their_own_positions(tmp_path: Path) -> None:
    labels = np.array([0, 1, 2, 0])
    frame = ranking_frame(np.tile(-np.arange(4, dtype=float), (4, 1)), labels)
    # User 3 was shown two candidates only.
    frame = frame.filter((pl.col("user_id") != 3) | (pl.col("position") < 2))
    got = bias(evaluate(write_run(tmp_path, {"tkr": frame})))
    assert got["position"] == [0, 1, 2, 3]
    assert got["users"] == [2, 1, 1, 0]
    assert got["model"]["hr@1"] == [1.0, 0.0, 0.0, None]
    assert got["model"]["mean_rank"] == [1.0, 2.0, 3.0, None]
    assert got["users_with_full_list"] == 3


def test_evaluate_prints_the_position_table(tmp_path: Path) -> None:
    labels = np.arange(20) % 4
    first = np.tile(-np.arange(4, dtype=float), (20, 1))
    run = write_run(tmp_path / "run", {"tkr": ranking_frame(first, labels)})
    result = CliRunner().invoke(app, ["evaluate", str(run)], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "Position bias" in result.output
    rows = [[cell.strip() for cell in line.split("│")[1:-1]] for line in result.output.splitlines()]
    first_position = next(r for r in rows if r[:3] == ["tkr", "base", "0"])
    # users 5, model hr@1 1, (random's), model mean rank 1, model top-1 share 1.
    assert first_position[3:5] == ["5", "1.000"]
    assert first_position[6:] == ["1.000", "1.000"]
    assert "chi-square p" in result.output


def test_one_candidate_lists_have_no_uniformity_test(tmp_path: Path) -> None:
    frame = ranking_frame(np.ones((3, 1)), np.zeros(3, dtype=np.int64))
    got = bias(evaluate(write_run(tmp_path, {"tkr": frame})))
    assert got["position"] == [0]
    assert got["model"]["hr@1"] == [1.0]
    assert got["model"]["top1_uniform_p"] is None
