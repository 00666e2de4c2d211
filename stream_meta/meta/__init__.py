"""The MAML family, functional: parameters are dicts, the model is applied with
``torch.func.functional_call``, tasks of a meta-batch are vectorised.

Public API: :class:`Episode`; :func:`get_algorithm` / :data:`ALGORITHMS` (``maml``,
``fomaml``, ``reptile``, ``metasgd``, ``lamaml``, ``anil``; the seed's ``neural-optimizer``
and ``lmml`` from ``seed_learners``), each with ``init_extra``,
``adapt``, ``meta_gradient``, ``project_extra``; :func:`meta_step`; the two pluggable
parts of the inner loop, :class:`UpdateRule` (:class:`SGD`, :class:`LearnedStepSizes`)
and :class:`InnerLoss` (``LOSSES``: ``ce``, ``mse``); :func:`loss`.

Modules: ``spec`` (episodes, the inner-loop spec), ``rules`` and ``losses`` (the
pluggable parts), ``reference`` (plain ``torch.func``: the ground truth), ``fast`` (the
MLP fast path), ``engines`` (picks one), ``algorithms``, ``api``, ``mlp``.
"""

from stream_meta.meta.algorithms import (
    ALGORITHMS,
    ANIL,
    FOMAML,
    MAML,
    GradientMetaAlgorithm,
    LaMAML,
    MetaAlgorithm,
    MetaSGD,
    Reptile,
    get_algorithm,
)
from stream_meta.meta.api import meta_step
from stream_meta.meta.engines import BACKENDS
from stream_meta.meta.gail import GAILMeta
from stream_meta.meta.losses import LOSSES, InnerLoss
from stream_meta.meta.reference import loss
from stream_meta.meta.rules import SGD, LearnedStepSizes, UpdateRule
from stream_meta.meta.spec import Episode, InnerLoop
from stream_meta.meta.seed_learners import LMML, NeuralOptimizer

# Registered here, not in algorithms.py (they subclass its base class: no import cycle);
# importing any stream_meta.meta module runs this first.
ALGORITHMS.update({cls.name: cls for cls in (NeuralOptimizer, LMML)})

ALGORITHMS[GAILMeta.name] = GAILMeta  # registered here: gail builds on algorithms, so it cannot be listed there

__all__ = [
    "ALGORITHMS",
    "ANIL",
    "BACKENDS",
    "FOMAML",
    "GAILMeta",
    "LOSSES",
    "MAML",
    "Episode",
    "GradientMetaAlgorithm",
    "InnerLoop",
    "InnerLoss",
    "LaMAML",
    "LMML",
    "NeuralOptimizer",
    "LearnedStepSizes",
    "MetaAlgorithm",
    "MetaSGD",
    "Reptile",
    "SGD",
    "UpdateRule",
    "get_algorithm",
    "loss",
    "meta_step",
]
