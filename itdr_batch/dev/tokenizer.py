"""A small Qwen-style tokenizer trained in seconds, so the demo runs offline without Qwen2.5's.

Byte-level BPE with Qwen2.5's normalizer (NFC) and pre-tokenizer (its split regex, then bytes):
every string is representable, each digit is its own pre-token (so "1".."5" are single tokens,
as label-mode rating scores need) and the chat markers are special tokens, never split.

Training is deterministic: the ``tokenizers`` BPE trainer sorts its alphabet and breaks equal
pair counts by pair id, so neither thread count (``RAYON_NUM_THREADS``) nor the per-process hash
seed changes ``tokenizer.json``.
"""

import hashlib
import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from itdr_batch.datasets import SAMPLE, read_movielens
from itdr_batch.dev.tiny import BUILD_STAMP, commit_folder, fresh_folder, is_built
from itdr_batch.prompts.chat import CHAT_FORMATS
from itdr_batch.prompts.templates import DOMAINS, TEMPLATES

ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
# Qwen2.5's pre-tokenizer split: letters with one leading non-letter, single digits, punctuation.
QWEN_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# What the trainer must not see: list slots (titles fill them) and chat markers (special tokens,
# which the trainer would learn as ordinary merges).
_GAPS = re.compile(r"\{\w+\}|" + "|".join(re.escape(m) for m in (IM_START, IM_END)))


def train_tokenizer(texts: Iterable[str], out: Path, vocab_size: int = 4096) -> Path:
    """Trains on ``texts`` and saves a folder ``AutoTokenizer.from_pretrained`` loads.

    eos is ``<|im_end|>`` (where Qwen's chat turns end), pad ``<|endoftext|>``, no BOS, and
    nothing is added around encoded text. The vocabulary is smaller than ``vocab_size`` when the
    texts run out of pairs to merge. Idempotent: a folder trained on the same texts and size is
    reused, as ``build_tiny_model`` reuses its models (``texts`` is read into memory to hash it).
    """
    corpus = list(texts)
    stamp = {"kind": "tokenizer", "texts": _digest(corpus), "vocab_size": vocab_size}
    if is_built(out, stamp):
        return out
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[ENDOFTEXT, IM_START, IM_END],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tok,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        clean_up_tokenization_spaces=False,
    )
    tmp = fresh_folder(out)
    fast.save_pretrained(tmp)
    (tmp / BUILD_STAMP).write_text(json.dumps(stamp))
    return commit_folder(tmp, out)


def sample_texts() -> Iterator[str]:
    """What the demo's prompts are made of, so that they tokenize compactly.

    The bundled sample's titles and genres (joined as prompts join them), then the fixed text of
    every task's qwen-format prompt (system prompt, description, input with the movie domain's
    words) and list entries, split at the list slots and chat markers.
    """
    items = read_movielens(SAMPLE).items
    for title, genres in items.select("title", "genres").iter_rows():
        yield title
        yield "|".join(genres)
    words = {f"{{{name}}}": word for name, word in DOMAINS["movie"].words().items()}
    before, after = CHAT_FORMATS["qwen"].split()
    for template in TEMPLATES.values():
        prompt = before + template.description + "\n" + template.input + after
        for text in (prompt, *(spec.entry for spec in template.lists.values())):
            filled = _GAPS.sub(lambda m: words.get(m[0], m[0]), text)
            yield from filter(None, _GAPS.split(filled))


def _digest(texts: list[str]) -> str:
    """A hash of the texts in order; lengths keep ["ab", "c"] and ["a", "bc"] apart."""
    digest = hashlib.sha256()
    for text in texts:
        data = text.encode()
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()
