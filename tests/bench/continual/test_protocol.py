import json

import pytest
import torch

from stream_meta.data.datasets import make_tasks
from stream_meta.bench.continual.protocol import run_protocol
from stream_meta.learn.config import InnerLoopConfig, MetaStepConfig, ModelConfig, ReplayConfig
from stream_meta.learn.learner import OnlineMetaLearner

KW = dict(inner_cfg=InnerLoopConfig(steps=2), meta_cfg=MetaStepConfig(support_size=10, query_size=5, episode_stride=5))
MODEL = ModelConfig(64, 10, (32,))


def test_replay_forgets_less_than_no_replay_on_digits_split(one_thread):
    # Split digits (2 new classes per task): the meta-parameters of a plain learner
    # lose the earlier classes; record replay in the meta-updates keeps them.
    tasks = make_tasks("digits-split", n_tasks=5, per_task=100, test_per_task=60)
    plain = run_protocol(OnlineMetaLearner(MODEL, **KW), tasks)
    replay = run_protocol(OnlineMetaLearner(MODEL, replay_cfg=ReplayConfig(memory_capacity=100, memory_query=10), **KW), tasks)
    p, r = plain.summary(), replay.summary()
    assert r["forgetting"] < p["forgetting"] - 0.1, (p, r)
    assert r["bti"] > p["bti"] + 0.1 and r["ra"] > p["ra"] + 0.2
    assert len(replay.matrix) == len(replay.matrix_adapted) == 5 and all(len(row) == 5 for row in replay.matrix)
    # Each entry is an accuracy on a task's 60 held-out records: k/60 for an integer k in [0, 60].
    for matrix in (replay.matrix, replay.matrix_adapted):
        assert all(0 <= a * 60 <= 60 and a * 60 == pytest.approx(round(a * 60)) for row in matrix for a in row)
    assert set(replay.fewshot_curve) == {"1-5", "6-10", "11-20", "21-50", "51+"}


@pytest.mark.slow
def test_bench_cl_writes_rows_table_and_plot(tmp_path, capsys):
    from stream_meta.cli.main import main

    out, png = tmp_path / "cl.json", tmp_path / "cl.png"
    rc = main(["bench", "cl", "--protocol", "split", "--source", "digits", "--tasks", "2", "--per-task", "30",
               "--test-per-task", "20", "--learners", "sgd,fomaml+er", "--baselines", "lamaml",
               "--json", str(out), "--plot", str(png)])
    assert rc == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["method"], r["family"]) for r in rows] == [
        ("sgd", "stream-meta"), ("fomaml+er", "stream-meta"), ("lamaml", "avalanche")]
    keys = {"method", "family", "seed", "ra", "ra_adapted", "bti", "forgetting", "learning_accuracy",
            "records_per_second", "peak_rss_mb", "accuracy_matrix"}
    for r in rows:
        assert keys <= set(r)
    ok = rows[1]
    # The row's figures come from the matrix it reports (20 held-out records: entries k/20).
    assert ok["ra"] == pytest.approx(sum(ok["accuracy_matrix"][-1]) / 2)
    assert ok["bti"] == pytest.approx(ok["accuracy_matrix"][1][0] - ok["accuracy_matrix"][0][0])
    assert all(a * 20 == pytest.approx(round(a * 20)) for row in ok["accuracy_matrix"] for a in row)
    assert ok["ra_adapted"] is not None
    assert rows[0]["ra_adapted"] is None and len(ok["accuracy_matrix"]) == 2
    assert rows[2]["ra"] is None and "higher" in rows[2]["error"]  # reported, with its reason
    assert png.stat().st_size > 1000
    printed = capsys.readouterr().out
    assert "cannot run" in printed and "bare torch loop" in printed
    assert json.loads(out.read_text())["plain_sgd_records_per_second"] > 0


def test_summary_over_seeds_is_mean_and_sd_without_failed_rows():
    from stream_meta.bench.cl import summarize

    def row(method, seed, ra, error=None):
        return {"method": method, "family": "stream-meta", "seed": seed, "ra": ra, "ra_adapted": None, "bti": -0.01 * seed,
                "forgetting": 0.0, "learning_accuracy": ra, "records_per_second": 100.0 + seed, "error": error}

    rows = [row("a", 0, 0.8), row("a", 1, 0.9), row("a", 2, 0.7), row("b", 0, 0.5), row("b", 1, None, error="boom")]
    a, b = summarize(rows)
    assert a["seeds"] == 3 and a["ra"] == pytest.approx(0.8) and a["ra_sd"] == pytest.approx(0.1)
    assert a["records_per_second"] == pytest.approx(101.0) and a["ra_adapted"] is None
    assert b["seeds"] == 1 and b["ra"] == 0.5 and b["ra_sd"] is None


@pytest.mark.slow
def test_bench_cl_runs_each_batch_step_scale_above_one_record_and_counts_meta_updates(tmp_path):
    from stream_meta.cli.main import main

    out = tmp_path / "cl.json"
    rc = main(["bench", "cl", "--protocol", "split", "--source", "digits", "--tasks", "2", "--per-task", "40",
               "--test-per-task", "10", "--learners", "fomaml", "--baselines", "none", "--learn-batch", "1,16",
               "--batch-update", "each,one", "--batch-step-scale", "none,linear", "--json", str(out)])
    assert rc == 0
    rows = json.loads(out.read_text())["rows"]
    # N = 1 learns the same whatever the batch settings: it runs once; the scale applies to "one".
    assert [r["method"] for r in rows] == ["fomaml@b1", "fomaml@b16/each", "fomaml@b16/one/none",
                                           "fomaml@b16/one/linear"]
    assert all(r["error"] is None for r in rows)
    assert rows[0]["meta_updates"] > rows[1]["meta_updates"] == rows[2]["meta_updates"] == rows[3]["meta_updates"] > 0
