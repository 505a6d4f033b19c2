"""The score job end to end on MovieLens latest-small with the tiny model: the CLI with both
engines, resumption after a real SIGKILL, nothing lost, and bad input refused before any output."""

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from helpers import JOB_USERS, Canonical, WriteJob, committed_units
from polars.testing import assert_frame_equal
from typer.testing import CliRunner, Result

from itdr_batch.cli import app
from itdr_batch.dev.tiny import Tiny
from itdr_batch.engines import Engine, Failure, Prompt, load_tokenizer, open_engine
from itdr_batch.run.config import load_config
from itdr_batch.run.job import EngineCrashed, run_job
from itdr_batch.status import ScoreStatus

ITDR_BATCH = Path(sys.executable).parent / "itdr-batch"
TASKS = ("tkr", "rp", "uap")
# vLLM and transformers on the same float32 model (mean log-probabilities, expected ratings).
AGREEMENT = 1e-3


def score(cli: CliRunner, *args: str | Path) -> Result:
    return cli.invoke(app, ["score", *map(str, args)])


def read_run(out: Path) -> dict[str, pl.DataFrame]:
    manifest = json.loads((out / "_manifest.json").read_text())
    return {name: pl.read_parquet(out / file) for name, file in manifest["files"].items()}


def check_nothing_lost(out: Path, users: Sequence[Any], adapters: Sequence[str]) -> None:
    """Every user is in a task's results or its rejects exactly once, per adapter, and the
    manifest's counts are the files' counts."""
    manifest = json.loads((out / "_manifest.json").read_text())
    files = read_run(out)
    rejects = files["rejects"]
    for task in manifest["config"]["prompts"]["tasks"]:
        for adapter in adapters:
            scored = files[task].filter(pl.col("adapter") == adapter)["user_id"].unique()
            refused = rejects.filter(task=task, adapter=adapter)["user_id"]
            assert sorted([*scored, *refused]) == sorted(users), (task, adapter)
            counts = manifest["counts"]["tasks"][task][adapter]
            assert counts["scored"] == scored.len()
            assert counts["rejected"] == refused.len()
            reasons = rejects.filter(task=task, adapter=adapter)["reason"].value_counts()
            assert dict(reasons.iter_rows()) == counts["reasons"]


def check_ranking(frame: pl.DataFrame, candidates: int) -> None:
    per_user = frame.group_by("user_id", "adapter").agg(
        pl.col("rank").sort(),
        pl.col("prob").sum(),
        pl.col("label").sum(),
        pl.col("position").sort(),
    )
    expected = list(range(1, candidates + 1))
    assert all(r == expected for r in per_user["rank"].to_list())
    assert all(p == [i - 1 for i in expected] for p in per_user["position"].to_list())
    assert all(abs(p - 1) < 1e-9 for p in per_user["prob"])
    assert per_user["label"].to_list() == [1] * per_user.height


@pytest.fixture(scope="module")
def users(movielens: Canonical) -> list[int]:
    return pl.read_parquet(movielens.users)["user_id"].to_list()


