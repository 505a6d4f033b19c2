"""Item-prior calibration (issue #17, item 2): ``scoring.pmi`` writes ``score_pmi`` = score minus
the answer's log-probability after the task's content-free prompt, scored once per item and
adapter per run and kept in the run folder; ``scoring.rank_by`` picks the score that ranks. RP's
contextual calibration (``scoring.calibrate_ratings``) writes ``rating_calibrated``."""

import json
import math
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from helpers import Canonical, WriteJob
from polars.testing import assert_frame_equal
from test_job import FlakyEngine, check_nothing_lost, read_run

from itdr_batch.engines import load_tokenizer, open_engine
from itdr_batch.evaluate import evaluate
from itdr_batch.prompts.build import PromptConfig, prepare
from itdr_batch.prompts.chat import chat_format
from itdr_batch.prompts.templates import TEMPLATES
from itdr_batch.run import run_job
from itdr_batch.run.config import load_config
from itdr_batch.run.job import EngineCrashed
from itdr_batch.scoring import Row, Scorer
from itdr_batch.tasks import Task

AGREEMENT = 1e-4  # engines' batch-of-one vs many, as in test_engines.py


@pytest.fixture
def job(write_job: WriteJob, tmp_path: Path) -> Path:
    return write_job(tmp_path, prompts={"tasks": ["tkr"]}, scoring={"pmi": True, "batch_size": 4})


def content_free(config: PromptConfig) -> str:
    """The TKR prompt with its lists as N/A, written out from the template by hand."""
    template = TEMPLATES[Task.TKR]
    before, after = chat_format(config.chat).split()
    text = template.input.format(**config.words(), history="N/A", candidates="N/A")
    return before + template.description + "\n" + text + after


def test_the_content_free_prompt_shows_no_user(job: Path, movielens: Canonical) -> None:
    config = load_config(job).prompt_config(Task.TKR)
    users = pl.read_parquet(movielens.users).head(2)
    prepared = prepare(
        users, pl.read_parquet(movielens.interactions), pl.read_parquet(movielens.items), config
    )
    assert prepared.content_free_prompt() == content_free(config)
    assert "Candidate list:\nN/A" in prepared.content_free_prompt()


def test_rank_by_pmi_needs_pmi_and_pmi_needs_likelihood(job: Path) -> None:
    with pytest.raises(ValueError, match=r'rank_by = "score_pmi" needs scoring.pmi = true'):
        load_config(job, {"scoring.pmi": False, "scoring.rank_by": "score_pmi"})
    with pytest.raises(ValueError, match=r"scoring.pmi: task tkr is scored in generate mode"):
        load_config(job, {"scoring.mode": "generate"})


