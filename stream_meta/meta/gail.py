"""GAIL-Meta: a generator writes each task's output head from its support set; a
discriminator, judging parameters by how they do on the query set, tells generated
heads from gradient-adapted ("expert") ones; the two are trained adversarially.

For a task with support ``(x, y)`` and the meta-learned body ``f`` (every layer but the
last), with class prototypes ``p_c`` (mean of ``f(x)`` over the support rows of class
``c``), their mean ``p̄``, the generator ``G`` writes the head row of class ``c``:

- seen class: ``w_c = 2 s p_c + R_w(p_c)``, ``b_c = -s |p_c|^2 + R_b(p_c)``, so at
  initialisation (``R = 0``) the head is a nearest-prototype classifier;
- class absent from the support: the prototype ``g p̄`` (``g`` in ``[0, 1]``), bias
  ``-s g^2 |p̄|^2 + tau``: "none of the seen classes" wins when ``f(x)`` is far from them.

Zero gradient steps are needed; ``steps`` inner SGD steps on the head then refine it
(differentiated through, second order). The meta-learned head in ``params`` is the
"expert"'s starting point only: the expert is ``params`` adapted by ``expert_steps``
SGD steps (as FOMAML would), and ``params`` also get FOMAML's gradient of its query loss,
so the expert keeps improving. The discriminator ``D`` sees bounded statistics of the
query outputs under a head (mean/spread of the loss, mean/min margin, entropy, mean
probability of the true class) and is trained with logistic loss to say 1 for the
expert, 0 for the generated head; the generator minimises ``L_query(generated) +
L_prefix + adversarial_weight * softplus(-D(generated))``, where ``L_prefix`` is the mean
query loss of heads generated from the support's first 1..``prefix_shots`` records (the
heads a task's records 2-5 are predicted with; the stream's episodes rarely have them).

>>> import torch
>>> from stream_meta.model import build_mlp, init_params
>>> from stream_meta.meta.spec import Episode
>>> model = build_mlp([4, 8, 3])
>>> theta = init_params(model, torch.Generator().manual_seed(0))
>>> alg = GAILMeta()
>>> extra = alg.init_extra(theta)
>>> x, y = torch.randn(9, 4), torch.tensor([0, 1, 2] * 3)
>>> fast = alg.adapt(model, theta, extra, x[:6], y[:6], steps=0, lr=0.1)
>>> sorted(fast) == sorted(theta), tuple(fast["2.weight"].shape)
(True, (3, 8))
>>> grads, extra_grads, stats = alg.meta_gradient(model, theta, extra, [Episode("t", x[:6], y[:6], x[6:], y[6:])], steps=1, lr=0.1)
>>> sorted(stats["learner_stats"])
['gail_discriminator_loss', 'gail_generator_loss']
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from stream_meta.meta.algorithms import GradientMetaAlgorithm, _global_norm
from stream_meta.meta.mlp import mlp_layers
from stream_meta.meta.reference import adapt as reference_adapt
from stream_meta.meta.spec import Episode, InnerLoop
from stream_meta.model import Params

GEN = "gail.gen."
DISC = "gail.disc."
N_FEATURES = 6  # query statistics the discriminator sees
LOG_SCALE_BOUNDS = (-8.0, 3.0)
# The generator's scalars (log-scale, shrink, tau) are stored divided by this: Adam moves a
# parameter by about meta_lr per step whatever its scale, and these must travel O(1) (the
# temperature, the "not seen yet" bias) within the first few hundred meta-updates, where
# weights of O(0.1) need only O(0.01) steps. Their keys say so (``_d10``): a checkpoint
# written before, with the plain values, is refused by name rather than misread.
SCALAR_RATE = 10.0


def _layers(model: nn.Module):
    layers = mlp_layers(model)
    if layers is None or layers[-1].bias is None or layers[-1].relu is not False:
        raise ValueError("gail-meta needs an nn.Sequential MLP whose last layer is a Linear with bias")
    return layers


def head_names(model: nn.Module) -> tuple[str, str]:
    """The generated layer: the last Linear's ``(weight, bias)`` names."""
    last = _layers(model)[-1]
    return last.weight, last.bias  # type: ignore[return-value]


