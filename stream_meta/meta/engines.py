"""The engines that run an :class:`~stream_meta.meta.spec.InnerLoop`, and the one place
that picks between them.

- ``reference``: :mod:`stream_meta.meta.reference`, plain ``torch.func`` (any model,
  rule and loss; the ground truth of the tests);
- ``fast``: :mod:`stream_meta.meta.fast`, MLPs with a linear update rule and a loss
  without meta-parameters (:func:`~stream_meta.meta.fast.declines` says why not; plain
  adaptation of ReLU MLPs takes any rule, :func:`~stream_meta.meta.fast.adapt_declines`);
- ``auto``: ``fast`` where it applies, else ``reference``; the choice and the reason
  are logged once per distinct outcome and reported by :func:`choose_engine`.

:func:`meta_gradient_mean` averages over a meta-batch: episodes of different sizes (same
feature shapes) go in one call, padded with zero-weight rows; others by groups of one shape.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import nn

from stream_meta.meta.fast import adapt_declines, declines, fast_adapt, fast_group, one_step_applies, one_step_reptile
from stream_meta.meta.reference import adapt as reference_adapt
from stream_meta.meta.reference import reference_group
from stream_meta.meta.spec import Episode, GroupResult, InnerLoop, TaskBatch
from stream_meta.model import Params

log = logging.getLogger(__name__)
BACKENDS: tuple[str, ...] = ("auto", "reference", "fast")
_announced: set[tuple[str, str, str, bool]] = set()
_reasons: dict[tuple, str | None] = {}
_UNSEEN = object()


def choose_engine(
    backend: str, model: nn.Module, spec: InnerLoop, flat_inputs: bool = True, adapt_only: bool = False
) -> tuple[str, str]:
    """The engine ``backend`` resolves to for ``spec`` on ``model`` (for a meta-gradient,
    or with ``adapt_only`` for plain adaptation), and why.

    Raises ``ValueError`` for an unknown backend, or ``"fast"`` where it does not apply.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
    if backend == "reference":
        return "reference", "asked for"
    key = (model, spec, flat_inputs, adapt_only)
    try:  # per-record adaptation asks again and again: remember (a spec is a frozen dataclass)
        reason = _reasons.get(key, _UNSEEN)
    except TypeError:  # a rule or loss that is not hashable
        key, reason = None, _UNSEEN
    if reason is _UNSEEN:
        reason = (adapt_declines if adapt_only else declines)(model, spec, flat_inputs)
        if key is not None and len(_reasons) < 256:
            _reasons[key] = reason
    if backend == "fast":
        if reason is not None:
            raise ValueError(f"the fast backend cannot run this: {reason}")
        return "fast", "asked for"
    engine, why = ("fast", "the fast path applies") if reason is None else ("reference", f"fast path declines: {reason}")
    if (backend, engine, why, adapt_only) not in _announced:
        _announced.add((backend, engine, why, adapt_only))
        log.info("meta engine: %s chose %s%s (%s)", backend, engine, " to adapt" if adapt_only else "", why)
    return engine, why


def group_by_shape(episodes: Sequence[Episode]) -> list[list[Episode]]:
    """Episodes split into groups of equal tensor shapes, in first-seen order."""
    groups: dict[tuple, list[Episode]] = {}
    for ep in episodes:
        key = tuple((t.shape, t.dtype, t.device) for t in (ep.support_x, ep.support_y, ep.query_x, ep.query_y))
        groups.setdefault(key, []).append(ep)
    return list(groups.values())


def _paddable(episodes: Sequence[Episode]) -> bool:
    """Whether only the row counts differ, so one padded batch holds them all."""
    kinds = {
        (e.support_x.shape[1:], e.query_x.shape[1:], e.support_y.shape[1:], e.query_y.shape[1:],
         e.support_x.dtype, e.query_x.dtype, *(t.device for t in (e.support_x, e.query_x, e.support_y, e.query_y)))
        for e in episodes
    }
    if len(kinds) != 1:
        return False
    sx, qx, sy, qy, dsx, dqx, *devices = kinds.pop()
    return sx == qx and sy == qy and dsx == dqx and len(set(devices)) == 1


def meta_gradient_mean(
    model: nn.Module, theta: Params, extra: Params, spec: InnerLoop, episodes: Sequence[Episode], backend: str = "auto"
) -> GroupResult:
    """Mean over ``episodes`` of the meta-gradient (and query losses) under ``spec``.

    ``theta`` must be leaf tensors requiring grad (the fast path's second order
    differentiates them directly); ``extra`` holds the rule's and the loss's meta-parameters.
    """
    if not episodes:
        raise ValueError("a meta-batch needs at least one episode")
    engine, _ = choose_engine(backend, model, spec, all(e.support_x.dim() == 2 for e in episodes))
    flat = engine == "fast" and one_step_applies(model, spec) and _paddable(episodes)
    groups = [] if flat else group_by_shape(episodes)
    if flat:
        batches = []  # one flat pass over every episode's rows, no task dimension
        r = one_step_reptile(model, theta, spec, episodes)
        results = [GroupResult(r.grads, {k: torch.zeros_like(v) for k, v in extra.items()}, r.query_loss,
                               r.query_loss_before)]
    elif len(groups) == 1:
        batches = [TaskBatch.stack(episodes, spec.order)]
    elif _paddable(episodes):  # the daemon's new episode carries replayed records, its companions do not
        batches = [TaskBatch.pad(episodes, spec.order)]
    else:
        batches = [TaskBatch.stack(g, spec.order) for g in groups]
    if batches:
        group = fast_group if engine == "fast" else reference_group
        results = [group(model, theta, extra, spec, b) for b in batches]
    total = results[0]
    for r in results[1:]:
        total = total + r
    n = len(episodes)
    return GroupResult(
        {k: v / n for k, v in total.grads.items()},
        {k: v / n for k, v in total.extra_grads.items()},
        total.query_loss / n,
        total.query_loss_before / n,
    )


def adapt(
    model: nn.Module, theta: Params, extra: Params, spec: InnerLoop, x: torch.Tensor, y: torch.Tensor,
    backend: str = "auto",
) -> Params:
    """One task's fast weights from ``(x, y)`` under ``spec`` (detached; the order does not
    change them), on the engine ``backend`` resolves to."""
    engine, _ = choose_engine(backend, model, spec, x.dim() == 2, adapt_only=True)
    if engine == "fast":
        return fast_adapt(model, theta, extra, spec, x, y)
    return reference_adapt(model, theta, extra, spec, x, y)