@pytest.fixture(scope="module")
def job(write_job: WriteJob, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """TKR (likelihood), RP (label) and UAP (generate) in evaluation mode, two users a batch."""
    folder = tmp_path_factory.mktemp("job")
    return write_job(
        folder,
        prompts={"tasks": list(TASKS)},
        scoring={"batch_size": 2, "max_new_tokens": 16},
    )


@pytest.fixture(scope="module")
def reference(cli_module: CliRunner, job: Path, movielens: Canonical) -> Path:
    """An uninterrupted run of the CLI with the transformers engine."""
    out = job.parent / "reference"
    result = score(cli_module, "--users", movielens.users, "--config", job, "--out", out)
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def cli_module() -> CliRunner:
    return CliRunner()


@pytest.mark.slow
def test_score_writes_the_results_contract(reference: Path, users: list[int]) -> None:
    files = read_run(reference)
    manifest = json.loads((reference / "_manifest.json").read_text())
    check_nothing_lost(reference, users, ["a1"])
    check_ranking(files["tkr"], candidates=5)
    # The untrained model's UAP text rarely holds key:value pairs: unparsed, with its text.
    rejects = files["rejects"]
    assert set(rejects["task"]) <= {"uap"}
    assert set(rejects["reason"]) <= {"unparsed"}
    assert rejects["detail"].is_not_null().all()
    rp = files["rp"]
    assert rp.height == len(users)
    assert rp["rating"].is_between(1, 5).all()
    assert rp["label"].is_not_null().all()
    assert set(files["uap"]["status"]) <= {"ok"}
    assert manifest["engine"] == "hf"
    assert manifest["model"]["untrained"] is True
    assert manifest["adapters"][0]["name"] == "a1"
    assert len(manifest["adapters"][0]["sha256"]) == 64
    assert manifest["throughput"]["prompt_tokens_per_s"] > 0
    assert manifest["scoring_paths"]["tkr"].startswith("likelihood, hf: shared-prefix tree")
    assert manifest["scoring_paths"]["rp"].startswith("label, hf")
    tokens = manifest["engine_tokens"]
    # Each prompt read once, plus TKR's answers and padding; nothing from a cache.
    assert tokens["cached"] == 0
    assert tokens["sent"] > manifest["throughput"]["prompt_tokens"]
    assert tokens["computed"] >= manifest["throughput"]["prompt_tokens"]
    assert 1 < tokens["computed_per_prompt_token"] < 2
    assert not (reference / "_parts").exists()
    # The held-out item is one of the presented candidates, at its recorded position.
    assert set(files["tkr"]["run_id"]) == {manifest["run_id"]}


@pytest.mark.slow
def test_score_with_vllm_agrees_with_transformers(
    reference: Path, job: Path, movielens: Canonical, tmp_path: Path
) -> None:
    """The CLI in its own process with vLLM's CPU build (one vLLM per process)."""
    out = tmp_path / "vllm"
    args = ["score", "--users", movielens.users, "--config", job, "--out", out, "--engine", "vllm"]
    done = subprocess.run([ITDR_BATCH, *map(str, args)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["engine"] == "vllm"
    assert "prefix cache (block 32, self-check passed)" in manifest["scoring_paths"]["tkr"]
    assert manifest["engine_tokens"]["cached"] > 0
    ours, theirs = read_run(out), read_run(reference)
    for task, column in (("tkr", "score"), ("rp", "rating")):
        joined = ours[task].join(theirs[task], on=["user_id", "item_id"], suffix="_hf")
        assert joined.height == theirs[task].height
        assert (joined[column] - joined[f"{column}_hf"]).abs().max() < AGREEMENT  # type: ignore[operator]


@pytest.mark.slow
def test_a_run_killed_with_sigkill_resumes_to_the_same_rows(
    cli: CliRunner, reference: Path, job: Path, movielens: Canonical, tmp_path: Path
) -> None:
    out = tmp_path / "killed"
    args: list[str | Path] = ["score", "--users", movielens.users, "--config", job, "--out", out]
    process = subprocess.Popen([ITDR_BATCH, *map(str, args)], stderr=subprocess.DEVNULL)
    for _ in _wait_for(lambda: committed_units(out) >= 3, process):
        pass
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    assert not (out / "_manifest.json").exists()
    committed = len(list(out.glob("_parts/*/[0-9]*.json")))
    assert 3 <= committed < len(TASKS) * 6

    result = score(cli, *args[1:])
    assert result.exit_code == 0, result.output
    resumed, uninterrupted = read_run(out), read_run(reference)
    assert resumed.keys() == uninterrupted.keys()
    for name, frame in uninterrupted.items():
        assert_frame_equal(resumed[name], frame)

    # Rerunning a complete run does nothing.
    mtime = (out / "tkr.parquet").stat().st_mtime_ns
    again = score(cli, *args[1:])
    assert again.exit_code == 0
    assert "already complete" in again.output
    assert (out / "tkr.parquet").stat().st_mtime_ns == mtime


def _wait_for(ready: Any, process: subprocess.Popen[bytes], timeout: float = 120) -> Iterator[None]:
    deadline = time.monotonic() + timeout
    while not ready():
        assert process.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline, "the run committed no batch in time"
        time.sleep(0.02)
        yield


class FlakyEngine:
    """A real engine whose chosen requests fail: ``failures`` times each (None: always), or
    every request from the ``crash_after``-th call on (a dead engine)."""

    def __init__(
        self,
        engine: Engine,
        failing: set[int] | None = None,
        failures: int | None = 1,
        crash_after: int | None = None,
    ) -> None:
        self.inner = engine
        self.name = engine.name
        self.max_model_len = engine.max_model_len
        self.adapters = engine.adapters
        self.failing = failing or set()
        self.failures = failures
        self.crash_after = crash_after
        self.calls = 0
        self.seen: dict[int, int] = {}
        self.tokens = engine.tokens
        self.likelihood_refusal = engine.likelihood_refusal

    @property
    def likelihood_path(self) -> str:
        return self.inner.likelihood_path

    def _fails(self, prompt: Prompt) -> bool:
        key = hash(tuple(prompt.ids))
        if key not in self.failing:
            return False
        self.seen[key] = self.seen.get(key, 0) + 1
        return self.failures is None or self.seen[key] <= self.failures

    def _wrap(self, prompts: Sequence[Prompt], run: Any) -> list[Any]:
        self.calls += 1
        if self.crash_after is not None and self.calls > self.crash_after:
            return [Failure(ScoreStatus.ENGINE_ERROR, "RuntimeError: engine died")] * len(prompts)
        failed = [self._fails(p) for p in prompts]
        outputs = iter(run([p for p, f in zip(prompts, failed, strict=True) if not f]))
        return [
            Failure(ScoreStatus.ENGINE_ERROR, "RuntimeError: injected") if f else next(outputs)
            for f in failed
        ]

    def generate(self, prompts: Sequence[Prompt], max_tokens: int) -> list[Any]:
        return self._wrap(prompts, lambda ps: self.inner.generate(ps, max_tokens))

    def next_token_logprobs(self, prompts: Sequence[Prompt], token_ids: Sequence[int]) -> list[Any]:
        return self._wrap(prompts, lambda ps: self.inner.next_token_logprobs(ps, token_ids))

    def continuation_logprobs(self, prompts: Sequence[Prompt], continuations: Any) -> list[Any]:
        index = {id(p): c for p, c in zip(prompts, continuations, strict=True)}
        return self._wrap(
            prompts, lambda ps: self.inner.continuation_logprobs(ps, [index[id(p)] for p in ps])
        )

    def forget(self) -> None:
        self.inner.forget()

    def close(self) -> None:
        self.inner.close()


@pytest.fixture(scope="module")
def job_engine(job: Path) -> Iterator[Engine]:
    engine = open_engine(load_config(job).engine_config())
    yield engine
    engine.close()


def prompt_keys(job: Path, users: Path, out: Path, task: str) -> list[int]:
    """The token-id keys (as FlakyEngine sees them) of a task's prompts, from a dry run."""
    config = load_config(job)
    run_job(config, users, out, dry_run=True)
    tokenizer = load_tokenizer(config.engine_config())
    prompts = pl.read_parquet(out / f"{task}.parquet")["prompt"].to_list()
    ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    return [hash(tuple(i)) for i in ids]


@pytest.mark.slow
def test_failed_requests_are_retried_then_rejected(
    job: Path, job_engine: Engine, movielens: Canonical, users: list[int], tmp_path: Path
) -> None:
    keys = prompt_keys(job, movielens.users, tmp_path / "dry", "rp")
    config = load_config(job, {"prompts.tasks": ["rp"]})
    once = FlakyEngine(job_engine, {keys[0], keys[3]}, failures=1)
    run_job(config, movielens.users, tmp_path / "once", engine=once)
    assert read_run(tmp_path / "once")["rejects"].height == 0
    assert sum(once.seen.values()) == 4  # two requests, each failed once and then succeeded

    always = FlakyEngine(job_engine, {keys[0], keys[3]}, failures=None)
    run_job(config, movielens.users, tmp_path / "always", engine=always)
    rejects = read_run(tmp_path / "always")["rejects"]
    assert rejects.sort("user_id")["user_id"].to_list() == [users[0], users[3]]
    assert set(rejects["reason"]) == {"engine_error"}
    assert set(rejects["detail"]) == {"RuntimeError: injected"}
    check_nothing_lost(tmp_path / "always", users, ["a1"])


@pytest.mark.slow
def test_an_engine_crash_fails_the_shard_and_leaves_it_resumable(
    job: Path, job_engine: Engine, reference: Path, movielens: Canonical, tmp_path: Path
) -> None:
    config = load_config(job)
    out = tmp_path / "crashed"
    with pytest.raises(EngineCrashed, match="resumes from this batch"):
        run_job(config, movielens.users, out, engine=FlakyEngine(job_engine, crash_after=4))
    assert not (out / "_manifest.json").exists()
    assert len(list(out.glob("_parts/*/[0-9]*.json"))) >= 1
    run_job(config, movielens.users, out, engine=job_engine)
    for name, frame in read_run(reference).items():
        assert_frame_equal(read_run(out)[name], frame)


@pytest.mark.slow
def test_every_user_ends_in_results_or_rejects_with_a_reason(
    cli: CliRunner, write_job: WriteJob, movielens: Canonical, tmp_path: Path
) -> None:
    """Unknown users, users whose only interaction is held out, and prompts too long for the
    model each land in the rejects; the rest in the results; the counts add up."""
    interactions = pl.read_parquet(movielens.interactions)
    first = interactions.filter(pl.col("user_id") == 1).head(1)
    lonely = first.with_columns(user_id=pl.lit(900_001, pl.Int64))
    data = tmp_path / "interactions.parquet"
    pl.concat([interactions, lonely]).write_parquet(data)
    shard = [1, 2, 3, 4, 900_001, 900_002]
    pl.DataFrame({"user_id": shard}).write_parquet(tmp_path / "shard.parquet")
    job = write_job(tmp_path, data={"interactions": str(data)}, prompts={"tasks": ["rp"]})

    # RP in label mode needs one token after the prompt: the longest prompt no longer fits.
    lengths = sorted(prompt_lengths(job, tmp_path / "shard.parquet", tmp_path / "dry"))
    assert lengths[0] < lengths[-1]
    limit = lengths[-1]
    out = tmp_path / "run"
    result = score(
        cli, "--users", tmp_path / "shard.parquet", "--config", job, "--out", out,
        "--set", f"engine.max_model_len={limit}",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    rejects = read_run(out)["rejects"]
    reasons = dict(rejects.select("user_id", "reason").iter_rows())
    assert reasons[900_001] == "empty_history"
    assert reasons[900_002] == "unknown_user"
    too_long = [u for u, r in reasons.items() if r == "prompt_too_long"]
    assert 1 <= len(too_long) < 4
    check_nothing_lost(out, shard, ["a1"])


def prompt_lengths(job: Path, users: Path, out: Path) -> list[int]:
    config = load_config(job)
    run_job(config, users, out, dry_run=True)
    tokenizer = load_tokenizer(config.engine_config())
    prompts = pl.read_parquet(out / "rp.parquet")["prompt"].to_list()
    return [len(i) for i in tokenizer(prompts, add_special_tokens=False)["input_ids"]]


def test_dry_run_writes_prompts_that_do_not_depend_on_the_batch_size(
    job: Path, movielens: Canonical, users: list[int], tmp_path: Path
) -> None:
    frames = []
    for size in (1, 5):
        config = load_config(job, {"scoring.batch_size": size})
        run_job(config, movielens.users, tmp_path / str(size), dry_run=True)
        frames.append(read_run(tmp_path / str(size)))
    for name in ("tkr", "rp", "uap"):
        assert_frame_equal(frames[0][name].drop("run_id"), frames[1][name].drop("run_id"))
    tkr = frames[0]["tkr"]
    assert tkr["user_id"].to_list() == users
    assert tkr["prompt"].str.starts_with("<|im_start|>system").all()
    assert (tkr["candidates"].list.len() == 5).all()
    held_out = tkr.select(pl.col("candidates").list.get(pl.col("held_out_position")))
    assert held_out.to_series().to_list() == tkr["held_out_item_id"].to_list()
    manifest = json.loads((tmp_path / "1" / "_manifest.json").read_text())
    assert manifest["dry_run"] is True
    assert manifest["model"] is None


def fake_adapter(folder: Path, hidden: int, pickled: bool = False) -> Path:
    """An adapter folder as PEFT writes it, with LoRA shapes of a model of width ``hidden``."""
    import numpy as np
    from safetensors.numpy import save_file

    folder.mkdir(parents=True)
    config = {"peft_type": "LORA", "r": 8, "target_modules": ["q_proj"]}
    config["base_model_name_or_path"] = "Qwen/Qwen2.5-7B"
    (folder / "adapter_config.json").write_text(json.dumps(config))
    name = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    if pickled:
        (folder / "adapter_model.bin").write_bytes(b"not really a pickle")
    else:
        save_file(
            {name: np.zeros((8, hidden), np.float32)}, str(folder / "adapter_model.safetensors")
        )
    return folder


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing users", "no such users file"),
        ("missing interactions", "no such interactions file"),
        ("duplicate users", "column 'user_id': has duplicate values"),
        ("unknown key", "scoring.bogus: unknown key"),
        ("mode for task", "scoring.modes.tkr: task tkr cannot be scored in mode label"),
        ("bad value", "scoring.batch_size: Input should be greater than or equal to 1"),
        ("adapter for another model", "does not fit model"),
        ("pickled adapter", "is pickled"),
        ("chat format unknown to the model", "not a token of"),
    ],
)
def test_bad_input_fails_before_any_output(
    cli: CliRunner, job: Path, movielens: Canonical, tmp_path: Path, case: str, message: str
) -> None:
    users, extra = movielens.users, []
    if case == "missing users":
        users = tmp_path / "nope.parquet"
    elif case == "missing interactions":
        extra = ["--interactions", str(tmp_path / "nope.parquet")]
    elif case == "duplicate users":
        users = tmp_path / "dupes.parquet"
        pl.DataFrame({"user_id": [1, 2, 2]}).write_parquet(users)
    elif case == "unknown key":
        extra = ["--set", "scoring.bogus=1"]
    elif case == "mode for task":
        extra = ["--set", 'scoring.modes={tkr = "label"}']
    elif case == "bad value":
        extra = ["--batch-size", "0"]
    elif case == "adapter for another model":
        extra = ["--adapter", f"a1={fake_adapter(tmp_path / 'wide', hidden=3584)}"]
    elif case == "pickled adapter":
        extra = ["--adapter", f"a1={fake_adapter(tmp_path / 'bin', 128, pickled=True)}"]
    elif case == "chat format unknown to the model":
        extra = ["--set", 'model.chat="glm4"']
    out = tmp_path / "out"
    result = score(cli, "--users", users, "--config", job, "--out", out, *extra)
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert not out.exists()


@pytest.mark.slow
def test_an_output_folder_holding_another_run_is_refused(
    cli: CliRunner, reference: Path, job: Path, movielens: Canonical
) -> None:
    result = score(
        cli, "--users", movielens.users, "--config", job, "--out", reference, "--seed", "7"
    )
    assert result.exit_code == 2
    assert "already holds the complete run" in result.output
    assert "differs: seed" in " ".join(result.output.split())


@pytest.mark.slow
def test_evaluate_reports_metrics_next_to_the_baselines(cli: CliRunner, reference: Path) -> None:
    result = cli.invoke(app, ["evaluate", str(reference)])
    assert result.exit_code == 0, result.output
    figures = json.loads((reference / "evaluation.json").read_text())
    tkr = figures["tasks"]["tkr"]["a1"]
    assert tkr["users"] == JOB_USERS
    assert set(tkr["metrics"]) == {"model", "random", "popularity"}
    assert 0 <= tkr["metrics"]["model"]["ndcg@10"] <= 1
    assert figures["tasks"]["rp"]["a1"]["metrics"]["model"]["rmse"] > 0
    assert "untrained" in figures["note"]


@pytest.mark.slow
def test_demo_runs_offline_on_a_trained_tokenizer(
    cli: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From a folder with no ../shared beside it: the tokenizer is trained on the sample."""
    monkeypatch.chdir(tmp_path)
    result = cli.invoke(app, ["demo", "--out", "demo", "--engine", "hf"])
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())
    assert "trained on the sample's own text" in output
    assert "The tiny model is untrained" in output
    manifest = json.loads((tmp_path / "demo/run/_manifest.json").read_text())
    assert manifest["counts"]["rows"] == 50
    assert manifest["counts"]["tasks"]["tkr"]["a1"]["scored"] == 50
    evaluation = json.loads((tmp_path / "demo/run/evaluation.json").read_text())
    assert set(evaluation["tasks"]) == {"tkr", "rp"}
    report = tmp_path / "demo/run/report.html"
    assert result.output.rstrip().endswith(f"report: {report.resolve()}")
    assert 'id="metrics-run-tkr-a1"' in report.read_text()
    again = cli.invoke(app, ["demo", "--out", "demo", "--engine", "hf"])
    assert again.exit_code == 0
    assert "already complete" in again.output


@pytest.mark.slow
def test_results_read_back_with_duckdb(reference: Path) -> None:
    """The README's DuckDB queries, on a real run."""
    import duckdb

    tkr, rejects = reference / "tkr.parquet", reference / "rejects.parquet"
    top = duckdb.execute(
        f"SELECT user_id, item_id, score, prob FROM '{tkr}' WHERE rank <= 3 ORDER BY user_id, rank"
    ).fetchall()
    assert len(top) == 3 * JOB_USERS
    assert all(0 < prob <= 1 for *_, prob in top)
    reasons = duckdb.execute(
        f"SELECT task, reason, count(*) FROM '{rejects}' GROUP BY ALL"
    ).fetchall()
    assert {task for task, _, _ in reasons} <= {"uap"}


def test_bench_job_measures_peak_memory_per_shard_size(
    cli: CliRunner, shared_data: Path, tmp_path: Path
) -> None:
    result = cli.invoke(
        app,
        [
            "bench", "job", "--size", "40", "--size", "20", "--batch-size", "8",
            "--data", str(shared_data / "movielens-latest-small"),
            "--workdir", str(tmp_path / "work"), "--json", str(tmp_path / "job.json"),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    figures = json.loads((tmp_path / "job.json").read_text())
    assert figures["interactions_rows"] == 100_836
    assert set(figures["sizes"]) == {"20", "40"}
    log = pl.read_parquet(tmp_path / "work" / "sorted.parquet")
    shuffled = pl.read_parquet(tmp_path / "work" / "shuffled.parquet")
    # Sorted: each user's rows together; shuffled: the same rows, users spread.
    assert log["user_id"].is_sorted()
    assert not shuffled["user_id"].is_sorted()
    assert_frame_equal(shuffled.sort(log.columns), log.sort(log.columns))
    first = log["user_id"].unique().sort()
    for size in ("20", "40"):
        assert set(figures["sizes"][size]) == {"sorted", "shuffled"}
        # Each shard runs on its own users' interactions, as the nightly flow runs it.
        own = log.filter(pl.col("user_id").is_in(first.head(int(size)).implode())).height
        for values in figures["sizes"][size].values():
            assert values["interactions_rows"] == own < figures["interactions_rows"]
            assert values["peak_rss_mb"] > 0
            assert values["prompts_per_s"] > 0
    # The core is timed before and after the shards; the ratios use the mean.
    before, after = figures["core_prompts_per_s_runs"]
    assert before > 0
    assert after > 0
    assert figures["core_prompts_per_s"] == pytest.approx((before + after) / 2)
    ratios = figures["ratios"]
    assert set(ratios) == {
        "core_over_job",
        "core_over_job_by_size",
        "marginal_prompts_per_s",
        "core_over_marginal",
        "shuffled_over_sorted",
        "rss_ratio_largest_to_smallest",
    }
    assert ratios["core_over_job"] == max(ratios["core_over_job_by_size"].values())
    # The marginal rate: the 20 users beyond the smallest shard over its extra seconds (on
    # shards this small the two may take the same time: then there is none).
    for order, rate in ratios["marginal_prompts_per_s"].items():
        extra = figures["sizes"]["40"][order]["seconds"] - figures["sizes"]["20"][order]["seconds"]
        assert rate == pytest.approx(20 / extra)
    # The two logs hold the same rows in another order: the same prompts.
    sorted_run = pl.read_parquet(tmp_path / "work" / "run-sorted-40" / "tkr.parquet")
    shuffled_run = pl.read_parquet(tmp_path / "work" / "run-shuffled-40" / "tkr.parquet")
    assert sorted_run.height == 40
    assert sorted_run["user_id"].to_list() == shuffled_run["user_id"].to_list()


def test_unknown_candidate_ids_are_counted(
    job: Path, movielens: Canonical, users: list[int], tmp_path: Path
) -> None:
    """Provided candidates that are not items are dropped before sampling, and counted in the
    manifest and the printed summary, never silently."""
    items = pl.read_parquet(movielens.items)["item_id"].head(3).to_list()
    shard = tmp_path / "shard.parquet"
    pl.DataFrame({"user_id": users, "candidates": [[*items, -1, -2] for _ in users]}).write_parquet(
        shard
    )
    out = tmp_path / "run"
    result = score(CliRunner(), "--users", shard, "--config", job, "--out", out, "--dry-run")
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["counts"]["left_out"]["tkr"] == {"unknown_candidate_ids": 2 * len(users)}
    assert f"tkr: left out of the prompts: {2 * len(users)} unknown candidate ids" in result.output


class _Interrupt(Exception):
    """Stands for a process killed between two units."""


class _StopAfterOneUnit:
    def start(self, total: int, done: int) -> None:
        del total, done

    def advance(self, users: int, prompts: int, tokens: int) -> None:
        raise _Interrupt

    def finish(self) -> None:
        pass


@pytest.mark.slow
def test_a_resumed_vllm_run_writes_the_uninterrupted_rows_exactly(
    job: Path, movielens: Canonical, tiny: Tiny, vllm_engine: Engine, tmp_path: Path
) -> None:
    """vLLM reads cached prompt prefixes through other kernels than a cold prefill, so each unit
    starts from a cold cache: a resumed unit then computes exactly what it computed before.

    The session's engine (both adapters): closing a second vLLM engine in this process would tear
    down the parallel state the session's engine runs on."""
    adapters = [{"name": a.name, "path": str(a.path)} for a in tiny.adapters]
    config = load_config(
        job, {"engine.kind": "vllm", "prompts.tasks": ["tkr", "rp"], "adapters": adapters}
    )
    engine = vllm_engine
    run_job(config, movielens.users, tmp_path / "whole", engine=engine)
    with pytest.raises(_Interrupt):
        run_job(config, movielens.users, tmp_path / "cut", engine=engine,
                reporter=_StopAfterOneUnit())  # fmt: skip
    assert len(list((tmp_path / "cut").glob("_parts/*/[0-9]*.json"))) == 1
    engine.forget()  # the resuming process starts with an empty cache
    run_job(config, movielens.users, tmp_path / "cut", engine=engine)
    whole, resumed = read_run(tmp_path / "whole"), read_run(tmp_path / "cut")
    for name, frame in whole.items():
        assert_frame_equal(resumed[name], frame)
