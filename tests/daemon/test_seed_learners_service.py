"""The neural optimiser and LMML in the daemon: a run stopped at a checkpoint and resumed
ends with the same meta-parameters and the same learned network (both digests of
``checkpoint inspect``) as one uninterrupted run, and their health metric is exported."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from stream_meta.cli.checkpoint_inspect import describe_checkpoint
from stream_meta.daemon.app import build_service, config_fingerprint
from stream_meta.daemon.checkpoint import CheckpointStore
from stream_meta.daemon.config import load_config
from stream_meta.errors import CheckpointMismatchError
from tests.daemon.test_service_file import _write


def _cfg(directory, src, algorithm, **kw):
    return load_config({}, env={}, overrides={
        "input_file": src, "input_dim": 64, "num_classes": 10, "checkpoint_dir": directory,
        "metrics_port": None, "checkpoint_every_records": 50, "deterministic": True, "algorithm": algorithm,
        "hidden": (32,), "inner_steps": 2, "net_hidden": 8, **kw})


@pytest.mark.slow
@pytest.mark.parametrize("algorithm,metric", [("neural-optimizer", "update_norm_ratio"), ("lmml", "learned_loss_ratio")])
def test_resumed_run_equals_an_uninterrupted_one(tmp_path, algorithm, metric):
    src = tmp_path / "in.jsonl"
    good, _ = _write(src, 200)
    first = build_service(_cfg(tmp_path / "a", src, algorithm, max_records=100), CollectorRegistry()).run()
    assert first["records_consumed"] == 100
    resumed = build_service(_cfg(tmp_path / "a", src, algorithm, stop_at_end=True), CollectorRegistry()).run()
    assert resumed["records_consumed"] == good
    registry = CollectorRegistry()
    whole = build_service(_cfg(tmp_path / "b", src, algorithm, stop_at_end=True), registry).run()
    assert whole["records_consumed"] == good
    a, b = describe_checkpoint(tmp_path / "a"), describe_checkpoint(tmp_path / "b")
    assert a["meta_parameters_sha256"] == b["meta_parameters_sha256"]
    assert a["extra_sha256"] == b["extra_sha256"]
    # The learned network is in the checkpoint and was learned (it is not its initial value).
    start = build_service(_cfg(tmp_path / "c", src, algorithm, max_records=1), CollectorRegistry()).run()
    assert start["records_consumed"] == 1
    assert describe_checkpoint(tmp_path / "c")["extra_sha256"] != b["extra_sha256"]
    value = registry.get_sample_value("stream_meta_learner_health", {"name": metric})
    assert value is not None and value > 0 and value != 1.0


@pytest.mark.slow
def test_another_network_width_is_refused_on_resume(tmp_path):
    """The learned network's width fixes the checkpoint's shapes: a resume with another one
    is an operator error, not a crash while loading."""
    src = tmp_path / "in.jsonl"
    _write(src, 60)
    build_service(_cfg(tmp_path / "a", src, "lmml", max_records=50), CollectorRegistry()).run()
    with pytest.raises(CheckpointMismatchError, match="net_hidden 8 \\(now 4\\)"):
        build_service(_cfg(tmp_path / "a", src, "lmml", net_hidden=4, stop_at_end=True), CollectorRegistry()).run()


@pytest.mark.slow
def test_lmml_with_modulation_is_refused_on_a_directory_written_without_it(tmp_path):
    """``--net-modulate`` adds the modulation's weights to the checkpoint: switching it on
    (or off) against an existing directory is an operator error too."""
    src = tmp_path / "in.jsonl"
    _write(src, 60)
    build_service(_cfg(tmp_path / "a", src, "lmml", net_modulate=True, max_records=50), CollectorRegistry()).run()
    with pytest.raises(CheckpointMismatchError, match="net_modulate True \\(now False\\)"):
        build_service(_cfg(tmp_path / "a", src, "lmml", stop_at_end=True), CollectorRegistry()).run()


@pytest.mark.slow
def test_a_neural_optimizer_checkpoint_without_step_sizes_is_refused(tmp_path):
    """A checkpoint of the neural optimiser before its rule took Meta-SGD's step sizes
    (``rule.scale.*`` absent: the same algorithm name and width) is refused with the
    names that differ, not loaded with the step sizes left at their start."""
    src = tmp_path / "in.jsonl"
    _write(src, 60)
    build_service(_cfg(tmp_path / "a", src, "neural-optimizer", max_records=50), CollectorRegistry()).run()
    store = CheckpointStore(tmp_path / "a", fingerprint=config_fingerprint(_cfg(tmp_path / "a", src, "neural-optimizer")))
    ckpt = store.load_latest()
    learner = ckpt.state["learner"]
    assert any(k.startswith("rule.scale.") for k in learner["extra"])
    learner["extra"] = {k: v for k, v in learner["extra"].items() if not k.startswith("rule.scale.")}  # the old layout
    store.save(ckpt.state, ckpt.offsets, {k: v for k, v in ckpt.manifest.items() if k not in ("seq", "sha256", "bytes")})
    with pytest.raises(CheckpointMismatchError, match="learned tensors differ .*not in it: rule.scale.0.bias, rule.scale.0.weight"):
        build_service(_cfg(tmp_path / "a", src, "neural-optimizer", stop_at_end=True), CollectorRegistry()).run()
