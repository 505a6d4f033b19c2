"""Shared fixtures: the real public data in ../shared/data, and a CLI runner."""

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data; on CI its absence is a failure, elsewhere the test is skipped."""
    if not SHARED_DATA.is_dir():
        message = f"real test data not found at {SHARED_DATA} (the shared/ folder beside the repo)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return SHARED_DATA


@pytest.fixture
def cli() -> CliRunner:
    return CliRunner()
