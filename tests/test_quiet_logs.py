"""The libraries' logs (vLLM, transformers, torch, Python warnings) go to the run folder's log
file, not the terminal, so a command's result is not buried; ours stay on the terminal; ``-v``
shows everything."""

import io
import logging
import os
import re
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import Canonical, WriteJob

from itdr_batch.run.logs import LOG_FILE, library_logs_to

ITDR_BATCH = Path(sys.executable).parent / "itdr-batch"
# A record of our rich log handler (`[date time] LEVEL message`) or its continuation lines.
RICH_RECORD = re.compile(r"^(\[\d\d/\d\d/\d\d \d\d:\d\d:\d\d\])?\s+(INFO|WARNING|ERROR|\S)")
# vLLM's own record format, which it prints to stdout when it configures its logging.
VLLM_RECORD = re.compile(r"\(\w+ pid=\d+\)")


@pytest.fixture
def terminal(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """The root logger as the CLI's ``setup`` leaves it, writing to a string; restored after."""
    monkeypatch.delenv("VLLM_CONFIGURE_LOGGING", raising=False)
    # An earlier in-process CLI run may have left capture on (pytest restored showwarning since).
    logging.captureWarnings(False)
    stream = io.StringIO()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    root.handlers = [logging.StreamHandler(stream)]
    root.setLevel(logging.INFO)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        yield stream
    logging.captureWarnings(False)
    for handler in root.handlers:
        handler.close()
    root.handlers, root.level = saved


def emit_all() -> None:
    logging.getLogger("itdr_batch.run.job").info("ours: scoring")
    logging.getLogger("vllm.platforms").warning("theirs: libtcmalloc is not found")
    warnings.warn("theirs: deprecated", FutureWarning, stacklevel=1)
    logging.getLogger("transformers").error("theirs: broken")


def test_library_logs_go_to_the_file(terminal: io.StringIO, tmp_path: Path) -> None:
    path = library_logs_to(tmp_path / "run" / LOG_FILE, verbose=False)
    emit_all()
    shown, kept = terminal.getvalue(), path.read_text()
    assert "ours: scoring" in shown
    assert "ours" not in kept
    assert "libtcmalloc" in kept
    assert "libtcmalloc" not in shown
    assert "FutureWarning: theirs: deprecated" in kept
    assert "deprecated" not in shown
    assert "theirs: broken" in kept
    assert "theirs: broken" in shown


def test_verbose_shows_library_logs_too(terminal: io.StringIO, tmp_path: Path) -> None:
    path = library_logs_to(tmp_path / LOG_FILE, verbose=True)
    emit_all()
    shown = terminal.getvalue()
    for line in ("ours: scoring", "libtcmalloc", "theirs: deprecated", "theirs: broken"):
        assert line in shown
    assert "libtcmalloc" in path.read_text()


def test_nothing_logged_no_file(terminal: io.StringIO, tmp_path: Path) -> None:
    """The folder is made by the job (after its checks), not by the logs."""
    library_logs_to(tmp_path / "run" / LOG_FILE, verbose=False)
    logging.getLogger("itdr_batch").info("ours only")
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_vllm_score_shows_a_handful_of_library_lines(
    write_job: WriteJob, movielens: Canonical, tmp_path: Path
) -> None:
    job = write_job(tmp_path, engine={"kind": "vllm"})
    out = tmp_path / "run"
    args = ["score", "--users", movielens.users, "--config", job, "--out", out]
    done = subprocess.run(
        [ITDR_BATCH, *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},  # our records on one line each
    )
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    theirs = [line for line in lines if line.strip() and not RICH_RECORD.match(line)]
    theirs += [line for line in done.stdout.splitlines() if VLLM_RECORD.search(line)]
    assert len(theirs) <= 5, "\n".join(theirs)
    log = out / LOG_FILE
    assert f"library logs: {log}" in done.stdout
    assert "vllm" in log.read_text()
