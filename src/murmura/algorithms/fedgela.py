"""FedGELA: a fixed simplex-ETF classifier, adapted locally by each client's class shares (Fan,
Zhang, Yao, Han, Zhang and Wang, "Federated Learning with Bilateral Curation for Partially
Class-Disjoint Data", NeurIPS 2023, arXiv 2405.18972; code github.com/MediaBrain-SJTU/FedGELA,
``FedGELA.py``: ``produce_Ew``, ``get_etf``, ``train_net``).

Under partially class-disjoint data each client sees a few classes. FedGELA fixes the global
classifier to a simplex ETF ``M`` (the ``etf_mlp`` model, :mod:`murmura.models.etf`: a buffer
shared through its seed, never trained or sent), so every class keeps a fair direction, and
locally stretches each class vector by the client's share of it, so absent classes get length
0 and give their room to the local ones::

    E_k[c] = C n_{k,c} / n_k                        (0 for absent classes; Σ_c E_k[c] = C)
    local logits  z = h · (M ⊙ E_k) / τ = E_k ⊙ (h · M / τ);   L_k = CE(z, y)
    server        FedAvg of every trainable parameter (the backbone), weighted by samples
    inference     global: argmax_c (h · M)_c;   personal (client k): argmax_c (h · (M ⊙ E_k))_c

The model's output is the global logits ``h · M / τ`` (``τ``: the model's ``temperature``),
so the loss and the personal scores are the task :class:`ClientAdaptedLoss` (registered as
task ``"fedgela"``; ``needs_label_counts`` hands it the node's training samples per class),
and the global test accuracy is the model's own argmax. The client (:class:`ClippedSGD`) is
the code's: SGD (momentum 0.9, weight decay 1e-4 by default) with the gradient's global norm
clipped to 20 each step. ``E_k`` never leaves the client; what is sent is FedAvg's.

Specification ``specs/federated.md`` section 5. Where the code departs from the paper:
the code's server weighs clients by their number of batches (``len(dataloader)``), a quirk;
this follows the paper and weighs them by their number of samples. The code's ``FedAvg.py`` is
a copy of its FedGELA training (it uses the ETF too); murmura's ``fedavg`` on ``etf_mlp`` with
``head="linear"`` is the baseline with a learnable head.

>>> from murmura.data import federate
>>> from murmura.swarm import Evaluation, Simulation
>>> data = federate("digits", 6, "pathological", classes_per_node=3, seed=0,
...                 local_test_fraction=0.3)
>>> sim = Simulation(data, "etf_mlp", "fedgela", task="fedgela", evaluation=Evaluation(every=1),
...                  algorithm_kwargs={"local_steps": 2, "clients_per_round": 3})
>>> "personal_accuracy_mean" in sim.run(rounds=1).final
True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch.func import grad

from murmura.algorithms.base import ALGORITHMS, Algorithm, LocalWork, ModelLayout, Tensor
from murmura.algorithms.named import _participation, _work
from murmura.algorithms.rules import SGD, Every, ServerAverage
from murmura.tasks import TASKS, Classification


def class_shares(label_counts: Tensor) -> Tensor:
    """``E_k = C n_{k,c} / n_k`` from one client's training samples per class ``[C]`` (or a
    stack ``[..., C]``): 0 for absent classes, summing to ``C``."""
    counts = label_counts.to(torch.float32)
    total = counts.sum(-1, keepdim=True).clamp_min(1.0)
    return counts.shape[-1] * counts / total


def adapted_logits(global_logits: Tensor, label_counts: Tensor) -> Tensor:
    """``h · (M ⊙ E_k) / τ`` from the model's ``h · M / τ`` ``[B, C]``: column ``c`` of ``M``
    scaled by ``E_k[c]`` scales logit ``c`` by it."""
    return global_logits * class_shares(label_counts)


@TASKS.register("fedgela", "FedGELA's local loss: cross-entropy of the ETF logits scaled by the "
                "client's class shares C n_c / n (model etf_mlp); personal scores alike")
@dataclass(frozen=True)
class ClientAdaptedLoss(Classification):
    """``L_k = CE(E_k ⊙ out, y)`` with ``out = h · M / τ`` the model's global logits; personal
    scores ``E_k ⊙ out`` (the client-adapted ETF); the global test scores are ``out``.
    ``adapt=False`` takes ``E_k = 1`` (the fixed ETF alone: the global-adaptation-only
    ablation)."""

    name: ClassVar[str] = "fedgela"
    needs_label_counts: ClassVar[bool] = True
    adapt: bool = True

    def _scores(self, forward: Any, params: Any, batch: Any) -> Tensor:
        out = forward(params, batch["x"])
        return adapted_logits(out, batch["label_counts"]) if self.adapt else out

    def loss(self, forward: Any, params: Any, batch: Any) -> tuple[Tensor, dict]:
        logits = self._scores(forward, params, batch)
        losses = F.cross_entropy(logits, batch["y"], reduction="none")
        weight = batch.get("weight")
        mean = (losses.mean() if weight is None
                else (losses * weight).sum() / weight.sum().clamp_min(1.0))
        return mean, {}

    def personal_scores(self, forward: Any, params: Any, batch: Any) -> Tensor:
        return self._scores(forward, params, batch)


@dataclass(frozen=True)
class ClippedSGD(SGD):
    """FedGELA's client: SGD on the gradient rescaled to global norm at most ``clip_norm``
    (``torch.nn.utils.clip_grad_norm_(max_norm=20)`` in ``train_net``; ``None``: no clip).
    It must train an ``etf_mlp`` model under the ``fedgela`` task, and refuses anything else."""

    clip_norm: float | None = 20.0

    def bind(self, layout: ModelLayout) -> ClippedSGD:
        if not any(name.endswith("etf") for name, _ in layout.model.named_buffers()):
            raise ValueError(
                "fedgela trains a backbone under a fixed simplex-ETF classifier: use the model "
                "'etf_mlp' (head='etf'), or a model with an ETF buffer named 'etf'")
        return self

    def gradient(self, loss: Any) -> Any:
        node_grad = grad(loss)

        def clipped(params: dict, *batch: Any) -> dict:
            if not (batch and isinstance(batch[-1], dict) and "label_counts" in batch[-1]):
                raise ValueError(
                    "fedgela: the local loss must see the client's label counts: run it with "
                    "task='fedgela' (Simulation(task='fedgela'), or task = \"fedgela\" in a "
                    "config)")
            grads = node_grad(params, *batch)
            if self.clip_norm is None:
                return grads
            norm = torch.sqrt(sum((g * g).sum() for g in grads.values()))
            scale = torch.clamp(self.clip_norm / (norm + 1e-6), max=1.0)
            return {name: g * scale for name, g in grads.items()}

        return clipped


@ALGORITHMS.register("fedgela", "FedGELA: FedAvg of a backbone under a fixed simplex-ETF head, "
                     "logits scaled by each client's class shares (model etf_mlp, task fedgela)")
def fedgela(lr: float = 0.01, momentum: float = 0.9, weight_decay: float = 1e-4,
            clip_norm: float | None = 20.0, local_epochs: float | None = None,
            local_steps: int | None = None, batch_size: int = 64,
            fraction: float | None = None, clients_per_round: int | None = None,
            participation: str | dict[str, Any] | None = None) -> Algorithm:
    """FedGELA (Fan et al., 2023) with the code's client (defaults: SGD lr 0.01, momentum 0.9,
    weight decay 1e-4, batch 64, 10 local epochs when neither ``local_epochs`` nor
    ``local_steps`` is given, gradient-norm clip 20) and FedAvg's server weighted by samples.
    Run it with ``model="etf_mlp"`` (whose ``temperature`` is the code's τ) and
    ``task="fedgela"``."""
    params = dict(locals())
    if clip_norm is not None and (isinstance(clip_norm, bool)
                                  or not isinstance(clip_norm, (int, float))
                                  or not clip_norm > 0 or clip_norm == float("inf")):
        raise ValueError(f"fedgela: clip_norm must be a positive number or None (no clip), "
                         f"got {clip_norm!r}")
    if local_epochs is None and local_steps is None:
        local_epochs = 10.0
    work = _work(local_steps, local_epochs, batch_size)
    return Algorithm(
        name="fedgela",
        local_rule=ClippedSGD(lr, momentum, weight_decay,
                              clip_norm=None if clip_norm is None else float(clip_norm)),
        local_work=LocalWork(work.batch_size, work.steps, work.epochs,
                             reset_state_each_round=True),
        communication=ServerAverage("samples"),
        schedule=Every(1),
        participation=_participation(fraction, clients_per_round, participation),
        params=params,
    )


__all__ = ["ClientAdaptedLoss", "ClippedSGD", "adapted_logits", "class_shares", "fedgela"]
