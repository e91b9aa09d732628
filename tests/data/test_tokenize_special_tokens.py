"""Each tokenizer's own special tokens: a prompt starts with BOS exactly once where the model uses one
(bmc.data.tokenize.encode_prompts); responses end with the token that ends an assistant turn in the model's
chat format, and generation stops there (response_end_id, bmc.generation.stop_token_ids)."""

from __future__ import annotations

import pytest
from tokenizers.processors import TemplateProcessing

from bmc.data.tokenize import encode_prompts, encode_responses, response_end_id
from bmc.generation import stop_token_ids
from bmc.tokenizer import train_bpe_tokenizer

# (end-of-turn token, chat template) as the model families write them
TEMPLATES = {
    "gemma": ("<end_of_turn>", "{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' "
              "else m['role'] }}\n{{ m['content'] }}<end_of_turn>\n{% endfor %}"
              "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"),
    "chatml": ("<|im_end|>", "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
               "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"),
    "phi3": ("<|end|>", "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
             "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"),
}  # fmt: skip


def _tokenizer(family: str | None):
    tokenizer = train_bpe_tokenizer(["user: hello\nassistant: hi there"] * 4, vocab_size=300)
    if family is not None:
        end, template = TEMPLATES[family]
        starts = {"gemma": ["<start_of_turn>"], "chatml": ["<|im_start|>"], "phi3": ["<|user|>", "<|assistant|>"]}
        tokenizer.add_special_tokens({"additional_special_tokens": [end, *starts[family]]})
        tokenizer.chat_template = template
    return tokenizer


@pytest.mark.parametrize("family", sorted(TEMPLATES))
def test_responses_end_with_the_chat_templates_end_of_turn_token(family: str) -> None:
    tokenizer = _tokenizer(family)
    end = tokenizer.convert_tokens_to_ids(TEMPLATES[family][0])
    assert response_end_id(tokenizer) == end != tokenizer.eos_token_id
    (ids,) = encode_responses(tokenizer, ["hi there"])
    assert ids[-1] == end and tokenizer.decode(ids[:-1]) == "hi there"
    model = type("Model", (), {"generation_config": type("Config", (), {"eos_token_id": tokenizer.eos_token_id})()})
    assert stop_token_ids(model(), tokenizer) == [tokenizer.eos_token_id, end]  # sampling stops where training ends


def test_without_a_chat_template_or_an_end_token_in_it_responses_end_with_eos() -> None:
    plain = _tokenizer(None)
    assert response_end_id(plain) == plain.eos_token_id
    assert encode_responses(plain, ["hi"])[0][-1] == plain.eos_token_id
    no_special = _tokenizer(None)
    no_special.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    assert response_end_id(no_special) == no_special.eos_token_id
    refusing = _tokenizer(None)
    refusing.chat_template = "{{ raise_exception('only system turns') }}"
    assert response_end_id(refusing) == refusing.eos_token_id


def test_prompts_start_with_bos_exactly_once_where_the_tokenizer_uses_one() -> None:
    llama_like = _tokenizer(None)  # a tokenizer whose post-processor puts BOS first, as Llama's and Gemma's do
    bos = llama_like.bos_token_id
    llama_like._tokenizer.post_processor = TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", bos)])
    assert llama_like("hello")["input_ids"][0] == bos
    plain_ids = llama_like("hello", add_special_tokens=False)["input_ids"]
    # a plain prompt gets it; a rendered chat prompt that starts with it (Llama 3's template) does not get two
    assert encode_prompts(llama_like, ["hello", "<bos>hello"]) == [[bos, *plain_ids], [bos, *plain_ids]]
    # a tokenizer that adds no BOS by itself (the tiny model's, GPT-2's, SmolLM2's) gets none
    plain = _tokenizer(None)
    assert encode_prompts(plain, ["hello"]) == [plain("hello", add_special_tokens=False)["input_ids"]]
