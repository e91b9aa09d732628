"""bmc/loggers.py: an iterative round's metrics against the round axis."""

from __future__ import annotations

from unittest.mock import MagicMock, call

from pytorch_lightning.loggers import CSVLogger, WandbLogger

from bmc.loggers import log_round


def test_a_rounds_metrics_go_to_wandb_against_the_round_axis_and_elsewhere_at_the_rounds_step() -> None:
    wandb, csv = MagicMock(spec=WandbLogger), MagicMock(spec=CSVLogger)
    log_round([wandb, csv], 2, {"eval/accuracy": 0.5, "data/pairs_out": 12.0})
    assert wandb.experiment.define_metric.call_args_list == [call("round"), call("round/*", step_metric="round")]
    wandb.experiment.log.assert_called_once_with({"round": 2, "round/eval/accuracy": 0.5, "round/data/pairs_out": 12.0})
    csv.log_metrics.assert_called_once_with({"round/eval/accuracy": 0.5, "round/data/pairs_out": 12.0}, step=2)
