"""``--preset``: a named table of learner settings filling defaults under explicit settings."""

import argparse

import pytest

from stream_meta.daemon.config import ALGORITHM_CHOICES, RunConfig, add_flags, load_config
from stream_meta.errors import ConfigError
from stream_meta.learn.presets import BASE, DEFAULT_PRESET, PRESETS, preset_settings


def _flags(argv):
    p = argparse.ArgumentParser()
    add_flags(p)
    return vars(p.parse_args(argv))


def test_the_default_config_is_the_default_preset():
    cfg = load_config({}, env={})
    assert cfg.preset is None
    for key, value in preset_settings(DEFAULT_PRESET).items():
        assert getattr(cfg, key) == value, key


def test_a_preset_sets_every_learner_setting_it_names_and_resets_the_rest_to_base():
    cfg = load_config(_flags(["--preset", "fomaml"]), env={})
    assert cfg.preset == "fomaml" and cfg.algorithm == "fomaml"
    # fomaml is BASE itself: none of the default preset's memory / meta_lr settings leak in.
    for key, value in BASE.items():
        assert getattr(cfg, key) == value, key
    cfg = load_config(_flags(["--preset", "metasgd+er"]), env={})
    assert (cfg.algorithm, cfg.memory_capacity, cfg.memory_policy, cfg.memory_query) == ("metasgd", 200, "task", 10)


def test_explicit_settings_override_the_preset_from_file_env_and_flags(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("preset: reptile+er-tuned\nmeta_lr: 0.02\n")
    env = {"STREAM_META_MEMORY_QUERY": "3"}
    cfg = load_config(_flags(["--config", str(f), "--replay-per-update", "1"]), env=env)
    assert cfg.algorithm == "reptile" and cfg.memory_capacity == 200  # from the preset
    assert cfg.meta_lr == 0.02 and cfg.memory_query == 3 and cfg.replay_per_update == 1  # file, env, flag
    # The preset itself can come from any layer, and a flag's preset beats the file's.
    cfg = load_config(_flags(["--config", str(f), "--preset", "fomaml"]), env={})
    assert cfg.algorithm == "fomaml" and cfg.memory_capacity == 0 and cfg.meta_lr == 0.02
    cfg = load_config({}, env={"STREAM_META_PRESET": "metasgd", "STREAM_META_ALGORITHM": "anil"})
    assert cfg.algorithm == "anil" and cfg.meta_lr == BASE["meta_lr"]


def test_an_unknown_preset_is_a_clear_config_error_naming_the_choices():
    with pytest.raises(ConfigError, match=r"unknown preset 'fast'.*reptile\+er-tuned"):
        load_config(_flags(["--preset", "fast"]), env={})
    with pytest.raises(Exception, match="unknown preset"):
        RunConfig(preset="fast")


def test_every_preset_validates_and_names_only_learner_settings():
    for name in PRESETS:
        assert set(PRESETS[name]) <= set(BASE), name
        assert PRESETS[name]["algorithm"] in ALGORITHM_CHOICES
        load_config({"preset": name}, env={})
    assert set(BASE) <= set(RunConfig.model_fields)
    with pytest.raises(ValueError, match="unknown preset"):
        preset_settings("nope")


def test_bench_learners_are_the_presets():
    from stream_meta.bench.continual.runner import LEARNERS

    assert list(LEARNERS) == list(PRESETS)
    assert LEARNERS["reptile+er-tuned"] == preset_settings("reptile+er-tuned")


def test_base_is_the_learners_own_defaults():
    from stream_meta.learn.config import InnerLoopConfig, MetaStepConfig, RegularizerConfig, ReplayConfig
    from stream_meta.learn.presets import preset_groups

    # the preset that changes nothing from BASE builds exactly the groups' own defaults
    assert {k: v for k, v in PRESETS["fomaml"].items() if BASE[k] != v} == {}
    assert preset_groups("fomaml") == {"inner_cfg": InnerLoopConfig(), "meta_cfg": MetaStepConfig(),
                                       "replay_cfg": ReplayConfig(), "reg_cfg": RegularizerConfig()}
