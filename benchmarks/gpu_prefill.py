"""GPU prefill and tree-likelihood throughput of the transformers engine, Qwen2.5-7B-shaped.

The model has Qwen2.5-7B's exact configuration with random weights (nothing to download), in
bfloat16 on one GPU; prompts are random token ids. In one run it measures:

- ``matmul``: the GPU's bf16 matmul rate (large square ``torch.matmul``), the peak to compare with;
- ``prefill``: prompt tokens/s through the engine's own batching (``next_token_logprobs``: one
  prefill per prompt) and its model-FLOPs utilisation against that peak;
- ``likelihood``: TKR-shaped users (``--prompt-tokens`` prompt tokens, ``--answers`` answers of
  ``--answer-tokens`` tokens) scored as shared-prefix trees (``continuation_logprobs``): users/s
  and the seconds over those of a prefill of the same prompts (goal: at most 1.3);

each on the base model and with a rank-8 LoRA on every linear layer. Usage, on a machine with a
GPU (about 3 minutes on an H200)::

    uv run --extra gpu python benchmarks/gpu_prefill.py --json benchmarks/results/gpu_prefill.json

On the CPU, as a smoke test: ``--layers 1 --users 4 --prompt-tokens 64 --matmul-size 512``.
"""

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from itdr_batch.engines import EngineConfig
from itdr_batch.engines.adapters import Adapter, LoraSettings
from itdr_batch.engines.base import Failure, Prompt
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
LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PREFILL_GOAL = 0.5
LIKELIHOOD_GOAL = 1.3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=512)
    parser.add_argument("--prompt-tokens", type=int, default=400)
    parser.add_argument("--answers", type=int, default=10)
    parser.add_argument("--answer-tokens", type=int, default=12)
    parser.add_argument("--batch-tokens", type=int, default=32768)
    parser.add_argument("--layers", type=int, default=QWEN25_7B["num_hidden_layers"])
    parser.add_argument("--matmul-size", type=int, default=8192)
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
        max_model_len=args.prompt_tokens + args.answer_tokens + 1,
        batch_tokens=args.batch_tokens,
    )
    generator = torch.Generator().manual_seed(1)
    prompts = torch.randint(
        0, config.vocab_size, (args.users, args.prompt_tokens), generator=generator
    ).tolist()
    answers = torch.randint(
        0, config.vocab_size, (args.users, args.answers, args.answer_tokens), generator=generator
    ).tolist()
    peak = matmul_flops_per_s(args.matmul_size, device)
    figures: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "config": "Qwen2.5-7B" if args.layers == QWEN25_7B["num_hidden_layers"] else "reduced",
        "layers": args.layers,
        "users": args.users,
        "prompt_tokens": args.prompt_tokens,
        "answers": args.answers,
        "answer_tokens": args.answer_tokens,
        "batch_tokens": args.batch_tokens,
        "matmul_bf16_tflops": peak / 1e12,
        "flops_per_prompt_token": prefill_flops_per_token(config, args.prompt_tokens),
        "goals": {"prefill_mfu": PREFILL_GOAL, "likelihood_over_prefill": LIKELIHOOD_GOAL},
    }
    base = HfEngine(settings, [], model=model)
    figures["base"] = measure(base, None, prompts, answers, figures, peak)

    settings_r8 = LoraSettings(r=8, target_modules=list(LINEAR))
    adapter = Adapter("lora", Path("-"), 8, "random", None, settings_r8)
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=LINEAR, init_lora_weights=False)
    tuned = get_peft_model(model, lora, adapter_name=adapter.key)
    engine = HfEngine(settings, [adapter], model=tuned)
    figures["lora_r8"] = measure(engine, "lora", prompts, answers, figures, peak)

    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))


def matmul_flops_per_s(n: int, device: str) -> float:
    """The best of several timed bf16 ``n x n @ n x n`` products: the peak a prefill is held to."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    best = float("inf")
    for _ in range(5):
        seconds = timed(lambda: [a @ b for _ in range(10)])
        best = min(best, seconds / 10)
    return 2 * n**3 / best


def prefill_flops_per_token(config: Any, prompt_tokens: int) -> float:
    """Model FLOPs per prompt token of a prefill: every linear layer, and causal attention over
    half the prompt on average; the output layer runs once per prompt and is left out."""
    h, layers = config.hidden_size, config.num_hidden_layers
    kv = config.num_key_value_heads * (h // config.num_attention_heads)
    linear = h * h * 2 + h * kv * 2 + 3 * h * config.intermediate_size
    attention = 2 * h * prompt_tokens / 2
    return float(2 * layers * (linear + attention))


def measure(
    engine: HfEngine,
    adapter: str | None,
    prompts: list[list[int]],
    answers: list[list[list[int]]],
    figures: dict[str, Any],
    peak: float,
) -> dict[str, float]:
    requests = [Prompt(ids, adapter) for ids in prompts]
    warm = max(1, len(requests) // 8)
    engine.next_token_logprobs(requests[:warm], [0])
    engine.continuation_logprobs(requests[:warm], answers[:warm])
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    outputs: list[list[Any]] = []
    prefill = timed(lambda: outputs.append(engine.next_token_logprobs(requests, [0])))
    likelihood = timed(lambda: outputs.append(engine.continuation_logprobs(requests, answers)))
    failed = sum(isinstance(o, Failure) for out in outputs for o in out)
    tokens = sum(len(ids) for ids in prompts)
    tokens_per_s = tokens / prefill
    return {
        "prefill_seconds": prefill,
        "prefill_tokens_per_s": tokens_per_s,
        "prefill_mfu": tokens_per_s * figures["flops_per_prompt_token"] / peak,
        "likelihood_seconds": likelihood,
        "likelihood_users_per_s": len(prompts) / likelihood,
        "likelihood_over_prefill": likelihood / prefill,
        "failed_requests": failed,
        "peak_gpu_gib": torch.cuda.max_memory_allocated() / 2**30
        if torch.cuda.is_available()
        else 0.0,
    }


def timed(work: Callable[[], object]) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    started = time.perf_counter()
    work()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - started


if __name__ == "__main__":
    main()
