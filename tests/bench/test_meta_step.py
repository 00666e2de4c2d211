"""The meta-step benchmark command runs and reports (a smoke test: no timing asserted)."""

from __future__ import annotations

import json

import pytest

from stream_meta.bench import meta_step as bench


def test_help_has_an_example(capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "example:" in out and "--batches" in out


def test_runs_and_writes_json(tmp_path, capsys):
    path = tmp_path / "bench.json"
    argv = ["--batches", "1,3", "--algorithms", "maml,fomaml", "--sizes", "6,5,4", "--ways", "3", "--shots", "2",
            "--queries", "2", "--repeats", "1", "--steps", "2", "--json", str(path)]
    assert bench.main(argv) == 0
    out = capsys.readouterr().out
    assert "speedup" in out and "naive" in out
    rows = json.loads(path.read_text())["rows"]
    assert [(r["algorithm"], r["meta_batch"]) for r in rows] == [("maml", 1), ("maml", 3), ("fomaml", 1), ("fomaml", 3)]
    assert all(r["naive"] > 0 and r["auto"] > 0 and r["speedup"] > 0 for r in rows)
    assert all(r["engines"] == {"auto": "fast", "reference": "reference"} for r in rows)
    assert "# maml: auto runs fast (the fast path applies); reference runs reference (asked for)" in out
    assert all(0 <= r["max_rel_diff"] < 1e-6 for r in rows)
    assert all(r["naive_gflop_per_s"] > 0 and r["auto_gflop_per_s"] > 0 for r in rows)


def test_fails_when_engines_disagree_with_naive(monkeypatch):
    """The agreement check is live: a naive step that computes something else stops the run."""
    real = bench.naive_step

    def skewed(alg, model, opt, episodes, steps, lr):
        real(alg, model, opt, episodes, steps, lr * 3)

    monkeypatch.setattr(bench, "naive_step", skewed)
    argv = ["--batches", "2", "--algorithms", "fomaml", "--sizes", "6,5,4", "--ways", "3", "--shots", "2",
            "--queries", "2", "--repeats", "1", "--steps", "2"]
    with pytest.raises(SystemExit, match="differ from naive"):
        bench.main(argv)


def test_rejects_unknown_algorithm():
    with pytest.raises(SystemExit):
        bench.main(["--algorithms", "protonet"])


@pytest.mark.parametrize("name", ["maml", "fomaml"])
def test_naive_baseline_computes_the_same_meta_gradient(name):
    """The timed baseline does the same work: its update equals ours (SGD, lr 1)."""
    import torch

    from tests.meta.helpers import random_episodes
    from stream_meta.meta import get_algorithm
    from stream_meta.model import build_mlp, init_params

    model = build_mlp([5, 7, 3]).double()
    theta = {k: v.double() for k, v in init_params(model, torch.Generator().manual_seed(0)).items()}
    model.load_state_dict(theta)
    eps = random_episodes(3, in_dim=5, classes=3)
    bench.naive_step(name, model, torch.optim.SGD(model.parameters(), lr=1.0), eps, steps=2, lr=0.3)
    grads, _, _ = get_algorithm(name).meta_gradient(model, theta, {}, eps, steps=2, lr=0.3)
    for k, p in model.named_parameters():
        torch.testing.assert_close(theta[k] - p.detach(), grads[k], rtol=1e-10, atol=1e-12)


def test_the_seed_learners_are_timed_against_naive_maml(tmp_path, capsys):
    """neural-optimizer and lmml equal MAML at initialisation: the agreement check against
    naive MAML holds, and they run on the reference engine."""
    path = tmp_path / "bench.json"
    argv = ["--batches", "2", "--algorithms", "neural-optimizer,lmml", "--sizes", "6,5,4", "--ways", "3",
            "--shots", "2", "--queries", "2", "--repeats", "1", "--steps", "2", "--json", str(path)]
    assert bench.main(argv) == 0
    rows = json.loads(path.read_text())["rows"]
    assert [r["algorithm"] for r in rows] == ["neural-optimizer", "lmml"]
    assert all(r["engines"] == {"auto": "reference", "reference": "reference"} for r in rows)
    assert all(0 <= r["max_rel_diff"] < 1e-6 and r["auto"] > 0 for r in rows)
