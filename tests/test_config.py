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
    assert load_config(write(tmp_path / "c"), {"model.path": "m2"}).model.path == Path("m2")


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
    with pytest.raises(ConfigError, match=r"job\.toml") as error:
        load_config(write(tmp_path), overrides)
    assert message in str(error.value)


def test_a_missing_required_key_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="model: required key missing"):
        load_config(write(tmp_path, MINIMAL.split("[model]")[0]))
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path / "x", "[data"))
    with pytest.raises(ConfigError, match="no such configuration file"):
        load_config(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_override("scoring.batch_size")
