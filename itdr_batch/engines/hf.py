"""transformers + PEFT: the reference engine, and the fallback where vLLM cannot run.

Requests are grouped by adapter and bucketed by length (batches under a padded-token budget).
Prompts are left-padded with explicit position ids, so padding never changes a score. Likelihood
scoring runs each prompt and all of its answers as one shared-prefix tree (``engines.tree``):
the prompt once, then its answers' trie on its KV cache, and the output layer only where an
answer token is predicted.
"""

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch

from itdr_batch.engines.adapters import Adapter
from itdr_batch.engines.base import Failure, Prompt, TokenCounts, isolate, too_long
from itdr_batch.engines.config import EngineConfig
from itdr_batch.engines.tree import Trees, Trie, build_trees

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Output-layer rows per pass are capped so their logits stay under this many floats.
LOGITS_BUDGET = 64 * 1024 * 1024
# A batch is cut where its padding would pass this share of its tokens: requests of similar
# length share a batch and an outlier starts its own, rather than padding the rest to its length.
MAX_PADDING = 1 / 16


class HfEngine:
    name = "hf"
    likelihood_path = "shared-prefix tree: each prompt once, then its answers' trie on its KV cache"
    likelihood_refusal: str | None = None

    def __init__(
        self, config: EngineConfig, adapters: Sequence[Adapter], model: Any | None = None
    ) -> None:
        """Loads ``config.model`` and the adapters, unless ``model`` (with them) is given."""
        from transformers import GenerationConfig

        if model is None:
            model = _load(config, adapters)
        self._model = model.eval()
        # The transformers model under PEFT's wrapper (its LoRA layers apply from inside).
        self._causal = model.get_base_model() if hasattr(model, "get_base_model") else model
        self._device = next(model.parameters()).device
        self._generation = GenerationConfig.from_model_config(model.config)
        self._pad = 0
        self.max_model_len = config.max_model_len
        self.adapters = {a.name: a for a in adapters}
        self._batch_tokens = config.batch_tokens
        self.tokens = TokenCounts()

    def generate(self, prompts: Sequence[Prompt], max_tokens: int) -> list[list[int] | Failure]:
        eos = self._generation.eos_token_id
        stops = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])

        def run(batch: list[int]) -> list[list[int]]:
            ids, mask, _ = self._left_padded([prompts[i] for i in batch])
            self._count(ids, mask)
            out = self._model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=max_tokens,
                do_sample=False,
                pad_token_id=self._pad,
                eos_token_id=sorted(stops) or None,
            )
            results = []
            for row in out[:, ids.shape[1] :].tolist():
                end = next((i + 1 for i, t in enumerate(row) if t in stops), len(row))
                results.append(row[:end])
            return results

        return self._batched(prompts, [max_tokens] * len(prompts), run)

    def next_token_logprobs(
        self, prompts: Sequence[Prompt], token_ids: Sequence[int]
    ) -> list[list[float] | Failure]:
        wanted = torch.tensor(list(token_ids), device=self._device)

        def run(batch: list[int]) -> list[list[float]]:
            ids, mask, positions = self._left_padded([prompts[i] for i in batch])
            self._count(ids, mask)
            logits = self._model(
                input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=1
            ).logits[:, -1]
            scores: list[list[float]] = torch.log_softmax(logits.float(), -1)[:, wanted].tolist()
            return scores

        return self._batched(prompts, [1] * len(prompts), run)

    def continuation_logprobs(
        self, prompts: Sequence[Prompt], continuations: Sequence[Sequence[Sequence[int]]]
    ) -> list[list[list[float]] | Failure]:
        # The same length limit as vLLM's, which samples one token after prompt + answer.
        longest = [max((len(c) for c in cs), default=0) + 1 for cs in continuations]
        # Each request's trie, built once: its size batches it, and its tree is built from it.
        tries = [Trie.of(cs) for cs in continuations]
        sizes = [len(p.ids) + len(t.inner) for p, t in zip(prompts, tries, strict=True)]

        def run(batch: list[int]) -> list[list[list[float]]]:
            trees = build_trees(
                [prompts[i].ids for i in batch], [tries[i] for i in batch], self._pad
            )
            return trees.split(self._tree_scores(trees))

        return self._batched(prompts, longest, run, sizes)

    def forget(self) -> None:
        """Nothing outlives a call here."""

    def close(self) -> None:
        del self._model

    def _tree_scores(self, trees: Trees) -> list[float]:
        """Each answer token's log-probability, in ``trees.targets`` order: the prompts as a
        prefill, then the trie nodes on the prompts' KV cache."""
        prompt_ids, prompt_mask, prompt_positions = self._on_device(
            trees.prompt_ids, trees.prompt_mask, trees.prompt_positions
        )
        reads, targets = self._on_device(trees.reads, trees.targets)
        self.tokens.sent += trees.sent
        self.tokens.computed += trees.tokens
        decoder = self._causal.get_decoder()
        prompts = decoder(
            input_ids=prompt_ids,
            attention_mask=prompt_mask,
            position_ids=prompt_positions,
            use_cache=True,
        )
        hidden = prompts.last_hidden_state[:, -1]
        if trees.node_ids.shape[1]:
            node_ids, node_positions, node_mask, rows, columns = self._on_device(
                trees.node_ids,
                trees.node_positions,
                trees.node_mask,
                trees.node_rows,
                trees.node_columns,
            )
            dtype = self._causal.dtype
            # Additive, as every attention implementation reads it (sdpa, eager).
            bias = torch.zeros(node_mask.shape, dtype=dtype, device=node_mask.device)
            bias.masked_fill_(~node_mask, torch.finfo(dtype).min)
            nodes = decoder(
                input_ids=node_ids,
                attention_mask=bias,
                position_ids=node_positions,
                past_key_values=prompts.past_key_values,
                use_cache=True,
            )
            hidden = torch.cat([hidden, nodes.last_hidden_state[rows, columns]])
        head = self._causal.get_output_embeddings()
        scores = torch.empty(len(targets), dtype=torch.float32, device=hidden.device)
        per_pass = max(1, LOGITS_BUDGET // head.out_features)
        for start in range(0, len(hidden), per_pass):
            logprobs = torch.log_softmax(head(hidden[start : start + per_pass]).float(), -1)
            mine = (reads >= start) & (reads < start + per_pass)
            scores[mine] = logprobs[reads[mine] - start, targets[mine]]
        return scores.tolist()

    def _count(self, ids: torch.Tensor, mask: torch.Tensor) -> None:
        self.tokens.sent += int(mask.sum())
        self.tokens.computed += ids.numel()

    def _left_padded(self, batch: list[Prompt]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        width = max(len(p.ids) for p in batch)
        ids = torch.full((len(batch), width), self._pad)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for r, p in enumerate(batch):
            ids[r, width - len(p.ids) :] = torch.tensor(p.ids)
            mask[r, width - len(p.ids) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        ids, mask, positions = self._on_device(ids, mask, positions)
        return ids, mask, positions

    def _batched(
        self,
        prompts: Sequence[Prompt],
        extra: Sequence[int],
        run: Callable[[list[int]], list[Any]],
        sizes: Sequence[int] | None = None,
    ) -> list[Any]:
        """Run per adapter over length-sorted batches; too-long and failing requests fail alone.

        ``extra``: positions each request needs past its prompt; ``sizes``: each request's tokens
        in the forward pass (default: its prompt's).
        """
        results: list[Any] = [
            too_long(p, n, self.max_model_len) for p, n in zip(prompts, extra, strict=True)
        ]
        runnable = [i for i, r in enumerate(results) if r is None]
        lengths = [len(p.ids) for p in prompts] if sizes is None else sizes
        for indices in batches(prompts, lengths, runnable, self._batch_tokens):
            with torch.inference_mode(), self._adapter(prompts[indices[0]].adapter):
                for i, value in zip(indices, isolate(run, indices), strict=True):
                    results[i] = value
        return results

    def _on_device(self, *tensors: torch.Tensor) -> list[torch.Tensor]:
        return [t.to(self._device) for t in tensors]

    def _adapter(self, name: str | None) -> AbstractContextManager[Any]:
        if not self.adapters:
            return nullcontext()
        if name is None:
            return self._model.disable_adapter()  # type: ignore[no-any-return]
        self._model.set_adapter(self.adapters[name].key)
        return nullcontext()


def batches(
    prompts: Sequence[Prompt], lengths: Sequence[int], indices: list[int], budget: int
) -> Iterator[list[int]]:
    """Length-sorted batches of one adapter: at most ``budget`` tokens padded, padding at most
    MAX_PADDING of them (a request longer than the budget runs alone)."""
    order = sorted(indices, key=lambda i: (prompts[i].adapter or "", lengths[i]))
    batch: list[int] = []
    real = 0
    for i in order:
        # Ascending lengths: request i sets the batch's width.
        padded = lengths[i] * (len(batch) + 1)
        if batch and not (
            prompts[batch[0]].adapter == prompts[i].adapter
            and padded <= budget
            and padded - real - lengths[i] <= MAX_PADDING * padded
        ):
            yield batch
            batch, real = [], 0
        batch.append(i)
        real += lengths[i]
    if batch:
        yield batch


def _load(config: EngineConfig, adapters: Sequence[Adapter]) -> Any:
    from transformers import AutoModelForCausalLM

    model: Any = AutoModelForCausalLM.from_pretrained(
        config.model,
        dtype=DTYPES.get(config.dtype, "auto"),
        use_safetensors=None if config.allow_pickle else True,
        trust_remote_code=config.trust_remote_code,
        device_map="cuda" if torch.cuda.is_available() else None,
    )
    if adapters:
        from peft import PeftModel

        first, *rest = adapters
        model = PeftModel.from_pretrained(model, first.path, adapter_name=first.key)
        for adapter in rest:
            model.load_adapter(str(adapter.path), adapter_name=adapter.key)
    return model
