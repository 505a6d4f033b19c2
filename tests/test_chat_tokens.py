"""Chat formats tokenize to exactly the sequence the adapters were trained on.

Qwen's format is checked against the Qwen2.5 tokenizer's own chat template. GLM-4's and
LLaMA-3's tokenizers cannot be downloaded here, so their markers are added to the Qwen2.5
tokenizer as special tokens: each marker must come out as its one special token, with the content
tokenized on its own between them and no token added in front (engines tokenize with
``add_special_tokens=False``; the formats carry their own BOS).
"""

import copy
import re
from typing import Any

import pytest

from itdr_batch.prompts.chat import CHAT_FORMATS, QWEN_SYSTEM

CONTENT = "Task description here.\nCandidate list:\n1. Toy Story (1995)\n2. Heat (1995)"
MARKERS = {
    "glm4": ["[gMASK]", "<sop>", "<|user|>", "<|assistant|>"],
    "llama3": ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
}


def encode(tokenizer: Any, text: str) -> list[int]:
    ids: list[int] = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids


def test_qwen_matches_the_tokenizers_own_template(tokenizer: Any) -> None:
    before, after = CHAT_FORMATS["qwen"].split()
    ours = before + CONTENT + after
    messages = [{"role": "system", "content": QWEN_SYSTEM}, {"role": "user", "content": CONTENT}]
    theirs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert ours == theirs
    ids = encode(tokenizer, ours)
    im_start, im_end = tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    assert ids[0] == im_start
    assert ids.count(im_start) == 3
    assert ids.count(im_end) == 2
    assert ids[-2:] == encode(tokenizer, "assistant\n")


@pytest.mark.parametrize("name", ["glm4", "llama3"])
def test_markers_are_single_special_tokens(tokenizer: Any, name: str) -> None:
    tok = copy.deepcopy(tokenizer)
    tok.add_special_tokens({"additional_special_tokens": MARKERS[name]})
    before, after = CHAT_FORMATS[name].split()
    expected: list[int] = []
    for piece in re.split(r"(\{content\})", before + "{content}" + after):
        for part in re.split("(" + "|".join(map(re.escape, MARKERS[name])) + ")", piece):
            if part in MARKERS[name]:
                expected.append(tok.convert_tokens_to_ids(part))
            elif part == "{content}":
                expected += encode(tok, CONTENT)
            elif part:
                expected += encode(tok, part)
    assert encode(tok, before + CONTENT + after) == expected
    assert encode(tok, before)[0] == tok.convert_tokens_to_ids(MARKERS[name][0])
