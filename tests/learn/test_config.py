"""The learner's configuration groups: validation, and the names they spell out
(to stay torch-free) match what stream_meta.meta accepts."""

import dataclasses
import inspect

import pytest

from stream_meta.learn import config as groups
from stream_meta.learn.config import InnerLoopConfig, MetaStepConfig, ModelConfig, ReplayConfig
from stream_meta.learn.learner import OnlineMetaLearner, build_algorithm
from stream_meta.meta import ALGORITHMS
from stream_meta.meta.algorithms import GradientMetaAlgorithm
from stream_meta.meta.engines import BACKENDS
from stream_meta.meta.losses import LOSSES


def test_spelled_out_names_match_the_meta_package():
    assert sorted(groups.META_ALGORITHMS) == sorted(ALGORITHMS)
    assert groups.LOSSES == tuple(LOSSES) and groups.BACKENDS == BACKENDS


def test_algorithm_options_table_matches_the_constructors():
    shared = set(inspect.signature(GradientMetaAlgorithm.__init__).parameters)
    for name, cls in ALGORITHMS.items():
        own = {p for c in cls.__mro__ if c not in (GradientMetaAlgorithm, object) and "__init__" in vars(c)
               for p in inspect.signature(c.__init__).parameters} - shared - {"kwargs"}
        table = {opt for opt, takers in groups.ALGORITHM_OPTIONS.items() if name in takers}
        assert own == table, name
    # every shared option is an InnerLoopConfig field but clip_grad_norm (a meta-step setting)
    # and the plug points that take objects, not settings (an update rule, a learned inner loss)
    fields = {f.name for f in dataclasses.fields(InnerLoopConfig)}
    assert shared - {"self", "clip_grad_norm", "rule", "inner_loss"} <= fields


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_every_option_an_algorithm_takes_reaches_it(name):
    own = {opt: value for opt, value in (("first_order", True), ("head", ("2.weight",)), ("max_scale", 2.0),
                                         ("adversarial_weight", 0.3), ("generator_hidden", 7), ("expert_steps", 2),
                                         ("prefix_shots", 2))
           if name in groups.ALGORITHM_OPTIONS[opt]}
    loss = "ce" if name == "gail-meta" else "mse"  # gail-meta generates a classifier
    inner = InnerLoopConfig(algorithm=name, loss=loss, max_inner_lr=3.0, backend="reference", **own)
    alg = build_algorithm(inner, MetaStepConfig(clip_grad_norm=0.25))
    assert (alg.name, alg.loss, alg.max_inner_lr, alg.backend, alg.clip_grad_norm) == (name, loss, 3.0, "reference", 0.25)
    for opt, value in own.items():
        assert getattr(alg, opt) == value


@pytest.mark.parametrize("bad, needle", [
    (dict(algorithm="maml", first_order=True), "fomaml"),
    (dict(algorithm="fomaml", head=("2.weight",)), "head applies to anil"),
    (dict(algorithm="anil", max_scale=2.0), "max_scale applies to"),
    (dict(algorithm="magic"), "unknown meta-algorithm"),
    (dict(loss="hinge"), "unknown loss"),
    (dict(backend="gpu"), "unknown backend"),
    (dict(lr=20.0), "max_inner_lr"),
    (dict(algorithm="anil", head=()), "at least one"),
])
def test_inner_loop_config_rejects_bad_combinations(bad, needle):
    with pytest.raises(ValueError, match=needle):
        InnerLoopConfig(**bad)


@pytest.mark.parametrize("make, needle", [
    (lambda: ModelConfig(4, 1), "num_classes"),
    (lambda: ModelConfig(4, 3, (8, 0)), "hidden"),
    (lambda: MetaStepConfig(clip_grad_norm=0.0), "clip_grad_norm"),
    (lambda: MetaStepConfig(query_size=0), "query_size"),
    (lambda: ReplayConfig(memory_policy="lru"), "memory policy"),
    (lambda: groups.RegularizerConfig("l2", 1.0), "unknown regularizer"),
    (lambda: groups.ProbeConfig(every=0), "every"),
])
def test_groups_reject_bad_values(make, needle):
    with pytest.raises(ValueError, match=needle):
        make()


def test_groups_are_frozen_and_hidden_lists_become_tuples():
    model = ModelConfig(4, 3, [8, 8])  # type: ignore[arg-type]
    assert model.hidden == (8, 8) and hash(model) == hash(ModelConfig(4, 3, (8, 8)))
    with pytest.raises(dataclasses.FrozenInstanceError):
        model.input_dim = 5  # type: ignore[misc]


def test_anil_head_from_the_group_is_what_the_inner_loop_adapts():
    learner = OnlineMetaLearner(ModelConfig(4, 3, (8,)), inner_cfg=InnerLoopConfig(algorithm="anil", head=("2.bias",)))
    assert learner.alg.adapted_names(learner.model, learner.params) == ("2.bias",)
