"""Run the data stages alone and print their report:

    python -m bmc.synthesize data=pseudo_winning task=math
    python -m bmc.synthesize data=ipr judge=llm judge.backend.model=served-name

Uses the same config as ``train.py`` and the same stages (task, warm start, judge, pairs), each cached, so a
later training run reuses the result. Only what the data config needs is built: ``data=original`` (no
sampling) trains and loads no model. The report is also written to ``data_report.json`` in the Hydra run folder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from bmc.data.sources import TaskData
from bmc.run_dir import register_resolvers
from bmc.stages.pairs import needs_policy_model, preference_pairs
from bmc.stages.products import PreferencePairs, StartingPolicy
from bmc.stages.reward_model import judge_setup
from bmc.stages.task_data import load_task
from bmc.stages.warm_start import tokenizer_only, warm_start


@dataclass
class PreparedData:
    """The data stages' products: the task data, the starting policy they used and the preference pairs."""

    task_data: TaskData
    policy: StartingPolicy
    pairs: list[dict[str, str]]
    report: dict


def prepare_data(cfg: DictConfig) -> PreparedData:
    """Task -> warm start (only where the data stages sample from the policy) -> judge -> preference pairs."""
    source = instantiate(cfg.model)
    task_data = load_task(cfg, source)
    policy = warm_start(cfg, task_data, source) if needs_policy_model(cfg) else tokenizer_only(task_data, source)
    data: PreferencePairs = preference_pairs(cfg, task_data, policy, judge_setup(cfg, task_data, policy))
    return PreparedData(task_data, policy, data.pairs, data.report)


register_resolvers()  # before Hydra names the run folder (conf/hydra/default.yaml)


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> None:
    data = prepare_data(cfg)
    report = {"task": cfg.task.name, "data": cfg.data.name, **data.report}
    path = Path(cfg.paths.output_dir) / "data_report.json"
    path.write_text(json.dumps(report, indent=2))
    width = max(len(k) for k in report)
    print("\nData report")
    for key, value in report.items():
        print(f"  {key:<{width}}  {value:.4f}" if isinstance(value, float) else f"  {key:<{width}}  {value}")
    print(f"written to {path}")


if __name__ == "__main__":
    main()
