import io

import torch

from stream_meta.learn.config import MetaStepConfig, ModelConfig, ProbeConfig
from stream_meta.learn.learner import OnlineMetaLearner
from stream_meta.learn.probes import ForgettingProbe


def test_probe_holds_out_bounded_records_and_measures_the_drop():
    p = ForgettingProbe(per_task=3, hold_out_every=1, max_tasks=2)
    for task in ("a", "b", "c"):
        held = [p.offer(task, torch.tensor([float(i)]), i % 2) for i in range(5)]
        assert held == [True, True, True, False, False]
    assert len(p) == 2  # "a" dropped, bounded
    right = lambda task, x: (x[:, 0].long() % 2)  # noqa: E731
    assert p.evaluate(right, current="c") == (1.0, 0.0)
    wrong_b = lambda task, x: (x[:, 0].long() % 2) if task == "c" else 1 - (x[:, 0].long() % 2)  # noqa: E731
    retained, forgetting = p.evaluate(wrong_b, current="c")
    assert retained == 0.5 and forgetting == 1.0  # "b" fell from 1.0 to 0.0; "c" is current


def test_learner_probe_estimate_round_trips_and_never_learns_probe_records():
    kw = dict(meta_cfg=MetaStepConfig(support_size=4, query_size=2, episode_stride=2),
              probe_cfg=ProbeConfig(per_task=3, every=10))
    g = torch.Generator().manual_seed(0)
    recs = [(f"t{i // 40}", torch.randn(4, generator=g), i % 2) for i in range(120)]
    a = OnlineMetaLearner(ModelConfig(4, 2, (8,)), **kw)
    for t, x, y in recs[:80]:
        a.learn(t, x, y)
    assert a.retained_accuracy is not None and a.forgetting is not None and len(a.probe) == 2
    assert a.episodes.seen("t0") == 40 - 3  # the 3 probe records were held out
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    b = OnlineMetaLearner(ModelConfig(4, 2, (8,)), **kw)
    b.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
    for t, x, y in recs[80:]:
        a.learn(t, x, y)
        b.learn(t, x, y)
    assert (a.retained_accuracy, a.forgetting) == (b.retained_accuracy, b.forgetting)