def score_and_priors(job: Path, users: Path, items: Path, out: Path, kind: str) -> None:
    """Runs in a process of its own (one vLLM per process): the job with ``kind``'s engine
    ranked by score and by score_pmi (``out/score``, ``out/pmi``), and, by hand, the prior of
    every candidate of the first three users: its answer alone after the content-free prompt
    (``out/priors.json``)."""
    config = load_config(job, {"engine.kind": kind})
    engine = open_engine(config.engine_config())
    try:
        run_job(config, users, out / "score", engine=engine)
        pmi = load_config(job, {"engine.kind": kind, "scoring.rank_by": "score_pmi"})
        run_job(pmi, users, out / "pmi", engine=engine)
        prompt = content_free(config.prompt_config(Task.TKR))
        tokenizer = load_tokenizer(config.engine_config())
        scorer = Scorer(engine, tokenizer, config.scoring_config(Task.TKR))
        titles = dict(pl.read_parquet(items).select("item_id", "title").iter_rows())
        first = pl.read_parquet(users)["user_id"].head(3)
        shown = read_run(out / "score")["tkr"].filter(pl.col("user_id").is_in(first.implode()))
        rows = [Row(prompt, [titles[item]], "a1") for item in shown["item_id"]]
        priors = [s.scores[0] if s.scores else None for s in scorer.score(rows)]
    finally:
        engine.close()
    (out / "priors.json").write_text(json.dumps(priors))


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["hf", "vllm"])
def test_score_pmi_is_the_score_minus_the_items_prior(
    kind: str, job: Path, movielens: Canonical, tmp_path: Path
) -> None:
    paths = [str(p) for p in (job, movielens.users, movielens.items, tmp_path)]
    call = (
        "from pathlib import Path; from test_pmi import score_and_priors; "
        f"score_and_priors(*map(Path, {paths!r}), {kind!r})"
    )
    done = subprocess.run(
        [sys.executable, "-c", call], cwd=Path(__file__).parent, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    by_score, by_pmi = tmp_path / "score", tmp_path / "pmi"
    results = read_run(by_score)["tkr"]
    users = pl.read_parquet(movielens.users)["user_id"].to_list()
    check_nothing_lost(by_score, users, ["a1"])
    first = results.filter(pl.col("user_id").is_in(users[:3]))
    priors = pl.Series(json.loads((tmp_path / "priors.json").read_text()), dtype=pl.Float64)
    assert priors.null_count() == 0
    assert max((first["score_pmi"] - (first["score"] - priors)).abs()) < AGREEMENT

    # Ranked by score_pmi: the same scores, the list ordered and normalised by score_pmi.
    ranked = read_run(by_pmi)["tkr"]
    assert_frame_equal(ranked.select("score", "score_pmi"), results.select("score", "score_pmi"))
    for (_,), user in ranked.group_by("user_id"):
        assert user.sort("rank")["score_pmi"].is_sorted(descending=True)
        assert user["prob"].sum() == pytest.approx(1.0)
    assert (ranked["rank"] != results["rank"]).any(), "the prior reorders some lists"
    # Evaluation measures the list as written.
    hits = ranked.filter(pl.col("label") & (pl.col("rank") == 1)).height / len(users)
    model = evaluate(by_pmi)["tasks"]["tkr"]["a1"]["metrics"]["model"]
    assert model["hr@1"] == pytest.approx(hits)


@pytest.mark.slow
def test_priors_are_kept_in_the_run_folder_and_read_back_on_resume(
    job: Path, movielens: Canonical, tmp_path: Path
) -> None:
    # Popular items dominate every list, so later batches show items the first one scored.
    config = load_config(job, {"prompts.strategy": "popularity", "prompts.popularity_exponent": 4})
    engine = open_engine(config.engine_config())
    reference, crashed = tmp_path / "reference", tmp_path / "crashed"
    run_job(config, movielens.users, reference, engine=engine)
    with pytest.raises(EngineCrashed):
        run_job(config, movielens.users, crashed, engine=FlakyEngine(engine, crash_after=2))
    kept = crashed / "_parts" / "priors" / "tkr.a1.parquet"
    priors = pl.read_parquet(kept)
    assert priors.height > 0
    assert priors["item_id"].is_unique().all()
    # Moved by one: a resumed run that reads them back shifts score_pmi by exactly -1 wherever a
    # kept prior served, and nowhere else.
    priors.with_columns(pl.col("prior") + 1.0).write_parquet(kept)
    run_job(config, movielens.users, crashed, engine=engine)
    engine.close()
    resumed, uninterrupted = read_run(crashed)["tkr"], read_run(reference)["tkr"]
    assert_frame_equal(resumed.drop("score_pmi"), uninterrupted.drop("score_pmi"))
    shift = (resumed["score_pmi"] - uninterrupted["score_pmi"]).round(9)
    assert set(shift.to_list()) <= {0.0, -1.0}
    assert -1.0 in shift.to_list()
    assert not kept.exists(), "a complete run drops its work area"


def rp_content_free(config: PromptConfig) -> str:
    template = TEMPLATES[Task.RP]
    before, after = chat_format(config.chat).split()
    text = template.input.format(**config.words(), history="N/A", target="N/A")
    return before + template.description + "\n" + text + after


def test_rating_calibration_needs_the_scales_probabilities(
    write_job: WriteJob, tmp_path: Path
) -> None:
    job = write_job(tmp_path, prompts={"tasks": ["rp"]}, scoring={"calibrate_ratings": True})
    assert load_config(job).calibrated(Task.RP)
    with pytest.raises(
        ValueError, match=r"scoring.calibrate_ratings: task rp is scored in generate"
    ):
        load_config(job, {"scoring.mode": "generate"})


@pytest.mark.slow
def test_rp_contextual_calibration_by_hand(
    write_job: WriteJob, movielens: Canonical, tmp_path: Path
) -> None:
    job = write_job(tmp_path, prompts={"tasks": ["rp"]}, scoring={"calibrate_ratings": True})
    config = load_config(job)
    engine = open_engine(config.engine_config())
    try:
        run_job(config, movielens.users, tmp_path / "run", engine=engine)
        run_job(config, movielens.users, tmp_path / "dry", dry_run=True)
        scorer = Scorer(
            engine, load_tokenizer(config.engine_config()), config.scoring_config(Task.RP)
        )
        prompts = pl.read_parquet(tmp_path / "dry" / "rp.parquet").head(3)
        prompt = rp_content_free(config.prompt_config(Task.RP))
        (neutral,) = scorer.score([Row(prompt, (), "a1")])
        users = scorer.score([Row(p, (), "a1") for p in prompts["prompt"]])
    finally:
        engine.close()
    results = read_run(tmp_path / "run")["rp"]
    check_nothing_lost(
        tmp_path / "run", pl.read_parquet(movielens.users)["user_id"].to_list(), ["a1"]
    )
    scale = config.scoring.rating_scale
    assert neutral.scores is not None
    for user, scored in zip(prompts["user_id"], users, strict=True):
        assert scored.scores is not None
        weights = [math.exp(s - n) for s, n in zip(scored.scores, neutral.scores, strict=True)]
        expected = sum(w * r for w, r in zip(weights, scale, strict=True)) / sum(weights)
        row = results.filter(pl.col("user_id") == user).row(0, named=True)
        assert row["rating_calibrated"] == pytest.approx(expected, abs=AGREEMENT)
        assert row["rating"] == pytest.approx(scored.rating, abs=AGREEMENT)
    assert (results["rating_calibrated"] - results["rating"]).abs().max() > 0.01  # type: ignore[operator]
