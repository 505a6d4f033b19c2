"""Balanced presentation orders (issue #17, item 1): ``scoring.permutations = K`` scores each
ranking row under K cyclic shifts of its candidates and fuses them into one row per user."""

import json
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from helpers import Canonical, WriteJob, committed_units
from polars.testing import assert_frame_equal
from scipy.stats import kendalltau
from test_job import ITDR_BATCH, _wait_for, check_nothing_lost, read_run
from typer.testing import CliRunner

from itdr_batch.cli import app
from itdr_batch.engines import Engine, open_engine
from itdr_batch.engines.base import Failure, Prompt
from itdr_batch.evaluate import evaluate
from itdr_batch.run import Manifest, run_job
from itdr_batch.run.config import load_config
from itdr_batch.run.export import export_requests
from itdr_batch.run.orders import fuse_orders
from itdr_batch.status import SCORE_STATUS
from itdr_batch.tasks import Mode

CANDIDATES = 5


def dry(job: Path, users: Path, out: Path, **overrides: Any) -> pl.DataFrame:
    run_job(load_config(job, overrides), users, out, dry_run=True)
    return pl.read_parquet(out / "tkr.parquet")


@pytest.fixture
def job(write_job: WriteJob, tmp_path: Path) -> Path:
    return write_job(tmp_path, prompts={"tasks": ["tkr"]})


def test_one_order_is_todays_prompts_and_every_candidate_visits_every_position(
    job: Path, movielens: Canonical, tmp_path: Path
) -> None:
    one = dry(job, movielens.users, tmp_path / "one")
    assert one["order"].unique().to_list() == [0]
    every = dry(job, movielens.users, tmp_path / "all", **{"scoring.permutations": CANDIDATES})
    assert every.height == one.height * CANDIDATES
    first = every.filter(pl.col("order") == 0)
    assert_frame_equal(first.drop("run_id"), one.drop("run_id"))
    for (user,), orders in every.group_by("user_id"):
        assert orders["order"].to_list() == list(range(CANDIDATES)), user
        lists = orders["candidates"].to_list()
        assert all(sorted(c) == sorted(lists[0]) for c in lists)
        for position in range(CANDIDATES):
            assert sorted(c[position] for c in lists) == sorted(lists[0])
        for candidates, at in zip(lists, orders["held_out_position"], strict=True):
            assert candidates[at] == orders["held_out_item_id"][0]
        assert orders["prompt"].n_unique() == CANDIDATES


def test_orders_do_not_depend_on_the_batch_size(
    job: Path, movielens: Canonical, tmp_path: Path
) -> None:
    runs = [
        dry(
            job,
            movielens.users,
            tmp_path / str(size),
            **{"scoring.permutations": 3, "scoring.batch_size": size},
        )
        for size in (2, 7)
    ]
    assert_frame_equal(runs[0].drop("run_id"), runs[1].drop("run_id"))


def test_exported_requests_name_each_order(job: Path, movielens: Canonical, tmp_path: Path) -> None:
    out = tmp_path / "dry"
    dry(job, movielens.users, out, **{"scoring.permutations": 3})
    export_requests(out)
    ids = pl.read_ndjson(out / "tkr.jsonl")["custom_id"]
    assert ids.is_unique().all()
    assert set(ids.str.split("/").list.last()) == {"0", "1", "2"}


def test_orders_do_not_depend_on_the_sharding(
    job: Path, movielens: Canonical, tmp_path: Path
) -> None:
    users = pl.read_parquet(movielens.users)
    halves = [users.filter(pl.col("user_id") % 2 == parity) for parity in (0, 1)]
    parts = []
    for i, half in enumerate(halves):
        half.write_parquet(tmp_path / f"shard{i}.parquet")
        parts.append(dry(job, tmp_path / f"shard{i}.parquet", tmp_path / f"run{i}",
                         **{"scoring.permutations": 3}))  # fmt: skip
    whole = dry(job, movielens.users, tmp_path / "whole", **{"scoring.permutations": 3})
    joined = pl.concat(parts).sort("user_id", "order").drop("run_id")
    assert_frame_equal(joined, whole.sort("user_id", "order").drop("run_id"))


def test_more_orders_than_candidates_is_refused(job: Path) -> None:
    with pytest.raises(ValueError, match=r"scoring.permutations \(6\) is more than"):
        load_config(job, {"scoring.permutations": CANDIDATES + 1})


def scored(
    users: Sequence[str],
    candidates: Sequence[Sequence[int]],
    scores: Sequence[Sequence[float] | None],
    ranks: Sequence[Sequence[int] | None] | None = None,
    reasons: Sequence[str | None] | None = None,
) -> pl.DataFrame:
    """Scored prompts as ``score_unit`` hands them to ``fuse_orders``."""
    n = len(users)
    reasons = reasons or [None] * n
    return pl.DataFrame(
        {
            "user_id": users,
            "order": [i % 3 for i in range(n)],
            "candidates": candidates,
            "rank": ranks or [None] * n,
            "score": scores,
            "prob": [None] * n,
            "status": ["ok" if r is None else r for r in reasons],
            "reason": reasons,
            "detail": [None if r is None else "injected" for r in reasons],
        },
        schema_overrides={
            "rank": pl.List(pl.UInt32),
            "score": pl.List(pl.Float64),
            "prob": pl.List(pl.Float64),
            "status": SCORE_STATUS,
            "reason": pl.String,
            "detail": pl.String,
        },
    )


