"""An MLP backbone whose classifier is a fixed simplex equiangular tight frame (FedGELA).

Fan et al., "Federated Learning with Bilateral Curation for Partially Class-Disjoint Data"
(NeurIPS 2023; code github.com/MediaBrain-SJTU/FedGELA, ``get_etf`` and ``model_cifar``).
The global classifier is the simplex ETF ``M ∈ R^{d×C}``: unit-norm columns with pairwise
cosine ``−1/(C−1)``, every class the same angle from every other. It is never trained and
never communicated: :class:`ETFClassifier` holds it as a **buffer**, which the engine shares by
all nodes and keeps out of the flat parameter vector (so out of every optimizer, aggregation
and message). It is drawn from its own generator seeded by ``etf_seed``, so every node, and
every simulation seed, has the same ``M``: the "shared seed" of the spec.

The model (spec ``specs/federated.md`` section 5: backbone, encoder, then the 'etf' proxy)::

    h = Norm( W2 ReLU( W1 x ) )          # hidden=(64,), feature_dim=32: the spec's 64→64→32
    out = h · M / τ                      # head="etf": the global logits; 1/τ is the ETF's length
    out = h · V + b                      # head="linear": the learnable head FedAvg trains

``τ`` (``temperature``) is the code's ``--temperature`` ("E_W in our paper", the ETF's length
``1/τ``; code default 0.2): it scales the logits, not the argmax.

**Normalization.** The spec's proxy is ``BatchNorm1d`` [inferred: the repository lacks
``get_proxy.py``]. Here ``norm="layer"`` (default) standardizes each sample's features over
its ``d`` coordinates with a learnable scale and shift (``nn.LayerNorm(d)``), because murmura
runs the model functionally per node with buffers shared by all nodes: BatchNorm's running
statistics would be per-node mutable state (refused by :func:`murmura.models.check_functional`),
and BatchNorm on batch statistics makes a sample's features depend on its batch: on how the
test set is chunked, on the padded rows of a node's personal test batch and of its last
training batch, and on the 3 classes of a client's batch. A per-sample normalization has none
of these. ``norm="none"`` leaves the features as they are.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from murmura.models import MODELS, _flat_features


def simplex_etf(dim: int, num_classes: int, seed: int = 0) -> torch.Tensor:
    """The simplex ETF ``M = sqrt(C/(C−1)) P (I_C − 11ᵀ/C)``, ``[dim, C]``, as the code's
    ``get_etf``: ``P`` the orthonormal factor of a QR of a uniform ``[dim, C]`` matrix, drawn
    from a generator seeded by ``seed`` (the caller's random state is untouched)."""
    if isinstance(num_classes, bool) or int(num_classes) != num_classes or num_classes < 2:
        raise ValueError(f"simplex_etf: num_classes must be an integer >= 2, got {num_classes!r}")
    if isinstance(dim, bool) or int(dim) != dim or dim < num_classes:
        raise ValueError(
            f"simplex_etf: the feature dimension ({dim!r}) must be at least the number of "
            f"classes ({num_classes}) for C orthonormal directions; raise feature_dim"
        )
    c = int(num_classes)
    generator = torch.Generator().manual_seed(int(seed))
    a = torch.rand(int(dim), c, generator=generator, dtype=torch.float64)
    p, _ = torch.linalg.qr(a)  # reduced: [dim, C], orthonormal columns
    centring = torch.eye(c, dtype=torch.float64) - torch.full((c, c), 1.0 / c, dtype=torch.float64)
    return (math.sqrt(c / (c - 1)) * p @ centring).to(torch.float32)


class ETFClassifier(nn.Module):
    """``h -> h · M / τ`` with the fixed ETF ``M`` as the buffer ``etf`` (not a parameter)."""

    def __init__(self, dim: int, num_classes: int, temperature: float = 0.2,
                 seed: int = 0) -> None:
        super().__init__()
        if (isinstance(temperature, bool) or not isinstance(temperature, (int, float))
                or not math.isfinite(temperature) or temperature <= 0):
            raise ValueError(f"etf_mlp: temperature must be a positive number (the ETF's "
                             f"length is 1/temperature; the code's default is 0.2), got "
                             f"{temperature!r}")
        self.register_buffer("etf", simplex_etf(dim, num_classes, seed))
        self.temperature = float(temperature)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h @ self.etf / self.temperature


class ETFMLP(nn.Module):
    """``x -> features h (backbone + normalization) -> head`` (see the module docstring)."""

    def __init__(self, in_features: int, num_classes: int, hidden: Sequence[int],
                 feature_dim: int, norm: str, head: nn.Module) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, int(h)), nn.ReLU()]
            width = int(h)
        layers.append(nn.Linear(width, feature_dim))
        if norm == "layer":
            layers.append(nn.LayerNorm(feature_dim))
        self.features = nn.Sequential(*layers)
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@MODELS.register("etf_mlp", "MLP backbone + LayerNorm features + a fixed simplex-ETF classifier "
                 "(a buffer, never trained; FedGELA), or head='linear' for a learnable one")
def etf_mlp(input_shape: Sequence[int], num_classes: int, hidden: Sequence[int] = (64,),
            feature_dim: int = 32, norm: str = "layer", head: str = "etf",
            temperature: float | None = None, etf_seed: int = 0) -> nn.Module:
    """``hidden``: the ReLU layers before the linear map to ``feature_dim`` features (the
    spec's 64→64→32 is ``hidden=(64,)``, ``feature_dim=32``); ``norm``: ``"layer"`` or
    ``"none"``; ``head``: ``"etf"`` (fixed ``M / temperature``, default temperature 0.2) or
    ``"linear"`` (a learnable ``Linear(feature_dim, C)``, for the FedAvg baseline);
    ``etf_seed``: the shared seed ``M`` is drawn from."""
    if isinstance(hidden, int):
        hidden = (hidden,)
    if any(isinstance(h, bool) or int(h) != h or int(h) < 1 for h in hidden):
        raise ValueError(f"etf_mlp: hidden must be a list of positive layer widths, got "
                         f"{hidden!r}")
    if isinstance(feature_dim, bool) or int(feature_dim) != feature_dim or feature_dim < 1:
        raise ValueError(f"etf_mlp: feature_dim must be a positive integer, got {feature_dim!r}")
    if norm not in ("layer", "none"):
        raise ValueError(f"etf_mlp: norm must be 'layer' or 'none', got {norm!r} (BatchNorm "
                         "does not fit: see murmura.models.etf)")
    if head == "etf":
        classifier: nn.Module = ETFClassifier(int(feature_dim), num_classes,
                                              0.2 if temperature is None else temperature,
                                              etf_seed)
    elif head == "linear":
        if temperature is not None:
            raise ValueError("etf_mlp: temperature scales the fixed ETF head; a linear head "
                             "learns its own scale (leave temperature unset with head='linear')")
        classifier = nn.Linear(int(feature_dim), num_classes)
    else:
        raise ValueError(f"etf_mlp: head must be 'etf' (fixed simplex ETF) or 'linear' "
                         f"(learnable), got {head!r}")
    return ETFMLP(_flat_features(input_shape), num_classes, tuple(int(h) for h in hidden),
                  int(feature_dim), norm, classifier)


__all__ = ["ETFClassifier", "ETFMLP", "etf_mlp", "simplex_etf"]
