"""Every option of every config group composes, its ``_target_`` names something importable and it passes the
config check; every enumerated or cross-field setting fails that check, before any stage, with its name."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hydra.utils import get_object
from omegaconf import OmegaConf

from bmc.pipeline import check_config
from tests.conftest import CONF, compose_config

GROUPS = [
    "task",
    "data",
    "loss",
    "token_weighting",
    "regularizer",
    "model",
    "trainer",
    "logger",
    "callbacks",
    "judge",
    "editor",
    "eval",
    "method",
    "experiment",
    "debug",
]


GLOBAL_GROUPS = {"debug", "method", "experiment"}
# options that need another group's choice to run: a listwise loss trains on ranked lists, which data=ipr gives
NEEDS = {("loss", name): ["data=ipr"] for name in ("dpo_pl", "infonca", "lipo")}


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def _targets(node: object) -> list[str]:
    if isinstance(node, dict):
        found = [node["_target_"]] if "_target_" in node else []
        return found + [t for v in node.values() for t in _targets(v)]
    if isinstance(node, list):
        return [t for v in node for t in _targets(v)]
    return []


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in _options(g)])
def test_every_option_composes(group: str, option: str, tmp_path: Path) -> None:
    cfg = compose_config([f"{group}={option}", *NEEDS.get((group, option), [])], tmp_path / "run", tmp_path / "cache")
    container = OmegaConf.to_container(cfg, resolve=False)
    if group not in GLOBAL_GROUPS:  # the global presets change keys elsewhere
        assert container[group] is not None
    for target in _targets(container):
        assert callable(get_object(target)), target
    assert check_config(cfg)[0] is None  # every preset passes the check before any stage (and resumes nothing)


def test_groups_have_expected_options() -> None:
    assert {"math", "qa", "instruct", "hf_prefs"} <= set(_options("task"))
    assert {"tiny", "hf"} <= set(_options("model"))
    assert {"default", "gpu"} <= set(_options("trainer"))
    assert {"wandb", "csv", "none"} <= set(_options("logger"))
    assert {"sft", "dpo", "bmc"} <= set(_options("loss"))


def test_defaults_are_math_dpo_on_original(tmp_path: Path) -> None:
    cfg = compose_config([], tmp_path / "run", tmp_path / "cache")
    assert (cfg.task.name, cfg.data.name, cfg.loss.name, cfg.model._target_) == (
        "math",
        "original",
        "dpo",
        "bmc.models.TinyLlama",
    )
    assert "logger" in cfg and "wandb" in cfg.logger
    # the default logger also writes the local CSV that the report's training curves read
    assert cfg.logger.csv._target_ == "pytorch_lightning.loggers.CSVLogger"
    assert set(compose_config(["logger=csv"]).logger) == {"csv"} and not compose_config(["logger=none"]).get("logger")


def test_multirun_sweep_dir_is_multirun_outputs() -> None:
    hydra_cfg = OmegaConf.load(CONF / "hydra" / "default.yaml")
    assert str(hydra_cfg.sweep.dir).startswith("multirun_outputs/")


def test_loss_bmc_selects_bmc_token_weighting(tmp_path: Path) -> None:
    cfg = compose_config(["loss=bmc"], tmp_path / "run", tmp_path / "cache")
    assert cfg.loss.name == "dpo" and cfg.token_weighting.name == "bmc"
    cfg = compose_config(["loss=ipo", "token_weighting=bmc"], tmp_path / "run", tmp_path / "cache")
    assert cfg.loss.name == "ipo" and cfg.token_weighting.name == "bmc"


def test_experiment_presets_are_multiruns_over_methods_and_seeds(tmp_path: Path) -> None:
    hydra_cfg = OmegaConf.load(CONF / "experiment" / "paper_main.yaml").hydra
    assert hydra_cfg.mode == "MULTIRUN"
    params = hydra_cfg.sweeper.params
    methods = ["sft", "sft_chosen", "dpo", "ipo", "simpo", "rdpo", "orpo", "dpo_bc", "dpo_mc", "dpo_bmc"]
    assert params.method.split(",") == methods
    assert params.task.split(",") == ["math", "qa", "instruct"] and params.seed == "0,1,2"


@pytest.mark.parametrize(
    "method,expected",
    [
        ("dpo", ("dpo", "sampled", "uniform")),
        ("sft_chosen", ("sft", "sampled", "uniform")),
        ("dpo_bc", ("dpo", "pseudo_winning", "uniform")),
        ("dpo_mc", ("dpo", "sampled", "bmc")),
        ("dpo_bmc", ("dpo", "pseudo_winning", "bmc")),
        ("tdpo1", ("tdpo1", "sampled", "uniform")),
        ("tdpo2", ("tdpo2", "sampled", "uniform")),
        ("dpo_confpo", ("dpo", "sampled", "confpo")),
        ("dpo_pl", ("dpo_pl", "ipr", "uniform")),
        ("lipo", ("lipo", "ipr", "uniform")),
        ("infonca", ("infonca", "ipr", "uniform")),
        ("dpo_bmc_pl", ("dpo_pl", "ipr", "bmc")),
    ],
)
def test_methods_select_loss_data_and_weighting(method: str, expected: tuple, tmp_path: Path) -> None:
    cfg = compose_config([f"method={method}"], tmp_path / "run", tmp_path / "cache")
    assert (cfg.loss.name, cfg.data.name, cfg.token_weighting.name) == expected


def test_ipr_and_rm_score_methods_pick_their_judges(tmp_path: Path) -> None:
    ipr = compose_config(["method=ipr"], tmp_path / "run", tmp_path / "cache")
    assert (ipr.loss.name, ipr.data.pairs, ipr.judge.kind) == ("dpo", "ipr", "verifier")
    rm = compose_config(["method=rm_score"], tmp_path / "run", tmp_path / "cache")
    assert (rm.loss.name, rm.data.pairs, rm.judge.kind, rm.judge.path) == ("dpo", "rm_score", "reward_model", None)
    assert rm.judge.train.steps > 0  # judge=tiny_rm trains its reward model
    # both sample the same completions, so they rank the same candidates
    assert ipr.data.sampler == rm.data.sampler


def test_bridging_preset_uses_the_varied_wording_task(tmp_path: Path) -> None:
    cfg = compose_config(["experiment=bridging", "method=dpo_bmc"], tmp_path / "run", tmp_path / "cache")
    assert cfg.task.name == "math_styles" and cfg.task.generator.gold_styles == 4
    assert cfg.data.name == "pseudo_winning" and cfg.sft.target_accuracy == 0.75


@pytest.mark.parametrize(
    "override,node,target",
    [
        ("hydra/launcher=joblib", "launcher", "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"),
        ("hydra/launcher=slurm", "launcher", "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"),
        ("hparams_search=optuna", "sweeper", "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"),
    ],
)
def test_launcher_and_sweeper_presets_compose(override: str, node: str, target: str) -> None:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[override], return_hydra_config=True)
    assert cfg.hydra[node]._target_ == target
    get_object(target)  # the plugin is installed (the `sweep` extra)


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["export.which=first"], r"export.which must be one of \['last', 'best'\], got 'first'"),
        (["export.which=best", "callbacks=minimal"], r"export.which=best needs a best checkpoint, kept by a Model"),
        (["data.pairs=mined"], r"unknown pair source 'mined': data.pairs must be one of \['ipr', 'original', "),
        (["data=ipr", "data.sampler.backend.kind=tgi"], r"unknown sampler backend 'tgi': data.sampler.backend.kind"),
        (["judge.kind=oracle"], r"unknown judge 'oracle': judge.kind must be one of \['llm', 'reward_model', "),
        (
            ["judge=reward_model", "+judge.batchsize=4"],
            r"judge 'reward_model' got unknown option\(s\) \['batchsize'\] in",
        ),
        (
            ["judge=llm", "+judge.backend.temprature=0"],
            r"chat backend 'openai' got unknown option\(s\) \['temprature'\]",
        ),
        (["judge=llm", "judge.max_failure_share=2"], r"judge.max_failure_share must be a share in \[0, 1\], got 2"),
        (["data=pseudo_winning", "editor.kind=human"], r"unknown editor 'human': editor.kind must be one of \['llm', "),
        (
            ["data=pseudo_winning", "editor=llm", "+editor.use_refrence=0"],
            r"editor 'llm' got unknown option\(s\) \['use",
        ),
        (["data=pseudo_winning", "editor.on_reject=keep"], r"editor.on_reject must be one of \('drop', 'keep_origi"),
        (["data=pseudo_winning", "data.bridge.fraction=1.5"], r"data.bridge.fraction must be in \(0, 1\], got 1.5"),
        (["data=pseudo_winning", "+data.bridge.fracton=0.5"], r"data.bridge got unknown option\(s\) \['fracton'\]"),
        (["eval.kind=bleu"], r"unknown evaluation 'bleu': eval.kind must be one of \['none', 'verifier', 'winrat"),
        (
            ["eval=winrate", "eval.baseline=nowhere.jsonl"],
            r"eval.baseline must be one of \['chosen', 'reference'\] or a",
        ),
    ],
)
def test_the_config_check_names_every_bad_setting(overrides: list[str], message: str, tmp_path: Path) -> None:
    cfg = compose_config(overrides, tmp_path / "run", tmp_path / "cache")
    with pytest.raises(ValueError, match=message):
        check_config(cfg)


def test_the_config_check_accepts_what_the_stages_accept(tmp_path: Path) -> None:
    baseline = tmp_path / "baseline.jsonl"
    baseline.write_text('{"prompt": "p", "answer": "a"}\n')
    good = [
        ["export.which=best", "callbacks=default"],  # a checkpoint monitoring val/loss keeps best.ckpt
        ["export.which=best", "callbacks=minimal", "export.enabled=false"],  # nothing exported: nothing to choose
        ["eval=winrate", f"eval.baseline={baseline}"],
        ["eval=winrate", "eval.baseline=chosen", "judge=llm"],  # an unset served model name is the stage's error
        ["data=pseudo_winning", "data.bridge.fraction=0.25", "editor=llm"],
        ["method=rm_score"],  # judge=tiny_rm: its train block is the reward-model stage's, not the judge's
    ]
    for overrides in good:
        assert check_config(compose_config(overrides, tmp_path / "run", tmp_path / "cache"))[0] is None, overrides


@pytest.mark.parametrize(
    "overrides,ranking",
    [
        (["loss=dpo_pl", "data=ipr"], "full"),  # null: a listwise loss gets the full ranking
        (["loss=dpo", "data=ipr"], "best_worst"),
        (["loss=dpo", "data=ipr", "data.ranking=full"], "full"),  # a pairwise loss reads lists as best/worst
        (["loss=infonca", "data=rm_score"], "full"),
        (["method=lipo"], "full"),
        (["loss=dpo", "data=original"], None),
        (["loss=dpo_pl", "task=hf_prefs", "task.pairing=lists"], None),  # ranked completions read as lists
    ],
)
def test_data_ranking_is_resolved_from_the_loss(overrides: list[str], ranking: str | None, tmp_path: Path) -> None:
    from bmc.stages.pairs import data_ranking

    assert data_ranking(compose_config(overrides, tmp_path / "run", tmp_path / "cache")) == ranking


@pytest.mark.parametrize(
    "overrides,given",
    [
        (["loss=dpo_pl", "data=original"], "data=original (pairs=original)"),
        (["loss=lipo", "data=ipr", "data.ranking=best_worst"], "data=ipr (pairs=ipr, ranking=best_worst)"),
        (["loss=infonca", "data=sampled"], "data=sampled (pairs=sampled)"),
    ],
)
def test_a_listwise_loss_without_ranked_lists_fails_before_any_stage(overrides, given, tmp_path: Path) -> None:
    from bmc.pipeline import check_config

    cfg = compose_config(overrides, tmp_path / "run", tmp_path / "cache")
    with pytest.raises(ValueError, match=rf"loss={cfg.loss.name} is listwise .* but {re.escape(given)} gives pairs"):
        check_config(cfg)


def test_data_ranking_is_refused_where_it_means_nothing(tmp_path: Path) -> None:
    from bmc.stages.pairs import data_ranking

    with pytest.raises(ValueError, match="data.ranking=full applies to data.pairs in"):
        data_ranking(compose_config(["data=sampled", "data.ranking=full"], tmp_path / "run", tmp_path / "cache"))