def test_scores_are_averaged_per_candidate_whatever_its_position() -> None:
    candidates = [[1, 2, 3], [3, 1, 2], [2, 3, 1]]
    # Each order's scores are in its presented order; candidate 1 gets -1, -2, -3.
    frame = scored(
        ["u"] * 3, candidates, [[-1.0, -5.0, -6.0], [-7.0, -2.0, -4.0], [-3.0, -8.0, -3.0]]
    )
    fused = fuse_orders(frame, "user_id", 3, Mode.LIKELIHOOD).row(0, named=True)
    assert fused["candidates"] == [1, 2, 3]
    assert fused["score"] == pytest.approx([-2.0, -4.0, -7.0])
    assert fused["score_std"] == pytest.approx([1.0, 1.0, 1.0])
    assert fused["rank"] == [1, 2, 3]
    assert sum(fused["prob"]) == pytest.approx(1.0)
    assert fused["n_perms"] == 3
    # Per order, the scores of candidates 1, 2, 3.
    by_order = [[-1.0, -5.0, -6.0], [-2.0, -4.0, -7.0], [-3.0, -3.0, -8.0]]
    pairs = [(0, 1), (0, 2), (1, 2)]
    expected = [kendalltau(by_order[i], by_order[j]).statistic for i, j in pairs]
    assert fused["kendall_tau"] == pytest.approx(sum(expected) / 3)


def test_generate_rankings_are_fused_by_mean_rank_and_ties_do_not_follow_position() -> None:
    candidates = [[1, 2, 3], [3, 1, 2], [2, 3, 1]]
    # Every order ranks by position alone: all mean ranks tie at 2.
    frame = scored(["u"] * 3, candidates, [None] * 3, ranks=[[1, 2, 3]] * 3)
    fused = fuse_orders(frame, "user_id", 3, Mode.GENERATE).row(0, named=True)
    assert fused["score"] == [-2.0, -2.0, -2.0]
    assert sorted(fused["rank"]) == [1, 2, 3]
    assert fused["prob"] == [None, None, None]
    winners = set()
    for user in "abcdefgh":
        frame = scored([user] * 3, candidates, [None] * 3, ranks=[[1, 2, 3]] * 3)
        winners.add(fuse_orders(frame, "user_id", 3, Mode.GENERATE)["rank"][0].to_list().index(1))
    assert len(winners) > 1, "ties break by user and item, not always at the first position"


def test_a_failed_order_rejects_the_user() -> None:
    candidates = [[1, 2], [2, 1], [1, 2]] * 2
    frame = scored(
        ["u"] * 3 + ["v"] * 3,
        candidates,
        [[-1.0, -2.0], [-2.0, -1.0], [-1.0, -2.0], [-1.0, -2.0], None, [-1.0, -2.0]],
        reasons=[None, None, None, None, "engine_error", None],
    )
    fused = fuse_orders(frame, "user_id", 3, Mode.LIKELIHOOD)
    assert fused["user_id"].to_list() == ["u", "v"]
    assert fused["reason"].to_list() == [None, "engine_error"]
    assert fused["detail"].to_list() == [None, "injected"]
    assert fused["score"].to_list()[1] is None
    assert fused["kendall_tau"].to_list() == [1.0, None]


class PositionEngine:
    """A real engine whose likelihood scores depend on position alone: the k-th candidate of
    every prompt gets -k (the one check the issue allows a wrapper for)."""

    def __init__(self, engine: Engine) -> None:
        self.inner = engine
        self.name = engine.name
        self.max_model_len = engine.max_model_len
        self.adapters = engine.adapters
        self.tokens = engine.tokens
        self.likelihood_refusal = engine.likelihood_refusal

    @property
    def likelihood_path(self) -> str:
        return self.inner.likelihood_path

    def continuation_logprobs(self, prompts: Sequence[Prompt], continuations: Any) -> list[Any]:
        outs = self.inner.continuation_logprobs(prompts, continuations)
        return [
            out if isinstance(out, Failure) else [[-float(k)] * len(c) for k, c in enumerate(out)]
            for out in outs
        ]

    def generate(self, prompts: Sequence[Prompt], max_tokens: int) -> list[Any]:
        return self.inner.generate(prompts, max_tokens)

    def next_token_logprobs(self, prompts: Sequence[Prompt], token_ids: Sequence[int]) -> list[Any]:
        return self.inner.next_token_logprobs(prompts, token_ids)

    def forget(self) -> None:
        self.inner.forget()

    def close(self) -> None:
        self.inner.close()


