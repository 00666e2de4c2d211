"""The plain baseline: one model for all tasks, one SGD step per labelled record (or batch)."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch.func import functional_call

from stream_meta.learn.base import LearnerHealth, LearnReport
from stream_meta.learn.config import ModelConfig
from stream_meta.model import build_mlp, init_params


class OnlineSGDLearner:
    """Baseline: one model for all tasks, one SGD step per labelled record."""

    def __init__(self, model_cfg: ModelConfig, *, lr: float = 0.1, seed: int = 0) -> None:
        if not lr > 0:
            raise ValueError(f"SGD lr must be > 0, got {lr}")
        self.model_cfg, self.lr, self.seed = model_cfg, lr, seed
        self.model = build_mlp([model_cfg.input_dim, *model_cfg.hidden, model_cfg.num_classes])
        self.params = {k: v.requires_grad_() for k, v in init_params(self.model, torch.Generator().manual_seed(seed)).items()}
        self.optimizer = torch.optim.SGD(list(self.params.values()), lr=lr)
        self.meta_updates = 0
        self.nonfinite_skips = 0
        self._scale = 1.0  # scale_meta_steps

    @torch.no_grad()
    def predict(self, task: str, x: torch.Tensor) -> int:
        return int(self.predict_batch([task], x.unsqueeze(0))[0])

    @torch.no_grad()
    def predict_batch(self, tasks: Sequence[str], x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.model, self.params, (x,)).argmax(1)

    def learn(self, task: str, x: torch.Tensor, y: int) -> LearnReport:
        return self.learn_batch([task], x.unsqueeze(0), torch.tensor([y]))

    def learn_batch(self, tasks: Sequence[str], x: torch.Tensor, y: torch.Tensor) -> LearnReport:
        """One SGD step on the batch's mean loss (one step per record at batch size 1)."""
        out = functional_call(self.model, self.params, (x,))
        loss = torch.nn.functional.cross_entropy(out, y)
        if not torch.isfinite(loss):
            self.nonfinite_skips += 1
            return LearnReport(nonfinite_skips=1)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return LearnReport()

    def health(self) -> LearnerHealth:
        return LearnerHealth(self.meta_updates, self.nonfinite_skips, 0, 0, 0, 0, None, None)

    def shared_tensors(self) -> dict[str, torch.Tensor]:
        return {f"params/{k}": v.detach().clone() for k, v in self.params.items()}

    def load_shared(self, tensors: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for k, v in self.params.items():
                v.copy_(tensors[f"params/{k}"])

    def scale_meta_steps(self, factor: float) -> None:
        """Steps of ``factor * lr`` from now on (a scale-out group's members learn in parallel)."""
        if not factor > 0:
            raise ValueError(f"step factor must be > 0, got {factor}")
        self._scale = float(factor)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr * factor

    def state_dict(self) -> dict:
        return {"params": {k: v.detach().clone() for k, v in self.params.items()}, "optimizer": copy.deepcopy(self.optimizer.state_dict())}

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            for k, v in state["params"].items():
                self.params[k].copy_(v)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scale_meta_steps(self._scale)  # a checkpoint's lr is the one it was saved with, not this process's
