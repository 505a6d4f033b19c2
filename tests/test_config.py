"""The job configuration: TOML in, every key overridable, errors that name the key."""

from pathlib import Path

import pytest

from itdr_batch.run.config import ConfigError, load_config, parse_override
from itdr_batch.tasks import Mode, Task

MINIMAL = """\
[data]
interactions = "data/interactions.parquet"
items = "/abs/items.parquet"
[model]
path = "models/m"
[[adapters]]
name = "itdr"
path = "adapters/itdr"
"""


def write(tmp_path: Path, text: str = MINIMAL) -> Path:
    path = tmp_path / "jobs" / "job.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_relative_paths_are_read_from_the_files_folder(tmp_path: Path) -> None:
    config = load_config(write(tmp_path))
    folder = tmp_path / "jobs"
    assert config.data.interactions == folder / "data" / "interactions.parquet"
    assert config.data.items == Path("/abs/items.parquet")
    assert config.model.path == folder / "models" / "m"
    assert config.adapters[0].path == folder / "adapters" / "itdr"
    assert config.output.dir == Path("out/run")  # a default: relative to where the job runs


def test_defaults_and_per_task_modes(tmp_path: Path) -> None:
    config = load_config(write(tmp_path), {"prompts.tasks": ["tkr", "rp", "uap"]})
    assert [config.mode(t) for t in config.prompts.tasks] == [
        Mode.LIKELIHOOD,
        Mode.LABEL,
        Mode.GENERATE,
    ]
    assert load_config(write(tmp_path)).prompts.tasks == (Task.TKR,)


def test_every_key_can_be_overridden(tmp_path: Path) -> None:
    overrides = dict(
        parse_override(pair)
        for pair in (
            "scoring.batch_size=64",
            'scoring.modes={rp = "likelihood"}',
            "engine.kind=vllm",
            "prompts.evaluation=true",
            "model.chat=llama3",
        )
    )
    config = load_config(write(tmp_path), overrides)
    assert config.scoring.batch_size == 64
    assert config.mode(Task.RP) is Mode.LIKELIHOOD
    assert config.engine_config().engine == "vllm"
    assert config.prompts.evaluation is True
    assert config.model.chat == "llama3"
    # A flag's path is the working directory's, not the file's.
    assert load_config(write(tmp_path / "c"), {"model.path": "m2"}).model.path == Path.cwd() / "m2"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"scoring.mode": "best"}, "scoring.mode: Input should be 'generate', 'likelihood' or"),
        ({"scoring.modes": {"tkr": "label"}}, "scoring.modes.tkr: task tkr cannot be scored"),
        ({"engine.kind": "trt"}, "engine.kind: Input should be 'auto', 'vllm' or 'hf'"),
        ({"prompts.domain": "cars"}, "prompts.domain: unknown domain 'cars'; known: movie"),
        ({"prompts.tasks": ["tkr", "tui"]}, "tui scores items"),
        ({"model.chat": "chatml"}, "model.chat: unknown chat format 'chatml'"),
        ({"scoring.typo": 1}, "scoring.typo: unknown key"),
        ({"prompts.tasks": ["cdr"]}, "task cdr needs prompts.source_domain"),
    ],
)
def test_errors_name_the_key_and_what_is_allowed(
    tmp_path: Path, overrides: dict[str, object], message: str
) -> None:
    # Each key was set on the command line; the CDR check is about the file's missing domains.
    origin = r"job\.toml" if message.startswith("task cdr") else "command line"
    with pytest.raises(ConfigError, match=origin) as error:
        load_config(write(tmp_path), overrides)
    assert message in str(error.value)


def test_a_missing_required_key_and_bad_toml(tmp_path: Path) -> None:
    # [model] may be left out (a dry run needs none: see test_new_user.py); [data] may not.
    with pytest.raises(ConfigError, match="data: required key missing"):
        load_config(write(tmp_path, MINIMAL.split("[model]")[1]))
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path / "x", "[data"))
    with pytest.raises(ConfigError, match="no such configuration file"):
        load_config(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_override("scoring.batch_size")


def test_paths_are_stored_absolute_wherever_they_were_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A manifest records absolute inputs, so `evaluate` from another folder reads the same
    files: command-line paths are relative to the working directory, TOML paths to the file."""
    monkeypatch.chdir(tmp_path)
    config = load_config(Path("jobs/../jobs/job.toml") if write(tmp_path) else None)
    assert config.data.interactions == tmp_path / "jobs" / "data" / "interactions.parquet"
    overridden = load_config(
        Path("jobs/job.toml"), {"data.interactions": "elsewhere/i.parquet", "model.path": "m"}
    )
    assert overridden.data.interactions == tmp_path / "elsewhere" / "i.parquet"
    assert overridden.model.path == tmp_path / "m"
    assert overridden.adapters[0].path.is_absolute()


def test_errors_blame_the_command_line_for_what_it_set(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(write(tmp_path), {"scoring.batch_size": 0})
    assert str(raised.value).startswith("command line: scoring.batch_size: Input should be")
    assert "job.toml" not in str(raised.value)
    bad_file = write(tmp_path, MINIMAL + "[scoring]\nretries = -1\n")
    with pytest.raises(ConfigError) as raised:
        load_config(bad_file, {"scoring.batch_size": 0})
    lines = sorted(str(raised.value).splitlines())
    assert lines[0].startswith(f"{bad_file}: scoring.retries")
    assert lines[1].startswith("command line: scoring.batch_size")


@pytest.mark.parametrize("value", ['"yes"', '"true"', "1"])
def test_booleans_are_booleans(tmp_path: Path, value: str) -> None:
    text = MINIMAL + f"[prompts]\nevaluation = {value}\n"
    with pytest.raises(ConfigError, match=r"prompts\.evaluation: Input should be a valid boolean"):
        load_config(write(tmp_path, text))
    with pytest.raises(ConfigError, match=r"command line: engine\.enforce_eager"):
        load_config(write(tmp_path), {"engine.enforce_eager": "yes"})
