"""Acquisition functions of federated active learning: how a client scores its unlabelled
samples, written for ONE client and vmapped over clients by the active-learning loop
(:func:`murmura.active.run_active_learning`), which labels each client's top-``b_k``.

Each is called as ``score(local_logits [U, C], global_logits [U, C], label_counts [C], key)
-> [U]`` on the client's unlabelled samples (its pool padded to the longest; the loop masks the
padding, which is never chosen) and says which logits it reads (``models``), so the loop
computes no forward pass it does not need:

* :class:`KSAS`, KAFAL's knowledge-specialized active sampling (Cao et al., ICCV 2023; code
  ``main.py``: ``get_discrepancy``): with ``p_l = softmax(z_l(u) + log n_k)`` and ``p_g =
  softmax(z_g(u) + log n_k)`` (``l``: the client's model after its last local training of the
  cycle, ``g``: the global model, ``n_k``: its labelled samples per class),
  ``score(u) = ½ [KL(p_g ‖ p_l) + KL(p_l ‖ p_g)] = ½ Σ_c (p_g,c - p_l,c)(log p_g,c - log p_l,c)``.
  Adding ``log n_k`` to both logits magnifies disagreement on the client's frequent classes;
  absent classes (``log 0 = -inf``) have probability 0 in both and are left out of the sum. In
  the code they are not: ``F.kl_div`` gives ``0 · (-inf) = NaN`` there (torch 2.x), so for a
  client missing a class every score is NaN, and ``np.argsort`` then keeps the pool's (shuffled)
  order: the code's KSAS falls back to random acquisition for such clients [inferred from the
  code, not measured in the paper].
* :class:`Entropy`: the entropy of the global model's prediction (a classic baseline).
* :class:`Random`: uniform scores from the client's key for the cycle, so the top-``b`` is a
  uniformly random subset.

>>> import torch
>>> z = torch.tensor([[0.0, 0.0], [2.0, 0.0]])
>>> KSAS()(z, torch.zeros(2, 2), torch.tensor([1.0, 1.0]), None)[0].item()
0.0
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from murmura.active.kcfu import log_prior
from murmura.swarm.random import key_uniform

Tensor = torch.Tensor


@dataclass(frozen=True)
class KSAS:
    """Symmetric KL between the local and the global prediction, both logit-adjusted by the
    client's ``log n_k`` (absent classes masked)."""

    name: ClassVar[str] = "ksas"
    models: ClassVar[tuple[str, ...]] = ("local", "global")

    def __call__(self, local_logits: Tensor, global_logits: Tensor, label_counts: Tensor,
                 key: Tensor | None) -> Tensor:
        prior = log_prior(label_counts)
        log_l = torch.log_softmax(local_logits + prior, -1)
        log_g = torch.log_softmax(global_logits + prior, -1)
        gap = torch.where(torch.isfinite(prior), log_g - log_l, 0.0)
        return 0.5 * ((log_g.exp() - log_l.exp()) * gap).sum(-1)


@dataclass(frozen=True)
class Entropy:
    """``-Σ_c p_g,c log p_g,c`` of the global model's plain softmax."""

    name: ClassVar[str] = "entropy"
    models: ClassVar[tuple[str, ...]] = ("global",)

    def __call__(self, local_logits: Tensor, global_logits: Tensor, label_counts: Tensor,
                 key: Tensor | None) -> Tensor:
        log_p = torch.log_softmax(global_logits, -1)
        return -(log_p.exp() * log_p).sum(-1)


@dataclass(frozen=True)
class Random:
    """Uniform scores from the client's key (one per sample)."""

    name: ClassVar[str] = "random"
    models: ClassVar[tuple[str, ...]] = ()

    def __call__(self, local_logits: Tensor, global_logits: Tensor, label_counts: Tensor,
                 key: Tensor | None) -> Tensor:
        return key_uniform(key, (local_logits.shape[0],), salt=0)


ACQUISITIONS: dict[str, type] = {"ksas": KSAS, "entropy": Entropy, "random": Random}


def top_b(scores: Tensor, valid: Tensor, budget: Tensor) -> Tensor:
    """One client's choice: bool ``[U]``, its ``budget`` highest-scoring valid samples (ties
    to the earlier position; padding, ``valid`` false, is never chosen)."""
    masked = torch.where(valid, scores, -torch.inf)
    order = torch.argsort(masked, descending=True, stable=True)
    rank = torch.argsort(order)  # the inverse permutation: each sample's place in the order
    return (rank < budget) & valid


def make_acquisition(spec: str | object) -> object:
    """An acquisition function by name (``ksas``, ``entropy``, ``random``) or as given."""
    if isinstance(spec, str):
        if spec not in ACQUISITIONS:
            raise ValueError(f"acquisition must be one of {', '.join(ACQUISITIONS)}, got "
                             f"{spec!r}")
        return ACQUISITIONS[spec]()
    if not callable(spec) or not hasattr(spec, "models"):
        raise ValueError("acquisition must be a name (ksas, entropy, random) or a callable "
                         "(local_logits, global_logits, label_counts, key) -> scores with a "
                         f"'models' attribute; got {type(spec).__name__}")
    return spec


__all__ = ["ACQUISITIONS", "KSAS", "Entropy", "Random", "make_acquisition", "top_b"]
