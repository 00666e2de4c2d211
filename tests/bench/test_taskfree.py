import pytest
import torch

from stream_meta.bench.taskfree import Stream, boundary_scores, build_stream, recurrence_scores, run


def _stream(tasks: list[str]) -> Stream:
    n = len(tasks)
    return Stream("t", torch.zeros(n, 2), torch.zeros(n, dtype=torch.long), tasks, 2)


def test_boundary_scores_count_detections_within_tolerance_after_a_boundary():
    s = _stream(["a"] * 100 + ["b"] * 100 + ["c"] * 100)  # boundaries at 100 and 200
    fired = [(104, "detected", "auto-1"), (150, "detected", "auto-2"), (211, "detected", "auto-3")]
    r = boundary_scores(s, fired, tolerance=10)
    assert r["boundaries_true"] == 2 and r["boundaries_found"] == 3
    assert r["recall"] == 0.5 and abs(r["precision"] - 1 / 3) < 1e-9  # 211 is 11 records late: a miss
    assert r["delay_mean"] == 4.0 and abs(r["false_per_1000"] - 2 / 300 * 1000) < 1e-9


def test_recurrence_scores_compare_a_return_with_its_first_visit():
    s = _stream(["a"] * 20 + ["b"] * 20 + ["a"] * 20)
    learned = ["auto-0"] * 20 + ["auto-1"] * 20 + ["auto-0"] * 20
    correct = torch.tensor([0.0] * 40 + [1.0] * 20)
    r = recurrence_scores(s, learned, correct)
    assert r["returns"] == 1 and r["reidentified"] == 1.0
    assert r["first10_accuracy_return"] == 1.0 and r["first10_accuracy_first_visit"] == 0.0
    assert recurrence_scores(s, ["auto-0"] * 20 + ["auto-1"] * 40, correct)["reidentified"] == 0.0


@pytest.mark.slow
def test_delayed_labels_are_each_learned_once_in_process():
    s = build_stream("delayed", scale=0.05)  # 5 tasks x 50 records, labels 100-1000 records late
    for setting in ("given", "stripped"):
        r = run(s, setting, batch=10)
        assert r["learned_once"] and r["records"] == 250
    assert 0 <= r["prequential_accuracy"] <= 1 and "f1" in r
