"""The MAML family as small objects: MAML, FOMAML, Reptile, Meta-SGD, La-MAML, ANIL.

Each algorithm is configuration only (constructor arguments, stored unchanged); the
meta-parameters live in the caller's ``params`` and ``extra`` dicts.

>>> import torch
>>> from stream_meta.model import build_mlp, init_params
>>> from stream_meta.meta.spec import Episode
>>> model = build_mlp([4, 8, 3])
>>> theta = init_params(model, torch.Generator().manual_seed(0))
>>> x, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
>>> ep = Episode("t", x[:4], y[:4], x[4:], y[4:])
>>> alg = get_algorithm("maml", clip_grad_norm=10.0)
>>> extra = alg.init_extra(theta)
>>> grads, extra_grads, stats = alg.meta_gradient(model, theta, extra, [ep], steps=2, lr=0.1)
>>> sorted(grads) == sorted(theta), stats["nonfinite"]
(True, False)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
from torch import nn

from stream_meta.meta.engines import BACKENDS, choose_engine, meta_gradient_mean
from stream_meta.meta.engines import adapt as engine_adapt
from stream_meta.meta.losses import InnerLoss, get_loss
from stream_meta.meta.rules import SGD, LearnedStepSizes, UpdateRule
from stream_meta.meta.spec import Episode, InnerLoop, Order
from stream_meta.model import Params


@runtime_checkable
class MetaAlgorithm(Protocol):
    """One member of the MAML family.

    ``params`` are the shared meta-parameters (model weights); ``extra`` holds the
    further meta-learned tensors of the inner update rule (Meta-SGD's step-size
    multipliers, under the parameters' names) and of the inner loss (keys starting
    with ``"loss."``), empty for plain SGD and CE/MSE.
    ``meta_gradient`` returns gradients for both, to be applied by an outer optimiser,
    and ``stats``: mean query loss after adaptation (``query_loss``) and before it
    (``query_loss_before``), ``nonfinite`` (grads were zeroed: skip the update),
    ``grad_norm`` (before clipping), ``clipped``, ``tasks``. After the optimiser step,
    call ``project_extra(extra)`` to keep learned step sizes in bounds.
    """

    name: str

    def init_extra(self, params: Params) -> Params: ...

    def project_extra(self, extra: Params) -> None: ...

    def adapt(
        self, model: nn.Module, params: Params, extra: Params, x: torch.Tensor, y: torch.Tensor, *, steps: int, lr: float
    ) -> Params: ...

    def meta_gradient(
        self, model: nn.Module, params: Params, extra: Params, episodes: Sequence[Episode], *, steps: int, lr: float
    ) -> tuple[Params, Params, dict[str, Any]]: ...


def _global_norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    if not tensors:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t) for t in tensors]))


class GradientMetaAlgorithm:
    """Shared machinery: inner-loop spec, engines, guards.

    Args:
        loss: ``"ce"`` (cross-entropy, class labels), ``"mse"`` (regression) or an
            :class:`~stream_meta.meta.losses.InnerLoss` (the task loss; the inner loop
            descends it too).
        rule: the inner update rule (:mod:`stream_meta.meta.rules`); ``None`` is plain
            SGD (Meta-SGD and La-MAML bring their own).
        inner_loss: the loss the inner loop descends, if not ``loss`` (e.g. a learned
            loss; the query set is always scored with ``loss``).
        clip_grad_norm: clip the global norm of the meta-gradient (params and extra
            together) to this value; ``None`` disables clipping.
        max_inner_lr: the inner ``lr`` passed to ``adapt``/``meta_gradient`` must lie
            in ``[0, max_inner_lr]`` (``ValueError`` otherwise).
        backend: ``"auto"`` (the fast path where it applies, else the reference),
            ``"reference"`` or ``"fast"``; see :mod:`stream_meta.meta.engines`.
    """

    name: ClassVar[str] = ""
    order: ClassVar[Order] = "second"

    def __init__(
        self,
        *,
        loss: str | InnerLoss = "ce",
        rule: UpdateRule | None = None,
        inner_loss: str | InnerLoss | None = None,
        clip_grad_norm: float | None = None,
        max_inner_lr: float = 10.0,
        backend: str = "auto",
    ) -> None:
        self._loss = get_loss(loss)
        self._inner_loss = None if inner_loss is None else get_loss(inner_loss)
        if rule is not None and not isinstance(rule, UpdateRule):
            raise ValueError(f"rule must be an UpdateRule, got {rule!r}")
        if clip_grad_norm is not None and not clip_grad_norm > 0:
            raise ValueError(f"clip_grad_norm must be > 0 or None, got {clip_grad_norm}")
        if not max_inner_lr > 0:
            raise ValueError(f"max_inner_lr must be > 0, got {max_inner_lr}")
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
        self.loss = loss
        self.rule = rule
        self.inner_loss = inner_loss
        self.clip_grad_norm = clip_grad_norm
        self.max_inner_lr = max_inner_lr
        self.backend = backend

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"

    # -- hooks that subclasses override ------------------------------------------
    def adapted_names(self, model: nn.Module, params: Params) -> tuple[str, ...]:
        """Names of the parameters the inner loop adapts (all, by default)."""
        return tuple(params)

    def update_rule(self) -> UpdateRule:
        """The inner update rule (``rule``, or plain SGD)."""
        return SGD() if self.rule is None else self.rule

    def init_extra(self, params: Params) -> Params:
        """The rule's and the loss's meta-parameters, at their initial values."""
        losses = (self._loss, *(() if self._inner_loss is None else (self._inner_loss,)))
        return {**self.update_rule().init_params(params, tuple(params)), **{k: v for f in losses for k, v in f.init_params(params).items()}}

    def project_extra(self, extra: Params) -> None:
        """Keep ``extra`` in bounds (in place) after an optimiser step."""
        self.update_rule().project(extra)

    def _postprocess(self, grads: Params, extra: Params) -> Params:
        return grads

    def spec(self, model: nn.Module, params: Params, *, steps: int, lr: float) -> InnerLoop:
        """The inner loop this algorithm runs: what every engine is handed."""
        self._check_lr(lr)
        names = self.adapted_names(model, params)
        return InnerLoop(steps, lr, names, self.order, self._loss, self.update_rule(), self._inner_loss)

    def engine(self, model: nn.Module, params: Params, *, inputs_2d: bool = True) -> tuple[str, str]:
        """The engine ``backend`` resolves to for ``model`` and why (as logged)."""
        return choose_engine(self.backend, model, self.spec(model, params, steps=1, lr=0.0), inputs_2d)

    # -- the protocol ------------------------------------------------------------
    def _check_lr(self, lr: float) -> None:
        if not (math.isfinite(lr) and 0.0 <= lr <= self.max_inner_lr):
            raise ValueError(f"inner lr must lie in [0, max_inner_lr={self.max_inner_lr}], got {lr}")

    def adapt(
        self, model: nn.Module, params: Params, extra: Params, x: torch.Tensor, y: torch.Tensor, *, steps: int, lr: float
    ) -> Params:
        """Fast weights for one task from its support set ``(x, y)`` (detached)."""
        spec = self.spec(model, params, steps=steps, lr=lr)
        self._check_extra(spec, extra)
        return engine_adapt(model, params, extra, spec, x, y, self.backend)

    def _check_extra(self, spec: InnerLoop, extra: Params) -> None:
        try:
            spec.rule.check(extra, spec.adapted)
        except ValueError as e:
            raise ValueError(f"{self.name}: {e}") from None

    def meta_gradient(
        self,
        model: nn.Module,
        params: Params,
        extra: Params,
        episodes: Sequence[Episode],
        *,
        steps: int,
        lr: float,
    ) -> tuple[Params, Params, dict[str, Any]]:
        """Mean meta-gradient over ``episodes``: ``(grads_params, grads_extra, stats)``.

        If any loss or gradient is not finite, all gradients are finite zeros and
        ``stats["nonfinite"]`` is True: the caller should skip the update.
        """
        spec = self.spec(model, params, steps=steps, lr=lr)
        self._check_extra(spec, extra)
        theta = {k: v.detach().requires_grad_() for k, v in params.items()}
        res = meta_gradient_mean(model, theta, extra, spec, episodes, self.backend)
        grads = self._postprocess({k: v.detach() for k, v in res.grads.items()}, extra)
        extra_grads = {k: v.detach() for k, v in res.extra_grads.items()}
        norm = _global_norm(list(grads.values()) + list(extra_grads.values()))
        after, before, norm_f = float(res.query_loss), float(res.query_loss_before), float(norm)
        nonfinite = not (math.isfinite(after) and math.isfinite(norm_f))
        clipped = False
        if nonfinite:
            grads = {k: torch.zeros_like(v) for k, v in grads.items()}
            extra_grads = {k: torch.zeros_like(v) for k, v in extra_grads.items()}
        elif self.clip_grad_norm is not None and norm_f > self.clip_grad_norm:
            clipped = True
            factor = self.clip_grad_norm / (norm_f + 1e-12)
            grads = {k: v * factor for k, v in grads.items()}
            extra_grads = {k: v * factor for k, v in extra_grads.items()}
        stats = {
            "query_loss": after,
            "query_loss_before": before,
            "nonfinite": nonfinite,
            "grad_norm": norm_f,
            "clipped": clipped,
            "tasks": len(episodes),
        }
        return grads, extra_grads, stats


class MAML(GradientMetaAlgorithm):
    """Second-order MAML: the query loss differentiated through all K inner steps."""

    name = "maml"


class FOMAML(GradientMetaAlgorithm):
    """First-order MAML: the query-loss gradient at the fast weights."""

    name = "fomaml"
    order = "first"


class Reptile(GradientMetaAlgorithm):
    """Reptile: adapts on support + query, returns ``theta - phi`` as the "gradient"."""

    name = "reptile"
    order = "reptile"


class MetaSGD(GradientMetaAlgorithm):
    """Meta-SGD: learned per-parameter inner step sizes ``lr * s`` (``s`` in ``extra``).

    ``s`` starts at 1 (so step sizes start at ``lr``) and is kept in ``[0, max_scale]``
    both in the inner loop and by :meth:`project_extra`. With ``first_order`` the inner
    gradients are constants (``s`` still gets its gradient through the update).
    """

    name = "metasgd"

    def __init__(self, *, first_order: bool = False, max_scale: float = 10.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not max_scale > 0:
            raise ValueError(f"max_scale must be > 0, got {max_scale}")
        self.first_order = first_order
        self.max_scale = max_scale

    @property
    def order(self) -> Order:  # type: ignore[override]
        return "first" if self.first_order else "second"

    def update_rule(self) -> UpdateRule:
        return LearnedStepSizes(self.max_scale)


class LaMAML(MetaSGD):
    """La-MAML's use of Meta-SGD step sizes: they also scale the outer step.

    The parameter gradient returned is ``clamp(s, 0, max_scale) * g``, so an outer
    SGD step with learning rate ``lr`` is La-MAML's ``theta -= relu(alpha) * g`` with
    ``alpha = lr * s``. (Adam divides out a steady per-coordinate scale, so use SGD
    for the params to get La-MAML's behaviour.)
    """

    name = "lamaml"

    def _postprocess(self, grads: Params, extra: Params) -> Params:
        s = LearnedStepSizes(self.max_scale).scales({k: v.detach() for k, v in extra.items()}, grads)
        return {k: g * s[k] for k, g in grads.items()}


class ANIL(GradientMetaAlgorithm):
    """ANIL: the inner loop adapts only the head; the body is meta-learned.

    The head is the module owning the last parameter (``head`` overrides it with a
    tuple of parameter names). Second order through the head steps unless
    ``first_order``.
    """

    name = "anil"

    def __init__(self, *, head: tuple[str, ...] | None = None, first_order: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.head = None if head is None else tuple(head)
        self.first_order = first_order

    @property
    def order(self) -> Order:  # type: ignore[override]
        return "first" if self.first_order else "second"

    def adapted_names(self, model: nn.Module, params: Params) -> tuple[str, ...]:
        if self.head is not None:
            unknown = [k for k in self.head if k not in params]
            if unknown:
                raise ValueError(f"anil head names not in params: {unknown}")
            return self.head
        last = list(params)[-1]
        prefix = last.rsplit(".", 1)[0] + "." if "." in last else ""
        return tuple(k for k in params if k.startswith(prefix) and "." not in k[len(prefix):])


ALGORITHMS: dict[str, type[GradientMetaAlgorithm]] = {
    cls.name: cls for cls in (MAML, FOMAML, Reptile, MetaSGD, LaMAML, ANIL)
}


def get_algorithm(name: str, **kwargs: Any) -> GradientMetaAlgorithm:
    """The algorithm called ``name``, configured by ``kwargs`` (see each class)."""
    try:
        cls = ALGORITHMS[name]
    except KeyError:
        raise ValueError(f"unknown meta-algorithm {name!r}; choose one of {sorted(ALGORITHMS)}") from None
    return cls(**kwargs)
