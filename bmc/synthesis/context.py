"""What the data stages of :mod:`bmc.synthesis.pipeline` and :mod:`bmc.synthesis.bridging` share."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from bmc.data.sources import TaskData
from bmc.synthesis._common import ExampleIndex


class SynthesisContext:
    """What the data stages share: config, task data, the starting policy (``model`` may be None where no
    stage samples from it) and where to cache."""

    def __init__(
        self,
        data_cfg: dict[str, Any],
        task_data: TaskData,
        model: PreTrainedModel | None,
        tokenizer: PreTrainedTokenizerBase,
        cache_root: str | Path,
        model_key: Any,
        judge_cfg: dict[str, Any] | None = None,
        editor_cfg: dict[str, Any] | None = None,
    ) -> None:
        self.cfg, self.task_data, self.model, self.tokenizer = data_cfg, task_data, model, tokenizer
        self.cache_root, self.model_key = cache_root, model_key
        self.judge_cfg, self.editor_cfg = judge_cfg or {}, editor_cfg or {}
        self.report: dict[str, Any] = {"dropped": Counter()}

        self.verifier = task_data.verifier
        self.examples = ExampleIndex(task_data.pref_examples, f"data={data_cfg.get('name')}")
