"""Model and adapter folders: safetensors only, remote code only when asked, content identities,
and engine settings that name the wrong key."""

import json
import shutil
from pathlib import Path

import pytest
from pydantic import ValidationError

from itdr_batch.dev.tiny import Tiny
from itdr_batch.engines import AdapterSpec, EngineConfig, ModelError
from itdr_batch.engines.adapters import check_model, load_adapter


def copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_adapter_identity_follows_its_bytes(tiny: Tiny, tmp_path: Path) -> None:
    spec = tiny.adapters[0]
    adapter = load_adapter(spec, allow_pickle=False)
    assert adapter.rank == 8
    assert adapter.key == f"a1@{adapter.content_hash[:12]}"
    same = load_adapter(AdapterSpec(name="a1", path=copy(spec.path, tmp_path / "a1")), False)
    assert same.content_hash == adapter.content_hash
    weights = tmp_path / "a1" / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert load_adapter(AdapterSpec(name="a1", path=tmp_path / "a1"), False).content_hash != (
        adapter.content_hash
    )


def test_pickled_weights_are_refused_unless_allowed(tiny: Tiny, tmp_path: Path) -> None:
    folder = copy(tiny.adapters[0].path, tmp_path / "pickled")
    (folder / "adapter_model.safetensors").rename(folder / "adapter_model.bin")
    spec = AdapterSpec(name="p", path=folder)
    with pytest.raises(ModelError, match=r"adapter_model\.bin is pickled.*allow_pickle = true"):
        load_adapter(spec, allow_pickle=False)
    assert load_adapter(spec, allow_pickle=True).rank == 8

    model = copy(tiny.model, tmp_path / "model")
    (model / "model.safetensors").rename(model / "pytorch_model.bin")
    with pytest.raises(ModelError, match=r"weights are pickled.*allow_pickle = true"):
        check_model(model, allow_pickle=False, trust_remote_code=False)
    check_model(model, allow_pickle=True, trust_remote_code=False)


def test_remote_code_needs_trust(tiny: Tiny, tmp_path: Path) -> None:
    model = copy(tiny.model, tmp_path / "glm-like")
    config = json.loads((model / "config.json").read_text())
    config["auto_map"] = {
        "AutoModelForCausalLM": "modeling_chatglm.ChatGLMForConditionalGeneration"
    }
    (model / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match=r"GLM-4 does.*trust_remote_code = true"):
        check_model(model, allow_pickle=False, trust_remote_code=False)
    check_model(model, allow_pickle=False, trust_remote_code=True)


def test_bad_adapter_folders_name_the_problem(tiny: Tiny, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"adapter 'x'.*no adapter_config\.json"):
        load_adapter(AdapterSpec(name="x", path=tmp_path), False)
    folder = copy(tiny.adapters[0].path, tmp_path / "prefix")
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps(config | {"peft_type": "PREFIX_TUNING"}))
    with pytest.raises(ModelError, match="peft_type is 'PREFIX_TUNING', only LORA"):
        load_adapter(AdapterSpec(name="x", path=folder), False)
    with pytest.raises(ModelError, match=r"no config\.json"):
        check_model(tmp_path, allow_pickle=False, trust_remote_code=False)


def test_engine_settings_name_the_wrong_key() -> None:
    with pytest.raises(ValidationError, match=r"engine\n.*'auto', 'vllm' or 'hf'"):
        EngineConfig.model_validate({"model": "m", "engine": "tgi"})
    with pytest.raises(ValidationError, match=r"dtype\n.*'float32', 'bfloat16' or 'float16'"):
        EngineConfig.model_validate({"model": "m", "dtype": "fp8"})
    with pytest.raises(ValidationError, match="max_lora"):
        EngineConfig.model_validate({"model": "m", "max_lora": 2})
    with pytest.raises(ValidationError, match="repeated: a"):
        EngineConfig.model_validate(
            {"model": "m", "adapters": [{"name": "a", "path": "x"}, {"name": "a", "path": "y"}]}
        )


def test_a_built_adapter_does_not_depend_on_the_hash_seed(tiny: Tiny) -> None:
    """PEFT writes target_modules in set order; the builder sorts them, so the same seed gives
    the same bytes (and so the same adapter hash and run id) in every process."""
    config = json.loads((tiny.adapters[0].path / "adapter_config.json").read_text())
    assert config["target_modules"] == sorted(config["target_modules"])