@pytest.mark.slow
def test_all_orders_remove_a_purely_positional_bias(
    job: Path, movielens: Canonical, tmp_path: Path
) -> None:
    config = load_config(job)
    engine = open_engine(config.engine_config())
    try:
        biased, balanced = tmp_path / "one", tmp_path / "all"
        run_job(config, movielens.users, biased, engine=PositionEngine(engine))
        every = load_config(job, {"scoring.permutations": CANDIDATES})
        run_job(every, movielens.users, balanced, engine=PositionEngine(engine))
    finally:
        engine.close()
    one = evaluate(biased)["tasks"]["tkr"]["a1"]["position_bias"]["model"]
    assert one["top1_share"][0] == 1.0
    assert one["hr@1"][1:] == [0.0] * (CANDIDATES - 1)

    results = read_run(balanced)["tkr"]
    assert results["n_perms"].unique().to_list() == [CANDIDATES]
    assert results["score"].n_unique() == 1, "every candidate's mean is the same"
    all_orders = evaluate(balanced)["tasks"]["tkr"]["a1"]["position_bias"]["model"]
    assert max(all_orders["top1_share"]) < 0.6
    check_nothing_lost(balanced, pl.read_parquet(movielens.users)["user_id"].to_list(), ["a1"])


@pytest.mark.slow
def test_three_orders_give_the_same_rows_whatever_the_batches_and_a_kill(
    job: Path, movielens: Canonical, tmp_path: Path
) -> None:
    """The transformers engine, TKR by likelihood with adapter a1, three orders per user."""
    three = {"scoring.permutations": 3, "scoring.batch_size": 2}
    config = load_config(job, three)
    engine = open_engine(config.engine_config())
    try:
        reference = tmp_path / "reference"
        run_job(config, movielens.users, reference, engine=engine)
        other = tmp_path / "batch5"
        run_job(load_config(job, three | {"scoring.batch_size": 5}), movielens.users, other,
                engine=engine)  # fmt: skip
        killed = tmp_path / "killed"
        args = ["score", "--users", movielens.users, "--config", job, "--out", killed,
                "--set", "scoring.permutations=3", "--set", "scoring.batch_size=2"]  # fmt: skip
        process = subprocess.Popen([ITDR_BATCH, *map(str, args)], stderr=subprocess.DEVNULL)
        for _ in _wait_for(lambda: committed_units(killed) >= 2, process):
            pass
        process.send_signal(signal.SIGKILL)
        assert process.wait() == -signal.SIGKILL
        assert not (killed / "_manifest.json").exists()
        run_job(config, movielens.users, killed, engine=engine)
    finally:
        engine.close()
    results = read_run(reference)["tkr"]
    one = tmp_path / "one"
    run_job(load_config(job, {"scoring.batch_size": 2}), movielens.users, one, dry_run=True)
    costs = [
        Manifest.model_validate_json((run / "_manifest.json").read_text()).throughput
        for run in (one, reference)
    ]
    assert costs[0].prompts_per_row == 1.0
    assert costs[1].prompts_per_row == 3.0
    assert costs[1].prompt_tokens_per_row is not None
    users = pl.read_parquet(movielens.users)["user_id"].to_list()
    check_nothing_lost(reference, users, ["a1"])
    assert results["n_perms"].unique().to_list() == [3]
    spread = results["score_std"].to_numpy()
    assert (spread >= 0.0).all()
    assert spread.max() > 0.0, "the tiny model reads where a candidate stands"
    assert results.group_by("user_id").agg(pl.col("prob").sum())["prob"].to_list() == (
        pytest.approx([1.0] * results["user_id"].n_unique())
    )
    assert results["kendall_tau"].is_between(-1.0, 1.0).all()
    for name, frame in read_run(reference).items():
        assert_frame_equal(read_run(killed)[name], frame)
        # The batch size is part of the configuration, so of the run id.
        assert_frame_equal(read_run(other)[name].drop("run_id"), frame.drop("run_id"))


@pytest.mark.slow
def test_bench_orders_compares_k_with_one_order(
    cli: CliRunner, shared_data: Path, tmp_path: Path
) -> None:
    result = cli.invoke(
        app,
        [
            "bench", "orders", "--users", "6", "--orders", "2", "--engine", "hf",
            "--data", str(shared_data / "movielens-latest-small"),
            "--tokenizer", str(shared_data / "qwen2.5-tokenizer"),
            "--workdir", str(tmp_path / "work"), "--json", str(tmp_path / "orders.json"),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    figures = json.loads((tmp_path / "orders.json").read_text())
    assert set(figures["orders"]) == {"1", "2"}
    one, two = figures["orders"]["1"], figures["orders"]["2"]
    assert (one["prompts_per_user"], two["prompts_per_user"]) == (1.0, 2.0)
    assert one["kendall_tau"] is None
    assert -1.0 <= two["kendall_tau"] <= 1.0
    ratio = figures["over_one_order"]["2"]["prompt_tokens"]
    assert ratio == pytest.approx(2.0, rel=0.05), "two orders of the same prompt, reordered"
