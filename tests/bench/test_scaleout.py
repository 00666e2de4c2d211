"""bench scaleout's pure parts: the split, the rows, the rate definition (the runs themselves are
real daemons; the benchmark prints their figures, nothing here times anything)."""

from __future__ import annotations

import json

from stream_meta.bench.members import write_split
from stream_meta.bench.scaleout import Config, _attempt, configs_for, print_table


def _tasks(path) -> list[str]:
    return [json.loads(line)["task"] for line in path.read_text().splitlines()]


def test_noniid_gives_each_member_whole_tasks_and_iid_deals_round_robin(tmp_path):
    (tmp_path / "n").mkdir()
    (tmp_path / "i").mkdir()
    noniid = write_split(tmp_path / "n", "digits-rotations", 2, "noniid", None, n_tasks=4)
    iid = write_split(tmp_path / "i", "digits-rotations", 2, "iid", None, n_tasks=4)
    a, b = (set(_tasks(p)) for p in noniid)
    assert len(a) == len(b) == 2 and not a & b
    assert set(_tasks(iid[0])) == set(_tasks(iid[1])) == a | b
    assert sum(len(_tasks(p)) for p in noniid) == sum(len(_tasks(p)) for p in iid) == 4 * 150


def test_rows_skip_what_cannot_run_and_name_every_option():
    labels = [c.label for c in configs_for([10], ["noniid"], [0.0, 0.5], [False, True], True, (1.0, 1.5))]
    assert labels[:2] == ["single", "alone-noniid"]
    assert "group-noniid-every10-overlap" in labels and "group-noniid-every10-momentum0.5-outerlr1.5" in labels
    assert not [label for label in labels if "overlap" in label and ("momentum" in label or "outerlr" in label)]
    assert labels[-3:] == ["kafka-single", "kafka-group-noniid-every10", "kafka-group-noniid-every10-overlap"]


def test_the_rate_is_all_records_over_the_slowest_members_processing_time(capsys):
    summaries = [{"records_consumed": 600, "elapsed_seconds": 2.0, "records_per_second": 300.0, "cpu_seconds": 1.0},
                 {"records_consumed": 400, "elapsed_seconds": 4.0, "records_per_second": 100.0, "cpu_seconds": 2.0}]
    got = _attempt(Config("g", 2, "iid", True), summaries, [{"sync_seconds": 1.0}, {"sync_seconds": 0.5}])
    assert got["records_per_s"] == 250.0 and got["sync_share"] == 0.25 and got["records_per_cpu_s"] == 500.0
    base = {"members": 1, "source": "file", "records_per_s": 125.0, "records_per_s_median": 100.0,
            "records_per_cpu_s": 300.0,
            "sync_share": 0.0, "accuracy_all_tasks": 0.8, "accuracy_per_member": [0.8], "run": "single",
            "sync_every": None, "sync_momentum": None, "sync_outer_lr": None, "sync_overlap": None, "partition": "iid"}
    group = {**base, "members": 2, "run": "g", "records_per_s": 250.0, "records_per_s_median": 180.0,
             "records_per_cpu_s": 540.0,
             "sync_every": 10, "sync_momentum": 0.0, "sync_outer_lr": 1.0, "sync_overlap": False}
    print_table([base, group], repeat=3)
    line = next(s for s in capsys.readouterr().out.splitlines() if s.startswith("SPEED-UP"))
    assert "2.00x one member (best of 3; median 1.80x" in line and "per CPU-second 1.80x" in line


def test_step_scaling_rows_pass_the_flag_and_only_a_non_default_one_is_named():
    configs = configs_for([10], ["iid"], [0.0], [False], False, (1.0,), ("none", "linear"))
    by_label = {c.label: c for c in configs}
    assert set(by_label) == {"single", "alone-iid", "group-iid-every10-lrscale-none", "group-iid-every10"}
    assert by_label["group-iid-every10"].flags() == ["--sync-lr-scale", "linear"]
    assert by_label["group-iid-every10-lrscale-none"].flags() == ["--sync-lr-scale", "none"]
    assert by_label["alone-iid"].flags() == []  # members alone do not sync: no group flags
