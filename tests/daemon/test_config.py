import argparse

import pytest
from pydantic import ValidationError

from stream_meta.daemon.config import RunConfig, add_flags, load_config
from stream_meta.errors import ConfigError


def _flags(argv):
    p = argparse.ArgumentParser()
    add_flags(p)
    return vars(p.parse_args(argv))


def test_precedence_is_defaults_then_file_then_env_then_flags(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("topic: from-file\ninput_dim: 10\nnum_classes: 4\nhidden: [8, 8]\n")
    env = {"STREAM_META_INPUT_DIM": "20", "STREAM_META_STOP_AT_END": "true"}
    cfg = load_config(_flags(["--config", str(f), "--num-classes", "7"]), env=env)
    assert cfg.topic == "from-file" and cfg.input_dim == 20 and cfg.num_classes == 7
    assert cfg.hidden == (8, 8) and cfg.stop_at_end is True
    assert cfg.group == RunConfig.model_fields["group"].default
    assert cfg.dlq_topic == "from-file.dlq"


def test_config_is_frozen_and_comma_lists_parse():
    cfg = load_config(_flags(["--hidden", "32,16", "--no-progress"]), env={})
    assert cfg.hidden == (32, 16) and cfg.progress is False
    with pytest.raises(ValidationError, match="frozen"):
        cfg.topic = "other"
    assert cfg.topic != "other"


@pytest.mark.parametrize(
    "argv, env, needle",
    [
        (["--input-dim", "0"], {}, "input_dim"),
        ([], {"STREAM_META_ALGORITHM": "magic"}, "unknown algorithm"),  # the flag is refused by argparse
        (["--metrics-port", "70000"], {}, "metrics_port"),
        ([], {"STREAM_META_NO_SUCH": "1"}, "STREAM_META_NO_SUCH"),
        ([], {"STREAM_META_INNER_LR": "fast"}, "inner_lr"),
    ],
)
def test_bad_settings_give_a_clear_error(argv, env, needle):
    with pytest.raises(ConfigError, match=needle):
        load_config(_flags(argv), env=env)


def test_unreadable_or_non_mapping_config_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config({"config": tmp_path / "missing.yaml"}, env={})
    bad = tmp_path / "list.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config({"config": bad}, env={})


def test_secrets_are_masked_in_the_startup_dump():
    cfg = load_config({}, env={"STREAM_META_SASL_PASSWORD": "hunter2", "STREAM_META_SASL_USERNAME": "me"})
    dumped = cfg.masked()
    assert dumped["sasl_password"] == "**********" and "hunter2" not in str(dumped)
    assert cfg.sasl_password.get_secret_value() == "hunter2"


def test_configure_torch_flushes_subnormals_unless_told_not_to():
    import torch

    from stream_meta.daemon.app import configure_torch

    threads = torch.get_num_threads()
    try:
        configure_torch(load_config(_flags([]), env={}))  # the default: flushed
        assert torch.tensor([1e-323], dtype=torch.float64).item() == 0.0
        configure_torch(load_config(_flags(["--no-flush-denormal"]), env={}))
        assert torch.tensor([1e-323], dtype=torch.float64).item() > 0.0
    finally:
        torch.set_flush_denormal(False)
        torch.set_num_threads(threads)
