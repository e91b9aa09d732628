"""Stage 0, the task: its data (``cfg.task``: a built-in task or a real preference dataset) with every prompt
rendered once (:func:`bmc.data.render.render_task`), so that all later stages read the same text. Not cached:
built-in tasks are generated in well under a second, and files are read as they are."""

from __future__ import annotations

from hydra.utils import instantiate
from omegaconf import DictConfig

from bmc.data.render import render_task
from bmc.data.sources import TaskData
from bmc.models import ModelSource


def load_task(cfg: DictConfig, source: ModelSource) -> TaskData:
    """The task's data, prompts rendered by the model's chat template where it has one."""
    return render_task(instantiate(cfg.task), source.chat_template())
