"""``itdr-batch report``: nights evaluated as one run, run-vs-run comparisons, and the HTML page
opened in a real headless browser (Debian's chromium)."""

import json
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from helpers import JOB_USERS, ROOT, Canonical, WriteJob
from test_evaluate import ranking_frame, text_frame, write_run
from typer.testing import CliRunner

from itdr_batch.cli import app
from itdr_batch.dev.tiny import Tiny
from itdr_batch.evaluate import EvaluationError, evaluate, evaluation
from itdr_batch.intervals import compare
from itdr_batch.nightly import _headline
from itdr_batch.report import ReportError, build_report, write_report
from itdr_batch.run import load_config, run_job

# Where the browser test leaves its screenshot (CI keeps the folder as an artifact).
ARTIFACTS = Path(os.environ.get("ITDR_TEST_ARTIFACTS", ROOT / "out" / "test-artifacts"))


def _ranking_run(folder: Path, users: np.ndarray, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    scores = rng.random((len(users), 5))
    labels = rng.integers(0, 5, len(users))
    frame = ranking_frame(scores, labels).with_columns(
        user_id=pl.Series(np.repeat(users, 5)), prob=pl.lit(0.2)
    )
    return write_run(folder, {"tkr": frame})


@pytest.mark.parametrize("users", [np.arange(40), np.array([f"u-{i}" for i in range(40)])])
def test_a_run_compared_with_itself_differs_by_nothing(tmp_path: Path, users: np.ndarray) -> None:
    run = _ranking_run(tmp_path / "a", users)
    shutil.copytree(run, tmp_path / "b")
    report = build_report([run, tmp_path / "b"])
    (found,) = report.comparisons["tkr"]
    assert (found["first"], found["second"], found["users"]) == ("b/base", "a/base", 40)
    for figures in found["metrics"].values():
        assert figures["difference"] == 0.0
        assert (figures["ci_low"], figures["ci_high"], figures["p_value"]) == (0.0, 0.0, 1.0)
        assert figures["significant"] is False


def test_compare_pairs_only_the_users_both_scored() -> None:
    first = pl.DataFrame({"user_id": [3, 1, 2, 9], "hr@1": [1.0, 0.0, 1.0, 1.0]})
    second = pl.DataFrame({"user_id": [1, 2, 3, 7], "hr@1": [0.0, 0.0, 0.0, 0.0]})
    found = compare(first, second, "user_id", seed=0)
    assert found["users"] == 3
    assert found["metrics"]["hr@1"]["difference"] == pytest.approx(2 / 3)
    alone = compare(first, second.filter(pl.col("user_id") == 1), "user_id", seed=0)
    assert alone == {"users": 1, "metrics": {"hr@1": None}}


def test_a_night_of_shards_is_evaluated_as_one_run(tmp_path: Path) -> None:
    users = np.arange(60)
    whole = _ranking_run(tmp_path / "whole", users)
    frame = pl.read_parquet(whole / "tkr.parquet")
    interactions = pl.read_parquet(whole / "interactions.parquet")
    night = tmp_path / "night"
    model = {"model": {"path": str(tmp_path / "model")}}  # a night's shards share their model
    for i in range(2):
        part = frame.filter(pl.col("user_id") % 2 == i)
        write_run(night / f"shard-{i}", {"tkr": part}, interactions, config=model)
    pooled = evaluation(sorted(night.iterdir()))
    alone = evaluate(whole)
    group, one = pooled.result["tasks"]["tkr"]["base"], alone["tasks"]["tkr"]["base"]
    assert group["users"] == 60
    for scorer in ("model", "popularity"):
        assert group["metrics"][scorer] == pytest.approx(one["metrics"][scorer])
    assert pooled.users["tkr", "base"]["user_id"].sort().to_list() == users.tolist()
    assert pooled.result["runs"] == ["run0", "run0"]

    write_run(night / "shard-1", {"tkr": frame}, interactions, config=model)
    with pytest.raises(EvaluationError, match=r"user_id 0 was scored for 'tkr' by more than one"):
        evaluation(sorted(night.iterdir()))
    write_run(night / "shard-1", {"tkr": frame}, interactions, seed=5, config=model)
    with pytest.raises(EvaluationError, match="not a shard of the same job"):
        evaluation(sorted(night.iterdir()))


def test_report_names_what_it_cannot_read(tmp_path: Path, cli: CliRunner) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReportError, match=r"empty: neither a run folder"):
        build_report([tmp_path / "empty"])
    run = _ranking_run(tmp_path / "x" / "run", np.arange(5))
    shutil.copytree(run, tmp_path / "y" / "run")
    with pytest.raises(ReportError, match="share a folder name"):
        build_report([run, tmp_path / "y" / "run"])
    result = cli.invoke(app, ["report", str(tmp_path / "empty")])
    assert result.exit_code == 2
    assert "neither a run folder" in result.output


