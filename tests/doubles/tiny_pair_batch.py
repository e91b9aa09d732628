"""A tiny model and a batch of three pairs with prompts of different lengths, a one-token response and responses of
unequal length: the shared-prompt tests of the log-probs, the module and the first-batch check score it."""

from __future__ import annotations

import torch

from bmc.data.datamodule import PreferenceDataModule
from bmc.data.tokenize import Truncation


def pair_batch(tokenizer) -> dict[str, torch.Tensor]:
    """Pairs with prompts of different lengths, a one-token response and responses of unequal length."""
    pairs = [
        {"prompt": "Q: 1+1?\nAnswer:", "chosen": " The answer is 2.", "rejected": " It is 3, I think."},
        {"prompt": "Q: what is 12 plus 30?\nAnswer:", "chosen": " 42", "rejected": " The answer is 43."},
        {"prompt": "Q:", "chosen": " The answer is 7 and it is 7.", "rejected": "."},
    ]
    dm = PreferenceDataModule(
        train=pairs, val=pairs, tokenizer=tokenizer, truncation=Truncation(64, 32), batch_size=3, length_grouping=False
    )
    dm.setup()
    return next(iter(dm.val_dataloader()))


def tiny_model_and_pair_batch() -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    from bmc.models import TinyLlama

    torch.manual_seed(0)
    texts = ["Q: what is 12 plus 30?\nAnswer: The answer is 42, I think.", "It is 7."] * 10
    model, tokenizer = TinyLlama(hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64, vocab_size=300).build(
        texts
    )
    return model, pair_batch(tokenizer)
