"""The daemon adapts to tasks it has never seen: never-repeating 5-way tasks,
labels permuted per task, 40 records each. Late-in-task accuracy of the
meta-learner must be far above plain online SGD on the same stream."""

import pytest
from prometheus_client import CollectorRegistry

from stream_meta.bench.engine import write_stream
from stream_meta.daemon.config import load_config
from stream_meta.daemon.app import build_service


def _run(tmp_path, src, algorithm):
    cfg = load_config({}, env={}, overrides={
        "input_file": src, "input_dim": 64, "num_classes": 5, "algorithm": algorithm, "stop_at_end": True,
        "checkpoint_dir": tmp_path / algorithm, "metrics_port": None})
    return build_service(cfg, CollectorRegistry()).run()


@pytest.mark.slow
def test_meta_learners_adapt_to_new_tasks_far_better_than_online_sgd(tmp_path):
    src = tmp_path / "fewshot.jsonl"
    write_stream(src, "digits-fewshot", 2400)
    sgd = _run(tmp_path, src, "sgd")
    late_sgd = sgd["accuracy_by_task_position"]["21-50"]
    for algorithm, margin in (("metasgd", 0.2), ("fomaml", 0.08)):
        meta = _run(tmp_path, src, algorithm)
        assert meta["tasks_seen"] == sgd["tasks_seen"] == 60
        late = meta["accuracy_by_task_position"]["21-50"]
        assert late > late_sgd + margin, (algorithm, late, late_sgd)
        # and it improves within a task: the adaptation curve rises
        assert late > meta["accuracy_by_task_position"]["1-5"] + 0.2, algorithm
