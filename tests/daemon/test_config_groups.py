"""RunConfig's flat settings reach the learner as groups: every algorithm option from
flags, environment and file; ``sgd_lr`` for the baseline; the daemon's defaults are
the groups' defaults; the daemon reads the learner only through its interface."""

import argparse
import re
from pathlib import Path

import pytest
import yaml

from stream_meta.daemon.app import build_learner
from stream_meta.daemon.config import RunConfig, add_flags, load_config
from stream_meta.errors import ConfigError
from stream_meta.learn.config import (
    InnerLoopConfig, MetaStepConfig, ModelConfig, ProbeConfig, RegularizerConfig, ReplayConfig,
)

DAEMON = Path(__file__).resolve().parents[2] / "stream_meta" / "daemon"
SMALL = {"input_dim": 4, "num_classes": 3, "hidden": (8,)}

# field, algorithm, value as text (flag / env), value in a file, what the algorithm then holds
OPTIONS = [
    ("loss", "fomaml", "mse", "mse", "mse"),
    ("first_order", "metasgd", None, True, True),
    ("first_order", "anil", None, True, True),
    ("head", "anil", "2.weight,2.bias", ["2.weight", "2.bias"], ("2.weight", "2.bias")),
    ("max_scale", "lamaml", "3.5", 3.5, 3.5),
    ("max_inner_lr", "maml", "2.0", 2.0, 2.0),
    ("backend", "reptile", "reference", "reference", "reference"),
    ("clip_grad_norm", "maml", "0.5", 0.5, 0.5),
]


def _flags(argv: list[str]) -> dict:
    p = argparse.ArgumentParser()
    add_flags(p)
    return vars(p.parse_args(argv))


def _via(source: str, field: str, algorithm: str, text: str | None, value, tmp_path: Path) -> RunConfig:
    base = {**SMALL, "hidden": "8"}
    if source == "flag":
        flag = "--" + field.replace("_", "-")
        argv = [flag] if text is None else [flag, text]
        return load_config(_flags([*argv, "--algorithm", algorithm]), env={}, overrides=base)
    if source == "env":
        env = {"STREAM_META_" + field.upper(): "true" if text is None else text, "STREAM_META_ALGORITHM": algorithm}
        return load_config({}, env=env, overrides=base)
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump({field: value, "algorithm": algorithm}))
    return load_config({"config": f}, env={}, overrides=base)


@pytest.mark.parametrize("source", ["flag", "env", "file"])
@pytest.mark.parametrize("field, algorithm, text, value, expected", OPTIONS)
def test_every_algorithm_option_reaches_the_algorithm(source, field, algorithm, text, value, expected, tmp_path):
    cfg = _via(source, field, algorithm, text, value, tmp_path)
    alg = build_learner(cfg).alg
    assert alg.name == algorithm and getattr(alg, field) == expected
    default = build_learner(RunConfig(**SMALL, algorithm=algorithm)).alg
    assert getattr(default, field) != expected  # so the setting, not the default, got there


@pytest.mark.parametrize("source", ["flag", "env", "file"])
def test_sgd_lr_reaches_the_sgd_baseline_and_inner_lr_does_not(source, tmp_path):
    cfg = _via(source, "sgd_lr", "sgd", "0.05", 0.05, tmp_path)
    learner = build_learner(cfg.model_copy(update={"inner_lr": 0.7}))
    assert learner.lr == 0.05 and learner.optimizer.param_groups[0]["lr"] == 0.05
    assert build_learner(RunConfig(**SMALL, algorithm="sgd")).lr == 0.1  # today's value, as before


@pytest.mark.parametrize("overrides, needle", [
    ({"algorithm": "maml", "first_order": True}, "first-order MAML is fomaml"),
    ({"algorithm": "fomaml", "head": "2.weight"}, "head applies to anil"),
    ({"algorithm": "maml", "max_scale": 2.0}, "max_scale applies to"),
    ({"max_scale": 0}, "max_scale"),
    ({"backend": "gpu"}, "backend"),
    ({"loss": "hinge"}, "loss"),
    ({"clip_grad_norm": -1}, "clip_grad_norm"),
    ({"sgd_lr": 0}, "sgd_lr"),
    ({"max_inner_lr": 0.05}, "max_inner_lr"),  # below the default inner_lr of 0.1
])
def test_bad_algorithm_options_are_config_errors(overrides, needle):
    with pytest.raises(ConfigError, match=re.escape(needle)):
        load_config({}, env={}, overrides=overrides)