@pytest.fixture(scope="module")
def two_runs(
    tiny: Tiny, write_job: WriteJob, movielens: Canonical, tmp_path_factory: pytest.TempPathFactory
) -> list[Path]:
    """Two real runs (tkr likelihood, rp label; adapters a1 and a2; the tiny model on the
    transformers engine), the second with another seed: other candidates, the same users."""
    runs = []
    for seed in (0, 1):
        folder = tmp_path_factory.mktemp(f"report-{seed}")
        job = write_job(folder, scoring={"modes": {"tkr": "likelihood", "rp": "label"}})
        second = tiny.adapters[1]
        more = f'[[adapters]]\nname = "a2"\npath = "{second.path}"\n'
        job.write_text(f"seed = {seed}\n{job.read_text()}{more}")
        runs.append(run_job(load_config(job), movielens.users, folder / f"night-{seed}").out)
    return runs


class _Charts(HTMLParser):
    """Per ``figure.chart`` in the page: whether it holds an svg, its data marks, its caption."""

    def __init__(self) -> None:
        super().__init__()
        self.charts: dict[str, dict[str, object]] = {}
        self._open: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "figure" and "chart" in (found.get("class") or ""):
            self._open = str(found["id"])
            self.charts[self._open] = {"svg": False, "marks": 0, "caption": ""}
        elif self._open and tag == "svg":
            self.charts[self._open]["svg"] = True
        elif self._open and (found.get("id") or "").startswith(f"{self._open}-data-"):
            self.charts[self._open]["marks"] = int(str(self.charts[self._open]["marks"])) + 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "figure":
            self._open = None

    def handle_data(self, data: str) -> None:
        if self._open:
            self.charts[self._open]["caption"] = str(self.charts[self._open]["caption"]) + data


def _chromium() -> str:
    found = shutil.which("chromium")
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("Debian's chromium is missing: .ci/run installs it (apt-get install)")
        pytest.skip("needs Debian's chromium (apt-get install chromium)")
    return found


