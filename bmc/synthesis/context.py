"""What the data stages of :mod:`bmc.synthesis.pair_sources` and :mod:`bmc.synthesis.bridging` share."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from bmc.data.sources import TaskData
from bmc.precision import DEFAULT_PRECISION, Precision
from bmc.synthesis._common import ExampleIndex
from bmc.synthesis.local_models import with_model_dtypes


class SynthesisContext:
    """What the data stages share: config, task data, the starting policy (``model`` may be None where no
    stage samples from it) and where to cache; the trainer's ``precision``, which sampling from the policy and
    the judges' and editors' local models compute in, and its ``device`` on this rank, where those models run
    (None: the CPU).

    ``judge_cfg`` and ``editor_cfg`` are kept with the dtype of each model they load here set
    (:func:`~bmc.synthesis.local_models.with_model_dtypes`): their cached judgments and edits are keyed by it.
    """

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
        precision: Precision = DEFAULT_PRECISION,
        device: torch.device | None = None,
    ) -> None:
        self.cfg, self.task_data, self.model, self.tokenizer = data_cfg, task_data, model, tokenizer
        self.cache_root, self.model_key = cache_root, model_key
        self.precision, self.device = precision, device or torch.device("cpu")
        self.judge_cfg = with_model_dtypes(judge_cfg or {}, precision)
        self.editor_cfg = with_model_dtypes(editor_cfg or {}, precision)
        self.report: dict[str, Any] = {"dropped": Counter()}

        self.verifier = task_data.verifier
        self.examples = ExampleIndex(task_data.pref_examples, f"data={data_cfg.get('name')}")
