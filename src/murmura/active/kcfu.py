"""KCFU, KAFAL's client loss (Cao, Shi, Yu, Wang and Tao, "Knowledge-Aware Federated Active
Learning with Non-IID Data", ICCV 2023, arXiv 2211.13579; code github.com/ycao5602/KAFAL,
``main.py``: ``train_epoch_client_distil``), as a task: one node's loss on one minibatch.

With ``n_k[c]`` the client's LABELLED samples of class ``c`` (``needs_label_counts``), a labelled
batch ``(x, y)`` and an unlabelled batch ``u`` (the node's ``"unlabelled"`` pool,
``extra_batches``), the global model ``g`` the client received this round (node state
``teacher``, reset to the node's model at each round's start) and the local model ``l``::

    L_bal  = CE(z_l(x) + log n_k, y)                         balanced softmax; log 0 = -inf masks
                                                             the classes the client has no label of
    β_i ~ Beta(2, 2),  π a random permutation of the batch
    ũ_i = β_i u_i + (1 - β_i) u_π(i)                         mixup of unlabelled samples
    ŷ = argmax z_g(ũ)                                       the teacher's labels
    r[c] = Σ n_k / n_k[c] (0 where n_k[c] = 0),  r <- r / Σ r   weak-class emphasis
    w_i = β_i r[ŷ_i] + (1 - β_i) r[ŷ_π(i)]
    L_dist = mean_i w_i · mean_c p_g,c(ũ_i) (log p_g,c(ũ_i) - log p_l,c(ũ_i))
    L = L_bal + [the cycle's round > 1] · L_dist

``mean_c`` is the code's ``KLDivLoss(reduce=False)(...).mean(1)`` (the KL divided by the number
of classes). Distillation starts at a cycle's second round (the code's ``int(comm > 0)``): in the
first the received model is the cycle's untrained initial model. The task keeps that model
(node state ``initial``) and distils only when the received model differs from it, which holds
from the second round on for every client (each round's server average replaces every row).

Where this departs from the code, as the spec (``specs/federated.md`` section 8) says:

* the code mixes every unlabelled sample with ONE random sample of the batch
  (``np.random.choice(B, replace=False)`` returns a single index); here ``π`` is a real
  permutation (the argsort of one uniform draw per sample, so fixed points are possible, as in
  ``torch.randperm`` mixup);
* ``log n_k`` is ``-inf`` for absent classes in the code too; here every place where that would
  give ``0 · (-inf)`` or ``inf - inf`` (the loss, its gradient, the KL of KSAS) masks it instead.

β is drawn from the node's key for the step (``needs_key``): Beta(2, 2) is the law of the median
of three independent uniforms (the 2nd order statistic of 3, Beta(2, 3 + 1 - 2)), which is how it
is drawn, so the draw is exact and keyed like every draw of the engine.

Two tasks are registered: ``kcfu`` (the whole loss; it needs data with an ``"unlabelled"`` pool,
``FederatedData.with_pool``, which :func:`murmura.active.run_active_learning` builds) and
``balanced_softmax`` (``L_bal`` alone, for data without a pool). Both are scored like
``classification``: the global model's plain argmax.

>>> import torch
>>> counts = torch.tensor([3.0, 1.0, 0.0])
>>> weak_class_weights(counts).tolist()
[0.25, 0.75, 0.0]
>>> logits = torch.tensor([[0.0, 0.0, 5.0]])
>>> round(float(balanced_cross_entropy(logits, torch.tensor([0]), counts)), 4)  # -log 3/4
0.2877
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from murmura.algorithms.plans import NodeState
from murmura.swarm.random import key_uniform
from murmura.tasks import TASKS, Classification

Tensor = torch.Tensor


def log_prior(label_counts: Tensor) -> Tensor:
    """``log n_k[c]`` ``[..., C]`` with ``-inf`` for absent classes (0 everywhere when a client
    has no label at all, so that no row of logits is all ``-inf``); never evaluates ``log 0``."""
    counts = label_counts.to(torch.float32)
    present = counts > 0
    logs = torch.where(present, torch.log(counts.clamp_min(1.0)), -torch.inf)
    return torch.where(present.any(-1, keepdim=True), logs, torch.zeros_like(logs))


def balanced_cross_entropy(logits: Tensor, y: Tensor, label_counts: Tensor,
                           weight: Tensor | None = None) -> Tensor:
    """Balanced softmax ``CE(z + log n_k, y)`` averaged over the batch (``weight``: 0/1 masks of
    padding). A sample whose class the client has no label of (impossible when the counts are
    those of its own labelled set) contributes 0 rather than ``inf``."""
    adjusted = logits + log_prior(label_counts)
    target = adjusted.gather(-1, y.unsqueeze(-1)).squeeze(-1)
    losses = torch.where(torch.isfinite(target), torch.logsumexp(adjusted, -1) - target, 0.0)
    if weight is None:
        return losses.mean()
    return (losses * weight).sum() / weight.sum().clamp_min(1.0)


def weak_class_weights(label_counts: Tensor) -> Tensor:
    """``r[c] ∝ Σ n / n[c]`` over the present classes, 0 for absent ones, summing to 1."""
    counts = label_counts.to(torch.float32)
    ratio = torch.where(counts > 0, counts.sum(-1, keepdim=True) / counts.clamp_min(1.0), 0.0)
    return ratio / ratio.sum(-1, keepdim=True).clamp_min(torch.finfo(ratio.dtype).tiny)


def beta_2_2(key: Tensor, size: int, salt: int = 0) -> Tensor:
    """``size`` draws of Beta(2, 2) from one key: the median of three uniforms each."""
    return key_uniform(key, (size, 3), salt).sort(-1).values[:, 1]


def permutation(key: Tensor, size: int, salt: int = 0) -> Tensor:
    """A random permutation of ``range(size)`` from one key (works under ``vmap``)."""
    return torch.argsort(key_uniform(key, (size,), salt))


def mixup(u: Tensor, beta: Tensor, perm: Tensor) -> Tensor:
    """``β_i u_i + (1 - β_i) u_π(i)`` over the batch axis."""
    b = beta.reshape(-1, *(1,) * (u.dim() - 1))
    return b * u + (1 - b) * u[perm]


def distillation(student: Tensor, teacher: Tensor, beta: Tensor, perm: Tensor,
                 weights: Tensor) -> Tensor:
    """``mean_i w_i mean_c p_t,c (log p_t,c - log p_s,c)`` on the mixed batch's logits, with
    ``w_i = β_i r[ŷ_i] + (1 - β_i) r[ŷ_π(i)]`` and ``ŷ = argmax teacher`` (``weights``: ``r``)."""
    label = teacher.argmax(-1)
    r = weights[label]
    w = beta * r + (1 - beta) * r[perm]
    log_t = torch.log_softmax(teacher, -1)
    kl = (log_t.exp() * (log_t - torch.log_softmax(student, -1))).mean(-1)
    return (w * kl).mean()


@TASKS.register("balanced_softmax", "KAFAL's balanced softmax: CE(z + log n_k, y) with the "
                "client's label counts (absent classes masked)")
@dataclass(frozen=True)
class BalancedSoftmax(Classification):
    """``L_bal`` alone; scores are the model's plain class scores (the global model's argmax)."""

    name: ClassVar[str] = "balanced_softmax"
    needs_label_counts: ClassVar[bool] = True

    def loss(self, forward: Any, params: Mapping[str, Tensor], batch: Mapping[str, Any]
             ) -> tuple[Tensor, dict]:
        out = forward(params, batch["x"])
        return balanced_cross_entropy(out, batch["y"], batch["label_counts"],
                                      batch.get("weight")), {}


@TASKS.register("kcfu", "KAFAL's KCFU: balanced softmax + distillation from the received model "
                "on mixed-up unlabelled samples, weighted to weak classes (needs an "
                "'unlabelled' pool)")
@dataclass(frozen=True)
class KCFU(BalancedSoftmax):
    """``L_bal + [round > 1] L_dist`` (module docstring); ``unlabelled_batch``: samples of the
    node's ``"unlabelled"`` pool per step (the code draws as many as its labelled batch)."""

    name: ClassVar[str] = "kcfu"
    unlabelled_batch: int = 16
    needs_key: ClassVar[bool] = True
    state_names: ClassVar[tuple[str, ...]] = ("teacher", "initial")
    node_state: ClassVar[dict[str, NodeState]] = {
        "teacher": NodeState("params", "round"),  # the model received this round
        "initial": NodeState("params", "never"),  # the cycle's initial model
    }

    def __post_init__(self) -> None:
        m = self.unlabelled_batch
        if isinstance(m, bool) or not isinstance(m, int) or m < 1:
            raise ValueError(f"kcfu: unlabelled_batch must be a positive integer (samples of "
                             f"the unlabelled pool per step), got {m!r}")

    @property
    def extra_batches(self) -> dict[str, int]:
        return {"unlabelled": self.unlabelled_batch}

    def loss(self, forward: Any, params: Mapping[str, Tensor], batch: Mapping[str, Any]
             ) -> tuple[Tensor, dict]:
        balanced, _ = super().loss(forward, params, batch)
        teacher, initial = batch["state"]["teacher"], batch["state"]["initial"]
        u = batch["unlabelled"]["x"]
        beta = beta_2_2(batch["key"], u.shape[0], salt=0)
        perm = permutation(batch["key"], u.shape[0], salt=1)
        mixed = mixup(u, beta, perm)
        with torch.no_grad():
            target = forward({k: v.detach() for k, v in teacher.items()}, mixed)
        distil = distillation(forward(params, mixed), target, beta, perm,
                              weak_class_weights(batch["label_counts"]))
        trained = torch.stack([(teacher[k] != initial[k]).any() for k in teacher]).any()
        return balanced + trained.to(distil.dtype) * distil, {}


__all__ = ["KCFU", "BalancedSoftmax", "balanced_cross_entropy", "beta_2_2", "distillation",
           "log_prior", "mixup", "permutation", "weak_class_weights"]
