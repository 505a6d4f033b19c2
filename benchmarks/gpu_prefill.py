"""GPU prefill throughput of the transformers engine on Qwen2.5-7B's architecture.

The model has Qwen2.5-7B's exact configuration with random weights (nothing to download), in
bfloat16 on one GPU. Prompts are random token ids. The figure is prompt tokens/s through the
engine's own batching (``next_token_logprobs``: one prefill per prompt), base and with a rank-8
LoRA on every linear layer, against the H100 roofline (~75k tokens/s: 13.3
GFLOP/token at 989 TFLOP/s). Usage, on a machine with a GPU::

    uv run --extra gpu python benchmarks/gpu_prefill.py --json benchmarks/results/gpu_prefill.json
"""

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from itdr_batch.engines import EngineConfig
from itdr_batch.engines.adapters import Adapter, LoraSettings
from itdr_batch.engines.base import Prompt
from itdr_batch.engines.hf import HfEngine

# Qwen2.5-7B's config.json (Qwen/Qwen2.5-7B), as published.
QWEN25_7B: dict[str, Any] = {
    "vocab_size": 152064,
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "max_position_embeddings": 131072,
    "rope_theta": 1000000.0,
    "rms_norm_eps": 1e-06,
    "tie_word_embeddings": False,
    "use_sliding_window": False,
}
ROOFLINE_TOKENS_PER_S = 75_000
LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=512)
    parser.add_argument("--prompt-tokens", type=int, default=1024)
    parser.add_argument("--batch-tokens", type=int, default=32768)
    parser.add_argument("--layers", type=int, default=QWEN25_7B["num_hidden_layers"])
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/gpu_prefill.json"))
    args = parser.parse_args()

    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2Config, Qwen2ForCausalLM

    device = "cuda" if torch.cuda.is_available() else "cpu"
    config = Qwen2Config(**QWEN25_7B | {"num_hidden_layers": args.layers})
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device(device):
        model: Any = Qwen2ForCausalLM(config)  # type: ignore[no-untyped-call]
    settings = EngineConfig(
        kind="hf",
        model=Path("random-qwen2.5-7b"),
        dtype="bfloat16",
        max_model_len=args.prompt_tokens + 1,
        batch_tokens=args.batch_tokens,
    )
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(
        0, config.vocab_size, (args.prompts, args.prompt_tokens), generator=generator
    )
    figures: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "config": "Qwen2.5-7B" if args.layers == QWEN25_7B["num_hidden_layers"] else "reduced",
        "layers": args.layers,
        "prompts": args.prompts,
        "prompt_tokens": args.prompt_tokens,
        "batch_tokens": args.batch_tokens,
        "roofline_tokens_per_s": ROOFLINE_TOKENS_PER_S,
    }
    base = HfEngine(settings, [], model=model)
    figures["base"] = measure(base, [Prompt(row) for row in ids.tolist()])

    settings_r8 = LoraSettings(r=8, target_modules=list(LINEAR))
    adapter = Adapter("lora", Path("-"), 8, "random", None, settings_r8)
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=LINEAR, init_lora_weights=False)
    tuned = get_peft_model(model, lora, adapter_name=adapter.key)
    engine = HfEngine(settings, [adapter], model=tuned)
    figures["lora_r8"] = measure(engine, [Prompt(row, "lora") for row in ids.tolist()])

    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))


def measure(engine: HfEngine, prompts: list[Prompt]) -> dict[str, float]:
    engine.next_token_logprobs(prompts[: max(1, len(prompts) // 8)], [0])  # warm-up
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    started = time.perf_counter()
    outs = engine.next_token_logprobs(prompts, [0])
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    failed = sum(not isinstance(o, list) for o in outs)
    tokens = sum(len(p.ids) for p in prompts)
    return {
        "seconds": seconds,
        "tokens_per_s": tokens / seconds,
        "fraction_of_roofline": tokens / seconds / ROOFLINE_TOKENS_PER_S,
        "failed": failed,
        "peak_gpu_gib": torch.cuda.max_memory_allocated() / 2**30
        if torch.cuda.is_available()
        else 0.0,
    }


if __name__ == "__main__":
    main()
