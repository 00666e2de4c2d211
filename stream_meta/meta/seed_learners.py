"""Two of the seed design's learners as algorithms: the neural optimiser and LMML.

- ``neural-optimizer``: MAML whose inner update rule is a meta-learned coordinate-wise
  MLP (:class:`~stream_meta.meta.neural_optimizer.CoordinatewiseMLP`), SGD at start;
- ``lmml``: MAML whose inner loop descends a meta-learned, task-conditioned loss
  (:class:`~stream_meta.meta.learned_loss.LearnedLoss`), cross-entropy at start; the
  query set is scored with cross-entropy.

Both run on the reference engine (their networks are meta-parameters) and report a
health metric (:meth:`health_metrics`): the optimiser's update norm over SGD's, and the
learned loss's value over cross-entropy.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.func import functional_call, grad

from stream_meta.meta.algorithms import GradientMetaAlgorithm
from stream_meta.meta.learned_loss import LearnedLoss
from stream_meta.meta.losses import reduce_rows
from stream_meta.meta.neural_optimizer import CoordinatewiseMLP
from stream_meta.meta.rules import sgd_update
from stream_meta.meta.spec import Order
from stream_meta.model import Params


def _detached(p: Params) -> Params:
    return {k: v.detach() for k, v in p.items()}


class NeuralOptimizer(GradientMetaAlgorithm):
    """MAML with a learned inner optimiser: Meta-SGD's learned step sizes with a learned
    network's residual on top (``net_hidden``: its width; ``net_bound``: the bound on its
    outputs; ``max_scale``: the step sizes' bound, as Meta-SGD's; ``first_order``: inner
    gradients as constants, the rule still learned)."""

    name = "neural-optimizer"
    # A task's cached fast weights are refreshed by adapting again from the meta-parameters,
    # not by one more step from them: the rule's per-task state (step count, momenta) is
    # not cached, and a lone step with it reset is a regime the rule is not meta-trained on
    # (digits, seeds 3, 4: +4.0 and +2.0 points at positions 6-10; Meta-SGD gains nothing so).
    restarts = True

    def __init__(self, *, net_hidden: int = 16, net_bound: float = 0.5, max_scale: float = 10.0,
                 first_order: bool = False, **kwargs: Any) -> None:
        if kwargs.get("rule") is not None:
            raise ValueError("neural-optimizer brings its own update rule")
        self._rule = CoordinatewiseMLP(net_hidden, net_bound, max_scale)
        super().__init__(**kwargs)
        self.net_hidden, self.net_bound, self.max_scale = net_hidden, net_bound, max_scale
        self.first_order = first_order

    @property
    def order(self) -> Order:  # type: ignore[override]
        return "first" if self.first_order else "second"

    def update_rule(self) -> CoordinatewiseMLP:
        return self._rule

    def health_metrics(self, model: nn.Module, params: Params, extra: Params, x: torch.Tensor, y: torch.Tensor,
                       *, steps: int, lr: float) -> dict[str, float]:
        """``update_norm_ratio``: the norm of the rule's updates over a task's inner loop on
        ``(x, y)`` divided by the norm of SGD's updates at the same points (1 at init)."""
        spec = self.spec(model, params, steps=max(steps, 1), lr=lr)
        rule, meta = self._rule, _detached(extra)
        fast = {k: params[k].detach() for k in spec.adapted}
        frozen = {k: v.detach() for k, v in params.items() if k not in fast}

        def inner(f: Params) -> torch.Tensor:
            return reduce_rows(spec.inner.rows(functional_call(model, {**frozen, **f}, (x,)), y, meta))

        state, ours, sgd = rule.init_state(fast, meta), 0.0, 0.0
        with torch.no_grad():
            for _ in range(spec.steps):
                g = grad(inner)(fast)
                new, state = rule.step(fast, g, state, meta, lr=lr)
                ours += sum(float((new[k] - fast[k]).pow(2).sum()) for k in g)
                sgd += sum(float(sgd_update(v, lr).pow(2).sum()) for v in g.values())
                fast = new
        return {"update_norm_ratio": (ours / sgd) ** 0.5 if sgd > 0 else 1.0}


class LMML(GradientMetaAlgorithm):
    """MAML descending a learned loss in the inner loop (``net_hidden``: the loss network's
    width; ``net_bound``: the learned term's bound; ``net_modulate``: MeTAL's per-task affine
    modulation of its hidden layer). Second order: the loss's weights get
    their meta-gradient only through the inner gradients. The learned term is added to
    ``loss`` (cross-entropy by default), which also scores the query set."""

    name = "lmml"

    def __init__(self, *, net_hidden: int = 16, net_bound: float = 0.1, net_modulate: bool = False,
                 **kwargs: Any) -> None:
        if kwargs.get("inner_loss") is not None:
            raise ValueError("lmml brings its own inner loss")
        super().__init__(**kwargs)
        self._inner_loss = LearnedLoss(net_hidden, net_bound, self._loss, modulate=net_modulate)
        self.net_hidden, self.net_bound, self.net_modulate = net_hidden, net_bound, net_modulate

    def health_metrics(self, model: nn.Module, params: Params, extra: Params, x: torch.Tensor, y: torch.Tensor,
                       *, steps: int, lr: float) -> dict[str, float]:
        """On ``(x, y)`` at ``params``: ``learned_loss`` and ``base_loss`` (means: the
        learned inner loss and the task loss, cross-entropy by default), and their ratio
        ``learned_loss_ratio`` (1 at init)."""
        with torch.no_grad():
            out = functional_call(model, _detached(params), (x,))
            learned = float(self._inner_loss.rows(out, y, _detached(extra)).mean())
            base = float(self._loss.rows(out, y, {}).mean())
        return {"learned_loss": learned, "base_loss": base, "learned_loss_ratio": learned / base if base > 0 else 1.0}