@pytest.mark.slow
def test_the_report_renders_every_chart_with_data_in_a_browser(
    two_runs: list[Path], cli: CliRunner, tmp_path: Path
) -> None:
    browser = _chromium()
    # Every committed unit's record outlives the parts: one line per (batch, task), with times.
    units = pl.read_ndjson(two_runs[0] / "_units.ndjson")
    batches = -(-JOB_USERS // 4)  # write_job's batch size
    assert units.select("batch", "task").rows() == [
        (b, t) for b in range(batches) for t in ("rp", "tkr")
    ]
    assert units["finished_at"].null_count() == 0
    page = tmp_path / "report.html"
    result = cli.invoke(app, ["report", *map(str, two_runs), "--out", str(page)])
    assert result.exit_code == 0, result.output
    text = page.read_text()
    # Self-contained: no script, nothing fetched.
    for fetch in ("<script", "<link", 'src="http', 'href="http', "url(http", "@import"):
        assert fetch not in text, fetch
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    dom = subprocess.run(
        [browser, *flags, "--dump-dom", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    parser = _Charts()
    parser.feed(dom)
    names = [p.name for p in two_runs]
    expected = {f"differences-{t}" for t in ("tkr", "rp")}
    for name in names:
        expected |= {f"throughput-{name}", f"outcomes-{name}", f"scores-{name}-tkr"}
        expected.add(f"scores-{name}-rp")
        for adapter in ("a1", "a2"):
            expected |= {f"metrics-{name}-tkr-{adapter}", f"metrics-{name}-rp-{adapter}"}
            expected |= {f"position-{name}-tkr-{adapter}", f"reliability-{name}-rp-{adapter}"}
            expected |= {f"confusion-{name}-rp-{adapter}", f"calibration-{name}-tkr-{adapter}"}
    assert set(parser.charts) == expected
    for chart_id, chart in parser.charts.items():
        assert chart["svg"], chart_id
        assert int(str(chart["marks"])) > 0, f"{chart_id} has no data marks"
        assert "users" in str(chart["caption"]), chart_id
    # Paired differences: every later (run, adapter) minus its reference, on all users.
    metrics = parser.charts["differences-tkr"]["caption"]
    assert f"{names[1]}/a1 minus {names[0]}/a1: {JOB_USERS}" in str(metrics)
    assert f"{names[0]}/a2 minus {names[0]}/a1: {JOB_USERS}" in str(metrics)

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "report.png"
    subprocess.run(
        [browser, *flags, "--window-size=1280,4000", f"--screenshot={shot}", page.as_uri()],
        capture_output=True,
        timeout=120,
        check=True,
    )
    assert shot.stat().st_size > 10_000


def test_a_run_without_labels_still_gets_its_rows_and_scores(tmp_path: Path) -> None:
    run = _ranking_run(tmp_path / "prod", np.arange(8))
    body = json.loads((run / "_manifest.json").read_text())
    body["config"]["prompts"]["evaluation"] = False
    body["counts"]["tasks"]["tkr"]["base"] = {"scored": 6, "rejected": 2, "reasons": {"x": 2}}
    body["counts"]["rows"] = 8
    (run / "_manifest.json").write_text(json.dumps(body))
    report = build_report([run])
    shown = {f.id: f for s in report.sections for f in s.figures}
    assert set(shown) == {"scores-prod-tkr", "outcomes-prod"}
    assert "prod: not evaluation-mode runs" in report.sections[0].intro
    assert "2 rejected rows" in shown["outcomes-prod"].caption
    page = write_report(report, tmp_path / "page.html").read_text()
    assert 'id="prod-data-' not in page
    assert page.count('id="outcomes-prod-data-') == 2  # scored and reason x, one bar each

    # The nightly artifact of such a night: where the report is, and why there are no metrics.
    assert _headline(report, "r.html").splitlines() == [
        "Night prod: 8 users. Report: `r.html`",
        "",
        "Not an evaluation-mode run: no metrics.",
    ]

    body["dry_run"] = True
    (run / "_manifest.json").write_text(json.dumps(body))
    with pytest.raises(ReportError, match=r"needs a complete scored run .*dry run: True"):
        build_report([run])


def test_text_tasks_get_their_metrics_without_intervals(tmp_path: Path) -> None:
    same = "a quiet drama about two brothers who run a small bakery in the old town"
    ir = text_frame([same, "nothing alike"], [same, same], "user_id")
    report = build_report([write_run(tmp_path / "texts", {"ir": ir})])
    (figure,) = report.sections[0].figures
    assert figure.id == "metrics-texts-ir-base"
    assert "2 users scored" in figure.caption
    assert "No intervals" in figure.caption
    assert report.sections[0].table is not None
    assert [r[5] for r in report.sections[0].table[1:]] == ["bleu", "rouge1", "rouge2", "rougeL"]
    assert f'id="{figure.id}-data-0"' in str(figure.svg)