def body(model: nn.Module, params: Params, x: torch.Tensor) -> torch.Tensor:
    """Penultimate features ``[N, H]``: every layer but the last (differentiable)."""
    h = x
    for layer in _layers(model)[:-1]:
        h = h @ params[layer.weight].t()
        if layer.bias is not None:
            h = h + params[layer.bias]
        h = layer.act(h)
    return h


def generate_head(gen: Params, feats: torch.Tensor, y: torch.Tensor, classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The head ``(W [C, H], b [C])`` the generator writes from support features and labels."""
    onehot = F.one_hot(y, classes).to(feats.dtype)  # [N, C]
    counts = onehot.sum(0)  # [C]
    protos = (onehot.t() @ feats) / counts.clamp_min(1).unsqueeze(1)  # [C, H]
    seen = (counts > 0).to(feats.dtype).unsqueeze(1)
    mean = feats.mean(0)
    s = (SCALAR_RATE * gen[GEN + "log_scale_d10"]).clamp(*LOG_SCALE_BOUNDS).exp()
    g = (SCALAR_RATE * gen[GEN + "shrink_d10"]).clamp(0.0, 1.0)
    share = (counts / counts.sum()).unsqueeze(1)
    hidden = torch.relu(torch.cat([protos, share], 1) @ gen[GEN + "in.weight"].t() + gen[GEN + "in.bias"])
    res = hidden @ gen[GEN + "out.weight"].t() + gen[GEN + "out.bias"]  # [C, H + 1]
    w_seen = 2 * s * protos + res[:, :-1]
    b_seen = -s * protos.pow(2).sum(1) + res[:, -1]
    w_none = (2 * s * g * mean).expand_as(w_seen)
    b_none = (-s * g * g * mean.pow(2).sum() + SCALAR_RATE * gen[GEN + "tau_d10"]).expand_as(b_seen)
    return seen * w_seen + (1 - seen) * w_none, seen[:, 0] * b_seen + (1 - seen[:, 0]) * b_none


def refine_head(w: torch.Tensor, b: torch.Tensor, feats: torch.Tensor, y: torch.Tensor, steps: int, lr: float,
                create_graph: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``steps`` SGD steps of the support cross-entropy on the head (features fixed)."""
    for _ in range(steps):
        loss = F.cross_entropy(feats @ w.t() + b, y)
        gw, gb = torch.autograd.grad(loss, (w, b), create_graph=create_graph)
        w, b = w - lr * gw, b - lr * gb
    return w, b


def query_features(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Bounded statistics of a head's query outputs: what the discriminator judges."""
    ce = F.cross_entropy(logits, y, reduction="none")
    logp = torch.log_softmax(logits, 1)
    true = logits.gather(1, y.unsqueeze(1)).squeeze(1)
    other = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf")).max(1).values
    margin = torch.tanh((true - other) / 4)
    entropy = -(logp.exp() * logp).sum(1) / math.log(logits.shape[1])
    spread = ce.std(unbiased=False) if ce.numel() > 1 else ce.sum() * 0
    return torch.stack([torch.tanh(ce.mean() / 4), torch.tanh(spread / 4), margin.mean(), margin.min(),
                        entropy.mean(), logp.gather(1, y.unsqueeze(1)).exp().mean()])


def discriminate(disc: Params, feats: torch.Tensor) -> torch.Tensor:
    """The discriminator's logit that a head is an expert's."""
    h = torch.tanh(feats @ disc[DISC + "in.weight"].t() + disc[DISC + "in.bias"])
    return (h @ disc[DISC + "out.weight"].t() + disc[DISC + "out.bias"]).squeeze(-1)


class GAILMeta(GradientMetaAlgorithm):
    """GAIL-Meta (see the module docstring).

    Args:
        adversarial_weight: weight of the generator's adversarial term next to the query loss.
        generator_hidden: hidden units of the generator's residual map.
        expert_steps: inner SGD steps of the gradient-adapted expert; ``None`` = the inner steps.
        shared options: see :class:`~stream_meta.meta.algorithms.GradientMetaAlgorithm`
        (``loss`` must be ``"ce"``; ``rule`` and ``inner_loss`` are not taken).
    """

    name = "gail-meta"
    generates = True  # adaptation writes parameters even with zero inner steps

    discriminator_hidden: ClassVar[int] = 16
    init_scale: ClassVar[float] = 0.1  # the prototype classifier's initial scale s

    def __init__(self, *, adversarial_weight: float = 0.1, generator_hidden: int = 32, expert_steps: int | None = None,
                 prefix_shots: int = 4, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if self.loss != "ce" or self.rule is not None or self.inner_loss is not None:
            raise ValueError("gail-meta generates a classifier head: loss must be 'ce', with no rule or inner_loss")
        if not (math.isfinite(adversarial_weight) and adversarial_weight >= 0):
            raise ValueError(f"adversarial_weight must be finite and >= 0, got {adversarial_weight}")
        if generator_hidden < 1:
            raise ValueError(f"generator_hidden must be >= 1, got {generator_hidden}")
        if expert_steps is not None and expert_steps < 0:
            raise ValueError(f"expert_steps must be >= 0, got {expert_steps}")
        if prefix_shots < 0:
            raise ValueError(f"prefix_shots must be >= 0, got {prefix_shots}")
        self.adversarial_weight = adversarial_weight
        self.generator_hidden = generator_hidden
        self.expert_steps = expert_steps
        self.prefix_shots = prefix_shots

    def init_extra(self, params: Params) -> Params:
        """Generator and discriminator parameters (seeded: the same every time)."""
        names = list(params)
        wname = names[-2] if names[-1].endswith("bias") else names[-1]
        h = params[wname].shape[1]
        rng = torch.Generator().manual_seed(0)
        dtype = params[wname].dtype

        def uniform(shape: tuple[int, ...], fan_in: int) -> torch.Tensor:
            return ((torch.rand(shape, generator=rng, dtype=torch.float64) * 2 - 1) / math.sqrt(fan_in)).to(dtype)

        gh, dh = self.generator_hidden, self.discriminator_hidden
        zeros = lambda *shape: torch.zeros(shape, dtype=dtype)  # noqa: E731
        return {
            GEN + "in.weight": uniform((gh, h + 1), h + 1), GEN + "in.bias": zeros(gh),
            # zero output layer: the generator starts as the plain prototype classifier
            GEN + "out.weight": zeros(h + 1, gh), GEN + "out.bias": zeros(h + 1),
            GEN + "log_scale_d10": torch.tensor(math.log(self.init_scale) / SCALAR_RATE, dtype=dtype),
            GEN + "shrink_d10": torch.tensor(0.5 / SCALAR_RATE, dtype=dtype), GEN + "tau_d10": zeros(),
            DISC + "in.weight": uniform((dh, N_FEATURES), N_FEATURES), DISC + "in.bias": zeros(dh),
            DISC + "out.weight": uniform((1, dh), dh), DISC + "out.bias": zeros(1),
        }

    def project_extra(self, extra: Params) -> None:
        with torch.no_grad():
            extra[GEN + "log_scale_d10"].clamp_(LOG_SCALE_BOUNDS[0] / SCALAR_RATE, LOG_SCALE_BOUNDS[1] / SCALAR_RATE)
            extra[GEN + "shrink_d10"].clamp_(0.0, 1.0 / SCALAR_RATE)

    def adapted_names(self, model: nn.Module, params: Params) -> tuple[str, ...]:
        return head_names(model)

    def _check_extra(self, spec: Any, extra: Params) -> None:
        missing = [k for k in self.init_extra_keys() if k not in extra]
        if missing:
            raise ValueError(f"gail-meta: extra lacks {missing}")

    @staticmethod
    def init_extra_keys() -> tuple[str, ...]:
        return tuple(GEN + k for k in ("in.weight", "in.bias", "out.weight", "out.bias",
                                       "log_scale_d10", "shrink_d10", "tau_d10")) \
            + tuple(DISC + k for k in ("in.weight", "in.bias", "out.weight", "out.bias"))

    def generated(self, model: nn.Module, params: Params, extra: Params, x: torch.Tensor, y: torch.Tensor, *,
                  steps: int, lr: float, create_graph: bool = False) -> Params:
        """``params`` with the head generated from ``(x, y)`` and refined ``steps`` steps."""
        wn, bn = head_names(model)
        feats = body(model, params, x)
        w, b = generate_head(extra, feats, y, params[wn].shape[0])
        if steps and not (create_graph and w.requires_grad):  # nothing to differentiate through: fresh leaves
            w, b = w.detach().requires_grad_(), b.detach().requires_grad_()
        w, b = refine_head(w, b, feats if create_graph else feats.detach(), y, steps, lr, create_graph)
        return {**params, wn: w, bn: b}

    def adapt(self, model: nn.Module, params: Params, extra: Params, x: torch.Tensor, y: torch.Tensor, *,
              steps: int, lr: float) -> Params:
        """Fast weights: the generated head, refined ``steps`` SGD steps (detached). Only
        the body of ``params`` is read, so adapting cached fast weights regenerates."""
        self._check_lr(lr)
        self._check_extra(None, extra)
        theta = {k: v.detach() for k, v in params.items()}
        meta = {k: v.detach() for k, v in extra.items()}
        with torch.enable_grad():
            fast = self.generated(model, theta, meta, x, y, steps=steps, lr=lr)
        return {k: v.detach() for k, v in fast.items()}

    def objectives(self, model: nn.Module, params: Params, extra: Params, episode: Episode, *, steps: int,
                   lr: float) -> dict[str, torch.Tensor]:
        """One task's losses: ``generator`` (query loss + adversarial term; differentiable
        in ``params`` and the generator), ``discriminator`` (differentiable in the
        discriminator), ``expert`` (query loss at the detached expert, differentiable in
        the expert's own leaves ``expert_params``), ``query_loss``, ``query_loss_before``."""
        wn, bn = head_names(model)
        gen = self.generated(model, params, extra, episode.support_x, episode.support_y, steps=steps, lr=lr,
                             create_graph=True)
        q_feats = body(model, gen, episode.query_x)
        logits = q_feats @ gen[wn].t() + gen[bn]
        query = F.cross_entropy(logits, episode.query_y)
        prefix = self.prefix_loss(model, params, extra, episode, q_feats, steps=steps, lr=lr)
        with torch.enable_grad():
            spec = InnerLoop(steps if self.expert_steps is None else self.expert_steps, lr, tuple(params), "first")
            expert = reference_adapt(model, params, {}, spec, episode.support_x, episode.support_y)
        expert = {k: v.detach().requires_grad_() for k, v in expert.items()}
        e_logits = body(model, expert, episode.query_x) @ expert[wn].t() + expert[bn]
        e_query = F.cross_entropy(e_logits, episode.query_y)
        disc = {k: v for k, v in extra.items() if k.startswith(DISC)}
        d_fake = discriminate(disc, query_features(logits, episode.query_y))
        d_real = discriminate(disc, query_features(e_logits.detach(), episode.query_y))
        d_fake_detached = discriminate(disc, query_features(logits.detach(), episode.query_y))
        disc_loss = F.softplus(-d_real) + F.softplus(d_fake_detached)
        adv = F.softplus(-d_fake)
        with torch.no_grad():
            before = F.cross_entropy(body(model, params, episode.query_x) @ params[wn].t() + params[bn], episode.query_y)
        return {"generator": query + prefix + self.adversarial_weight * adv, "adversarial": adv, "prefix": prefix,
                "discriminator": disc_loss,
                "expert": e_query, "expert_params": expert, "query_loss": query, "query_loss_before": before}  # type: ignore[dict-item]

    def prefix_loss(self, model: nn.Module, params: Params, extra: Params, episode: Episode, q_feats: torch.Tensor, *,
                    steps: int, lr: float) -> torch.Tensor:
        """Mean over ``m = 1 .. min(prefix_shots, |support| - 1)`` of the query loss of the head
        generated (and refined) from the support's first ``m`` rows, scored on the rest of the
        episode. The stream's episodes have supports of 1, 6, 11, ... records, but a task's
        records 2-5 are predicted from heads of 1-4 records with classes still unseen: this is
        that distribution, so the generator and body learn few-shot recognition and "not
        seen yet" from it (differentiable in ``params`` and the generator)."""
        n = min(self.prefix_shots, len(episode.support_y) - 1)
        if n < 1:
            return q_feats.sum() * 0
        feats = body(model, params, episode.support_x)
        classes = params[head_names(model)[0]].shape[0]
        total = q_feats.sum() * 0
        for m in range(1, n + 1):
            w, b = generate_head(extra, feats[:m], episode.support_y[:m], classes)
            if steps and not w.requires_grad:  # nothing to differentiate through (a finite-difference probe)
                w, b = w.detach().requires_grad_(), b.detach().requires_grad_()
            w, b = refine_head(w, b, feats[:m], episode.support_y[:m], steps, lr, create_graph=True)
            rest = torch.cat([feats[m:], q_feats])
            total = total + F.cross_entropy(rest @ w.t() + b, torch.cat([episode.support_y[m:], episode.query_y]))
        return total / n

    def meta_gradient(self, model: nn.Module, params: Params, extra: Params, episodes: Sequence[Episode], *,
                      steps: int, lr: float) -> tuple[Params, Params, dict[str, Any]]:
        """Mean over ``episodes`` of: the generator objective's gradient in ``params`` and
        the generator, FOMAML's expert gradient added to ``params``, and the discriminator
        loss's gradient in the discriminator. Same guards as the other algorithms."""
        if not episodes:
            raise ValueError("a meta-batch needs at least one episode")
        self._check_lr(lr)
        self._check_extra(None, extra)
        theta = {k: v.detach().requires_grad_() for k, v in params.items()}
        meta = {k: v.detach().requires_grad_() for k, v in extra.items()}
        gen_keys = [k for k in meta if k.startswith(GEN)]
        disc_keys = [k for k in meta if k.startswith(DISC)]
        grads = {k: torch.zeros_like(v) for k, v in theta.items()}
        extra_grads = {k: torch.zeros_like(v) for k, v in meta.items()}
        sums = {"query_loss": 0.0, "query_loss_before": 0.0, "generator": 0.0, "discriminator": 0.0, "adversarial": 0.0}
        n = len(episodes)
        with torch.enable_grad():
            for ep in episodes:
                o = self.objectives(model, theta, meta, ep, steps=steps, lr=lr)
                g = torch.autograd.grad(o["generator"], [*theta.values(), *(meta[k] for k in gen_keys)], allow_unused=True)
                for k, gk in zip([*theta, *gen_keys], g):
                    if gk is not None:
                        (grads if k in theta else extra_grads)[k] += gk / n
                for k, gk in zip(disc_keys, torch.autograd.grad(o["discriminator"], [meta[k] for k in disc_keys])):
                    extra_grads[k] += gk / n
                expert = o["expert_params"]
                for k, gk in zip(expert, torch.autograd.grad(o["expert"], list(expert.values()))):
                    grads[k] += gk / n
                for k in sums:
                    sums[k] += float(o[k].detach()) / n
        norm = float(_global_norm(list(grads.values()) + list(extra_grads.values())))
        nonfinite = not all(math.isfinite(v) for v in (*sums.values(), norm))
        clipped = False
        if nonfinite:
            grads = {k: torch.zeros_like(v) for k, v in grads.items()}
            extra_grads = {k: torch.zeros_like(v) for k, v in extra_grads.items()}
        elif self.clip_grad_norm is not None and norm > self.clip_grad_norm:
            clipped = True
            factor = self.clip_grad_norm / (norm + 1e-12)
            grads = {k: v * factor for k, v in grads.items()}
            extra_grads = {k: v * factor for k, v in extra_grads.items()}
        stats = {
            "query_loss": sums["query_loss"], "query_loss_before": sums["query_loss_before"], "nonfinite": nonfinite,
            "grad_norm": norm, "clipped": clipped, "tasks": n,
            "learner_stats": {"gail_discriminator_loss": sums["discriminator"], "gail_generator_loss": sums["generator"]},
        }
        return grads, extra_grads, stats
