"""The evaluation stage: the eval group selects the kind, and the win rate shares the SFT checkpoint."""

from __future__ import annotations

import pytest

from bmc.stages.evaluation import evaluation_kind
from bmc.stages.warm_start import SFT_EVAL_KEYS
from tests.conftest import compose_config


def test_the_eval_group_selects_the_kind_and_winrate_shares_the_sft_checkpoint() -> None:
    def kind(*overrides: str) -> str:
        return evaluation_kind(compose_config(list(overrides)))

    assert kind() == "verifier" and kind("eval=winrate") == "winrate"
    assert kind("eval=none") == kind("eval.enabled=false") == kind("eval=winrate", "eval.enabled=false") == "none"
    with pytest.raises(ValueError, match=r"eval.kind must be one of \['none', 'verifier', 'winrate'\]"):
        kind("eval.kind=accuracy")
    # the SFT cache key holds the evaluation settings of the SFT's own check, as before the eval group existed
    sft_key = [{k: compose_config(o).eval.get(k) for k in SFT_EVAL_KEYS} for o in ([], ["eval=winrate"])]
    assert sft_key[0] == sft_key[1] == {"enabled": True, "batch_size": 128, "max_new_tokens": None}
