"""What an evaluation is prepared from and what it is once prepared: shared by the evaluation stage
(:mod:`bmc.stages.evaluation`) and the kinds it selects (:mod:`bmc.stages.winrate`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from omegaconf import DictConfig
from pytorch_lightning.loggers import Logger

from bmc.data.sources import TaskData
from bmc.stages.pairs import PreferencePairs
from bmc.stages.preference import TrainedPolicy
from bmc.stages.reward_model import JudgeSetup
from bmc.stages.warm_start import StartingPolicy

#: a prepared evaluation: the ``eval/*`` metrics of the trained policy, also logged to the loggers
Evaluation = Callable[[TrainedPolicy, list[Logger]], dict[str, float]]


@dataclass
class EvalSetup:
    """What an evaluation may draw on before training: the config, the task's data, the starting policy (the
    reference), the judge and the preference pairs (whose validation prompts are a dataset's held-out ones)."""

    cfg: DictConfig
    task_data: TaskData
    policy: StartingPolicy
    judge: JudgeSetup
    pairs: PreferencePairs