def test_an_anil_head_naming_no_parameter_fails_when_the_learner_is_built():
    cfg = load_config({}, env={}, overrides={**SMALL, "algorithm": "anil", "head": "9.weight"})
    with pytest.raises(ConfigError, match="9.weight"):
        build_learner(cfg)


def test_daemon_defaults_are_the_default_presets_groups():
    from stream_meta.learn.presets import DEFAULT_PRESET, preset_groups

    cfg = RunConfig(**SMALL)
    assert cfg.model_cfg == ModelConfig(4, 3, (8,))
    preset = preset_groups(DEFAULT_PRESET)
    assert (cfg.inner_cfg, cfg.meta_cfg, cfg.replay_cfg) == (preset["inner_cfg"], preset["meta_cfg"], preset["replay_cfg"])
    assert (cfg.reg_cfg, cfg.probe_cfg) == (preset["reg_cfg"], ProbeConfig())
    # the preset "fomaml" is the learner's own defaults (the daemon's defaults before presets)
    fomaml = RunConfig(**SMALL, preset="fomaml")
    assert (fomaml.inner_cfg, fomaml.meta_cfg, fomaml.replay_cfg) == (InnerLoopConfig(), MetaStepConfig(), ReplayConfig())
    assert fomaml.reg_cfg == RegularizerConfig()


def test_flat_settings_land_in_their_groups():
    cfg = RunConfig(**SMALL, algorithm="reptile", inner_steps=2, inner_lr=0.3, meta_lr=0.2, support_size=7,
                    query_size=2, episode_stride=3, replay_per_update=1, max_tasks=9, replay_capacity=11,
                    memory_capacity=12, memory_policy="class", memory_query=4, regularizer="si", reg_strength=2.0,
                    reg_decay=0.5, probe_per_task=2, probe_every=30)
    assert (cfg.inner_cfg.algorithm, cfg.inner_cfg.steps, cfg.inner_cfg.lr) == ("reptile", 2, 0.3)
    assert cfg.meta_cfg == MetaStepConfig(0.2, None, 7, 2, 3, 1, 9)
    assert cfg.replay_cfg == ReplayConfig(11, 12, "class", 4)
    assert (cfg.reg_cfg, cfg.probe_cfg) == (RegularizerConfig("si", 2.0, 0.5), ProbeConfig(2, 30))
    learner = build_learner(cfg)
    assert (learner.inner_cfg, learner.meta_cfg, learner.replay_cfg) == (cfg.inner_cfg, cfg.meta_cfg, cfg.replay_cfg)


def test_new_options_have_help_text():
    p = argparse.ArgumentParser()
    add_flags(p)
    helps = {a.dest: a.help for a in p._actions}
    for field in ("loss", "first_order", "head", "max_scale", "max_inner_lr", "backend", "clip_grad_norm", "sgd_lr"):
        assert helps[field] and len(helps[field]) > 30, field


def test_the_daemon_reads_the_learner_only_through_its_interface():
    offenders = [f"{p.name}:{i}" for p in sorted(DAEMON.glob("*.py"))
                 for i, line in enumerate(p.read_text().splitlines(), 1)
                 if re.search(r"(getattr|hasattr)\(\s*(self\.)?learner\b", line)]
    assert offenders == []


@pytest.mark.parametrize("source", ["flag", "env", "file"])
def test_batch_step_scale_reaches_the_meta_step_group(source, tmp_path):
    cfg = _via(source, "batch_step_scale", "reptile", "sqrt", "sqrt", tmp_path)
    assert cfg.meta_cfg.batch_step_scale == "sqrt"
    assert build_learner(cfg).meta_cfg.step_scale(4) == 2.0
    assert RunConfig(**SMALL).meta_cfg.batch_step_scale == "none"  # the default learns as before


@pytest.mark.parametrize("source", ["flag", "env", "file"])
def test_batch_update_and_its_inner_steps_reach_the_meta_step_group(source, tmp_path):
    cfg = _via(source, "batch_update", "reptile", "one", "one", tmp_path)
    assert cfg.meta_cfg.batch_update == build_learner(cfg).meta_cfg.batch_update == "one"
    cfg = _via(source, "batch_inner_steps", "reptile", "3", 3, tmp_path)
    assert cfg.meta_cfg.batch_inner_steps == build_learner(cfg).meta_cfg.batch_inner_steps == 3
    default = RunConfig(**SMALL).meta_cfg
    assert (default.batch_update, default.batch_inner_steps) == ("each", None)
