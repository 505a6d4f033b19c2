"""vLLM's offline API (``vllm.LLM``): the same code runs the CUDA build and the CPU build.

Likelihood scoring reads prompt log-probabilities of ``prompt + answer`` while keeping prefix-cache
reads on: each user's prompt is prefilled once, then its candidates reuse the cached blocks and
only compute their own tokens. vLLM skips prefix-cache reads for prompt log-probabilities by
default because cached positions get no log-probabilities; we only need the answer's positions,
and check per request (``num_cached_tokens``) that they were computed, recomputing if not.
"""

import os
from collections.abc import Sequence
from typing import Any

from itdr_batch.engines.adapters import Adapter
from itdr_batch.engines.base import Failure, Prompt, grouped, isolate, too_long
from itdr_batch.engines.config import EngineConfig

# vLLM only accepts these maximum LoRA ranks.
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


class VllmEngine:
    name = "vllm"

    def __init__(self, config: EngineConfig, adapters: Sequence[Adapter]) -> None:
        # Read by vLLM at start-up: quieter logs unless the user asked otherwise, and on the CPU a
        # KV cache sized in GiB (its memory fraction would be a fraction of all RAM).
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        if config.kv_cache_gib is not None:
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(config.kv_cache_gib)
        import vllm
        from vllm.lora.request import LoRARequest
        from vllm.platforms import current_platform

        inline = config.inline_engine
        if inline is None:
            inline = current_platform.is_cpu()
        if inline:
            # One process does everything, so no core is reserved for an engine process and
            # the process's threads are not pinned to the remaining ones.
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
            os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
        options: dict[str, Any] = {}
        if config.block_size is not None:
            options["block_size"] = config.block_size
        if adapters:
            max_rank = max(a.rank for a in adapters)
            options |= {
                "enable_lora": True,
                "max_lora_rank": next((r for r in LORA_RANKS if r >= max_rank), max_rank),
                "max_loras": len(adapters),
            }
        self._llm = vllm.LLM(
            model=str(config.model),
            dtype=config.dtype,
            max_model_len=config.max_model_len,
            gpu_memory_utilization=config.gpu_memory_utilization,
            tensor_parallel_size=config.tensor_parallel_size,
            enforce_eager=config.enforce_eager,
            enable_prefix_caching=True,
            trust_remote_code=config.trust_remote_code,
            seed=config.seed,
            distributed_executor_backend="uni" if inline else None,
            **options,
        )
        self.max_model_len = config.max_model_len
        self.adapters = {a.name: a for a in adapters}
        self._loras = {
            a.name: LoRARequest(a.key, i + 1, str(a.path)) for i, a in enumerate(adapters)
        }
        self._chunk_size = config.chunk_size
        self._vllm = vllm
        # Prompt tokens sent, and those served from the prefix cache, over the engine's life.
        self.prompt_tokens = 0
        self.cached_tokens = 0

    def generate(self, prompts: Sequence[Prompt], max_tokens: int) -> list[list[int] | Failure]:
        params = self._params(temperature=0.0, max_tokens=max_tokens)
        outputs = self._run(prompts, params, max_tokens)
        return [o if isinstance(o, Failure) else list(o.outputs[0].token_ids) for o in outputs]

    def next_token_logprobs(
        self, prompts: Sequence[Prompt], token_ids: Sequence[int]
    ) -> list[list[float] | Failure]:
        params = self._params(max_tokens=1, logprob_token_ids=list(token_ids))
        outputs = self._run(prompts, params, 1)
        return [
            o
            if isinstance(o, Failure)
            else [o.outputs[0].logprobs[0][t].logprob for t in token_ids]
            for o in outputs
        ]

    def continuation_logprobs(
        self, prompts: Sequence[Prompt], continuations: Sequence[Sequence[Sequence[int]]]
    ) -> list[list[list[float]] | Failure]:
        # Phase 1 prefills each prompt once (the prefix cache keeps it); phase 2 scores the
        # answers, which share that prefix.
        longest = [max((len(c) for c in conts), default=0) for conts in continuations]
        warm = [
            p if too_long(p, n + 1, self.max_model_len) is None else None
            for p, n in zip(prompts, longest, strict=True)
        ]
        prefill = self._params(max_tokens=1)
        self._run([p for p in warm if p is not None], prefill, 1)

        flat: list[Prompt] = []
        starts: list[int] = []
        for prompt, conts in zip(prompts, continuations, strict=True):
            for cont in conts:
                flat.append(Prompt(prompt.ids + list(cont), prompt.adapter))
                starts.append(len(prompt.ids))

        scored = self._params(max_tokens=1, prompt_logprobs=0, skip_reading_prefix_cache=False)
        outputs = self._run(flat, scored, 1)
        results: list[list[float] | Failure | None] = [
            o if isinstance(o, Failure) else self._answer(o, starts[i])
            for i, o in enumerate(outputs)
        ]
        # Cache hits that reached into the answer (answers share a block) left no log-probs there.
        missing = [i for i, r in enumerate(results) if r is None]
        if missing:
            again = self._params(max_tokens=1, prompt_logprobs=0, skip_reading_prefix_cache=True)
            redone = self._run([flat[i] for i in missing], again, 1)
            for i, o in zip(missing, redone, strict=True):
                results[i] = o if isinstance(o, Failure) else self._answer(o, starts[i])

        out: list[list[list[float]] | Failure] = []
        pos = 0
        for conts in continuations:
            mine = results[pos : pos + len(conts)]
            pos += len(conts)
            failed = next((r for r in mine if isinstance(r, Failure)), None)
            out.append(failed if failed else [r for r in mine if isinstance(r, list)])
        return out

    def forget(self) -> None:
        self._llm.reset_prefix_cache()

    def close(self) -> None:
        del self._llm

    def _params(self, **kwargs: Any) -> Any:
        return self._vllm.SamplingParams(detokenize=False, **kwargs)

    @staticmethod
    def _answer(output: Any, start: int) -> list[float] | None:
        if output.num_cached_tokens > start - 1:
            return None
        ids = output.prompt_token_ids
        logprobs = output.prompt_logprobs
        return [logprobs[i][ids[i]].logprob for i in range(start, len(ids))]

    def _run(self, prompts: Sequence[Prompt], params: Any, extra: int) -> list[Any]:
        """Outputs in request order; too-long prompts and failing requests become Failures."""
        from vllm.inputs import TokensPrompt

        results: list[Any] = [too_long(p, extra, self.max_model_len) for p in prompts]
        runnable = [i for i, r in enumerate(results) if r is None]
        chunks = grouped([prompts[i] for i in runnable], self._chunk_size)

        def run(indices: list[int]) -> list[Any]:
            outputs: list[Any] = self._llm.generate(
                [TokensPrompt(prompt_token_ids=prompts[i].ids) for i in indices],
                params,
                lora_request=[self._lora(prompts[i].adapter) for i in indices],
                use_tqdm=False,
            )
            self.prompt_tokens += sum(len(o.prompt_token_ids) for o in outputs)
            self.cached_tokens += sum(o.num_cached_tokens or 0 for o in outputs)
            return list(outputs)

        for chunk in chunks:
            indices = [runnable[j] for j in chunk]
            for i, output in zip(indices, isolate(run, indices), strict=True):
                results[i] = output
        return results

    def _lora(self, adapter: str | None) -> Any:
        return None if adapter is None else self._loras[adapter]
