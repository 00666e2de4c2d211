"""LMML's learned inner loss: the task loss plus a learned, task-conditioned term (ML3 / MeTAL).

For a task's inner set (logits ``z_i``, labels ``y_i``, ``N`` rows, ``C`` classes) each
row's loss is

    l_i = CE(z_i, y_i) + B * tanh(w2 . tanh(W1 [z_i - mean(z_i), onehot(y_i), p_i, c, L] + b1) + b2)

with ``p_i = softmax(z_i)``, the task state ``c`` (the mean softmax over the set: the class
statistics the learner currently predicts) and ``L`` (the set's mean base loss). The
base loss is cross-entropy (``base``: MSE against one-hot targets also works; then the
targets stand for ``onehot(y_i)``). The output layer (``w2``, ``b2``) starts at zero, so
a fresh LMML loss is exactly the base loss and its gradients are the base loss's: LMML
at initialisation is MAML. ``B`` (``bound``) bounds the learned term. Weights live in ``extra`` under ``loss.*``; they
are meta-learned through the inner steps (the query set is always scored with CE).

>>> import torch
>>> loss = LearnedLoss()
>>> meta = loss.init_params({"b": torch.zeros(3)})
>>> out, y = torch.zeros(2, 3), torch.tensor([0, 2])
>>> round(float(loss.rows(out, y, meta).mean()), 4)  # at initialisation: cross-entropy
1.0986
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from stream_meta.meta.losses import CrossEntropy, InnerLoss
from stream_meta.model import Params

KEYS = ("loss.w1", "loss.b1", "loss.w2", "loss.b2")
FILM_KEYS = ("loss.film.wg", "loss.film.bg", "loss.film.wb", "loss.film.bb")


def n_features(classes: int) -> int:
    """Inputs of the loss network for ``classes`` classes: logits, one-hot, softmax, class statistics, mean CE."""
    return 4 * classes + 1


def n_state(classes: int) -> int:
    """Inputs of the modulation (``modulate``): predicted class statistics, label frequencies, mean base loss."""
    return 2 * classes + 1


@dataclass(frozen=True)
class LearnedLoss:
    """LMML's inner loss (see the module doc). ``hidden``: the loss network's width;
    ``bound``: ``B``, the learned term's bound. The number of classes is read from the
    output layer's bias (the model's last parameter) in :meth:`init_params`."""

    name: ClassVar[str] = "lmml"
    learned: ClassVar[bool] = True
    # Its task state averages over the rows: engines hand it the row weights of a padded set.
    set_statistics: ClassVar[bool] = True
    hidden: int = 16
    # Small: at 1 the learned term outweighed cross-entropy and cost about 14 points on
    # the few-shot stream (README, "The seed's learners"); 0.1 was at or above MAML.
    bound: float = 0.1
    base: InnerLoss = CrossEntropy()
    # MeTAL's affine modulation: the hidden layer scaled and shifted per task, both
    # generated from the task state (``n_state``); off = the concatenated state only.
    modulate: bool = False
    output_grad = None  # no closed form: engines differentiate rows

    def __post_init__(self) -> None:
        if self.base.learned:
            raise ValueError("the base of a learned loss must not be learned itself")
        if self.hidden < 1:
            raise ValueError(f"hidden must be >= 1, got {self.hidden}")
        if not (math.isfinite(self.bound) and self.bound > 0):
            raise ValueError(f"bound must be finite and > 0, got {self.bound}")

    def init_params(self, params: Params) -> Params:
        last = list(params.values())[-1]
        classes, dtype = last.shape[0], last.dtype
        n = n_features(classes)
        g = torch.Generator().manual_seed(4321)  # fixed: independent of the model's seed
        w1 = torch.randn(n, self.hidden, generator=g, dtype=torch.float64) / math.sqrt(n)
        # Zero: the modulation starts as the identity (scale 1, shift 0).
        film = {k: torch.zeros(shape, dtype=dtype) for k, shape in zip(
            FILM_KEYS, [(n_state(classes), self.hidden), (self.hidden,)] * 2)} if self.modulate else {}
        return {
            **film,
            "loss.w1": w1.to(dtype),
            "loss.b1": torch.zeros(self.hidden, dtype=dtype),
            # Zero output layer: the learned term starts at 0, the loss at cross-entropy.
            "loss.w2": torch.zeros(self.hidden, dtype=dtype),
            "loss.b2": torch.zeros((), dtype=dtype),
        }

    def learned_term(self, out: torch.Tensor, y: torch.Tensor, meta: Params,
                     weights: torch.Tensor | None = None) -> torch.Tensor:
        """The learned term of each row, ``[..., N]``, within ``[-B, B]``; ``weights``
        (``[..., N]``, summing to 1 over the real rows) weigh the set statistics."""
        classes = out.shape[-1]
        if meta["loss.w1"].shape[0] != n_features(classes):
            raise ValueError(f"the LMML loss network was built for {(meta['loss.w1'].shape[0] - 1) // 4} "
                             f"classes, the outputs have {classes}")
        p = torch.softmax(out, -1)
        if y.shape == out.shape:  # targets given as vectors (one-hot, for MSE)
            target = y.to(out.dtype)
        else:  # not F.one_hot: it reads the labels' values, which vmap cannot
            target = (y.unsqueeze(-1) == torch.arange(classes, device=y.device)).to(out.dtype)
        base = self.base.rows(out, y, meta).unsqueeze(-1)
        # The task state, shared by every row of the set.
        w = torch.full_like(base, 1 / base.shape[-2]) if weights is None else weights.unsqueeze(-1)
        stats = (w * p).sum(-2, keepdim=True).expand_as(p)
        mean_base = (w * base).sum(-2, keepdim=True).expand_as(base)
        x = torch.cat([out - out.mean(-1, keepdim=True), target, p, stats, mean_base], -1)
        pre = x @ meta["loss.w1"] + meta["loss.b1"]
        if self.modulate:
            state = torch.cat([stats, (w * target).sum(-2, keepdim=True).expand_as(p), mean_base], -1)
            scale = 1 + torch.tanh(state @ meta["loss.film.wg"] + meta["loss.film.bg"])  # in (0, 2)
            pre = scale * pre + state @ meta["loss.film.wb"] + meta["loss.film.bb"]
        h = torch.tanh(pre)
        return self.bound * torch.tanh(h @ meta["loss.w2"] + meta["loss.b2"])

    def rows(self, out: torch.Tensor, y: torch.Tensor, meta: Params, weights: torch.Tensor | None = None) -> torch.Tensor:
        return self.base.rows(out, y, meta) + self.learned_term(out, y, meta, weights)
