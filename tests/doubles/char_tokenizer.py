"""A tokenizer of one token per character: lengths that count characters, for the gates and judges of the data
stages."""

from __future__ import annotations


class CharTokenizer:
    """One token per character: token edit distances are character edit distances. No BOS: a prompt is served as
    it is."""

    bos_token = None

    def __call__(self, texts: list[str], add_special_tokens: bool = False) -> dict[str, list[list[int]]]:
        return {"input_ids": [[ord(c) for c in text] for text in texts]}
