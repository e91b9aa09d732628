"""Train and evaluate one configuration: ``python train.py loss=bmc data=pseudo_winning``.

Compose the config with Hydra and hand it to :func:`bmc.pipeline.run`; all logic lives in ``bmc``.
"""

import logging
import math

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from bmc.run_dir import register_resolvers

log = logging.getLogger(__name__)
register_resolvers()  # before Hydra names the run folder (conf/hydra/default.yaml)


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from bmc.pipeline import run

    optimized = cfg.get("optimized_metric")
    try:
        metrics = run(cfg)
    except Exception:
        # One bad job must not cost the sweep: its summary.json already says "failed" and the report shows it.
        if HydraConfig.get().mode != RunMode.MULTIRUN or cfg.get("fail_fast"):
            raise
        log.exception("job %s failed; the sweep goes on", HydraConfig.get().job.num)
        return math.nan if optimized else None
    return metrics.get(optimized) if optimized else None


if __name__ == "__main__":
    main()
