"""``bench defaults``: the rank rule, and one tiny run through the daemon's path."""

import json

import pytest

from stream_meta.bench.defaults import choose, main, ranks


def test_ranks_share_ties_and_best_is_one():
    assert ranks({"a": 0.9, "b": 0.5, "c": 0.9}) == {"a": 1.5, "c": 1.5, "b": 3.0}


def test_the_rule_is_best_mean_rank_then_smallest_worst_gap():
    def rows(**acc):
        return {k: {"prequential_accuracy": v, "records_per_second": 100} for k, v in acc.items()}

    # a wins one protocol by far and loses two narrowly; b is second-best everywhere.
    results = {"p1": rows(a=0.9, b=0.6, c=0.5), "p2": rows(a=0.5, b=0.6, c=0.7), "p3": rows(a=0.5, b=0.6, c=0.7)}
    winner, table = choose(results, ["a", "b", "c"])
    assert table["a"]["mean_rank"] == pytest.approx(7 / 3) and table["b"]["mean_rank"] == 2
    assert table["c"]["mean_rank"] == pytest.approx(5 / 3) and winner == "c"
    # Equal mean ranks: the smaller worst-case gap to the best wins.
    results = {"p1": rows(a=0.9, b=0.8), "p2": rows(a=0.4, b=0.6)}
    winner, table = choose(results, ["a", "b"])
    assert table["a"]["mean_rank"] == table["b"]["mean_rank"] and winner == "b"
    assert table["b"]["worst_gap"] == pytest.approx(0.1)


def test_a_default_must_keep_up_with_the_fastest_meta_learner():
    def rows(**acc_rate):
        return {k: {"prequential_accuracy": a, "records_per_second": r} for k, (a, r) in acc_rate.items()}

    # "slow" is the most accurate everywhere but runs at a fifth of "fast"'s rate
    results = {p: rows(slow=(0.9, 20), fast=(0.8, 100), sgd=(0.5, 400)) for p in ("p1", "p2")}
    winner, table = choose(results, ["slow", "fast", "sgd"])
    assert table["slow"]["mean_rank"] == 1 and not table["slow"]["keeps_up"]
    assert table["fast"]["keeps_up"] and winner == "fast"  # sgd's rate is not the yardstick
    # within half the fastest meta-learner's rate, accuracy decides
    results = {p: rows(slow=(0.9, 60), fast=(0.8, 100)) for p in ("p1", "p2")}
    assert choose(results, ["slow", "fast"])[0] == "slow"


@pytest.mark.slow
def test_a_tiny_run_writes_every_protocol_and_learner(tmp_path, capsys):
    out = tmp_path / "d.json"
    rc = main(["--presets", "sgd,fomaml", "--protocols", "digits-rotations,river-sea", "--digits-tasks", "2",
               "--digits-per-task", "30", "--river-per-segment", "30", "--river-task-free", "30",
               "--data-dir", str(tmp_path), "--json", str(out)])
    assert rc == 0
    data = json.loads(out.read_text())
    assert set(data["protocols"]) == {"digits-rotations", "river-sea"}
    sea = data["protocols"]["river-sea"]
    assert {"sgd", "fomaml", "river-ARF", "river-HoeffdingTree", "river-LogReg"} <= set(sea)
    assert 0 <= sea["fomaml"]["prequential_accuracy"] <= 1 and sea["fomaml"]["meta_updates"] > 0
    assert data["best"] in ("sgd", "fomaml")
    assert "best across protocols" in capsys.readouterr().out


@pytest.mark.slow
def test_set_reaches_every_candidates_daemon(tmp_path):
    def run(*extra: str) -> dict:
        out = tmp_path / f"d{len(extra)}.json"
        assert main(["--presets", "reptile+er-tuned", "--protocols", "digits-rotations", "--digits-tasks", "2",
                     "--digits-per-task", "60", "--no-river", "--data-dir", str(tmp_path), "--json", str(out),
                     *extra]) == 0
        return json.loads(out.read_text())["protocols"]["digits-rotations"]["reptile+er-tuned"]

    # One meta-update per task per learn batch: batches of 20 make fewer than one record at a time.
    assert run("--set", '{"learn_batch": 20, "batch_update": "one"}')["meta_updates"] < run()["meta_updates"]


@pytest.mark.parametrize("bad", ["[1]", "{learn_batch: 10}"])
def test_set_must_be_a_json_object(bad):
    with pytest.raises(SystemExit):
        main(["--set", bad, "--no-river"])
