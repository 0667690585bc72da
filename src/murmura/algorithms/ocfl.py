"""OCFL: one-shot clustered federated learning with a temperature trigger (Zuziak,
Pellungrini and Rinzivillo, "One-Shot Clustering for Federated Learning", IEEE BigData 2024,
arXiv 2503.04231; extended as arXiv 2509.01587; code github.com/MKZuziak/Clustered-Federated-
Learning, ``FedCL/simulation/simulation.py`` ``training_protocol_energy_oneshot`` /
``energy_oneshot``, ``FedCL/aggregators/temperature.py``, ``distances.py``).

FedAvg on every client; each client uploads its update ``Δ_i = θ_i − θ_c(i)`` (its model after
local training minus the model of its cluster it started from). Until the one clustering::

    D_ij = 1 − cos(Δ_i, Δ_j)    (D_ii = 0, D in [0, 2])
    T_t  = ‖D‖_F / sqrt(n (n − 1) · 2²)                           the clustering temperature
    T_t > T_{t−1}  (T_{−1} = +∞)  ->  labels = clusterer(D), once

The clusterer is scikit-learn's ``HDBSCAN(metric="precomputed", min_cluster_size=...)`` on
``D``, or ``KMeans(k)`` on the rows of ``D`` (the code's use); HDBSCAN's
noise label −1 becomes a cluster of its own, as in the code (each distinct label is a child
cluster, in sorted order). ``"none"`` never clusters: FedAvg (uniform weights) whose server
tracks the temperature every round, the paper's temperature experiments. Every child starts
from the parent's model, and the firing round's updates already go to the children. Then,
every round, each cluster ``c`` takes a server step on its members' mean update (``η_s = 1``:
FedAvg within the cluster)::

    θ_c <- θ_c + η_s · mean_{i ∈ c} Δ_i

Bytes are FedAvg's: ``Δ_i`` up (``4d``), the cluster's model down (``4d``). The clustering is
the server's own computation, once, on the CPU (not a per-node rule). The server's state holds
the cluster models ``models [K, d]``, the labels ``labels [n]`` (int64, all 0 before the
firing), the last temperature ``temperature`` and ``fired_round`` (−1 until it fires); its
``params`` (the model ``test_accuracy`` scores) is the mean of the clients' models, what a
global merge of the clusters would give. Each client downloads its own cluster's model, so
``personal_accuracy_*`` (with ``local_test_fraction``) is the paper's local test accuracy.

Notes against the code: a zero update has cosine 0 to everything here (``scipy``'s ``cosine``
gives NaN); the mean within a cluster is uniform (the code's ``average_of_weigts``) unless
``weighting = "samples"``; KMeans gets ``random_state = seed`` (the code leaves it unseeded).
Every client must take part in every round (the paper's setting).

Specification: ``specs/federated.md`` section 6.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from murmura.algorithms.base import ALGORITHMS, Algorithm, LocalWork, RoundContext, Tensor
from murmura.algorithms.federated import ANCHOR, ServerOptimize
from murmura.algorithms.named import _work
from murmura.algorithms.plans import Vectors
from murmura.algorithms.rules import SGD, Every, FullParticipation

CLUSTERERS = ("hdbscan", "kmeans", "none")


def cosine_distances(updates: Tensor) -> Tensor:
    """``D_ij = 1 − cos(u_i, u_j)`` over the rows of ``updates`` ``[m, d]``, in float64, with a
    zero diagonal and clipped to ``[0, 2]``; a zero row has cosine 0 to every other row."""
    u = updates.detach().to(torch.float64)
    unit = u / torch.linalg.vector_norm(u, dim=1, keepdim=True).clamp_min(1e-300)
    distance = (1.0 - unit @ unit.T).clamp(0.0, 2.0)
    return distance.fill_diagonal_(0.0)


def temperature(distance: Tensor) -> float:
    """``T = ‖D‖_F / sqrt(m (m − 1) 2²)``: 0 when all updates are parallel, 1/2 when all are
    orthogonal (the code's ``calculate_temperature`` with p = 2)."""
    m = distance.shape[0]
    if m < 2:
        return 0.0
    return float(torch.linalg.matrix_norm(distance) / math.sqrt(m * (m - 1) * 4))


@dataclass(frozen=True)
class Clusterer:
    """The one clustering: ``labels(D, seed) -> int64 [m]`` in ``0..K-1`` (sorted distinct
    labels of the scikit-learn estimator, HDBSCAN's noise −1 first when there is any)."""

    name: str = "hdbscan"
    min_cluster_size: int = 3
    num_clusters: int = 3

    def check(self, m: int) -> None:
        """ValueError when ``m`` clients cannot be clustered with these settings."""
        for name, value, used in (("min_cluster_size", self.min_cluster_size, "hdbscan"),
                                  ("num_clusters", self.num_clusters, "kmeans")):
            if self.name == used and value > m:
                raise ValueError(f"ocfl: {name}={value} exceeds the {m} clients; use "
                                 f"{name} <= {m}")

    def labels(self, distance: Tensor, seed: int) -> Tensor:
        d = distance.cpu().numpy()
        self.check(len(d))
        if self.name == "hdbscan":
            from sklearn.cluster import HDBSCAN

            raw = HDBSCAN(min_cluster_size=self.min_cluster_size,
                          metric="precomputed", copy=True).fit_predict(d)
        elif self.name == "kmeans":
            from sklearn.cluster import KMeans

            raw = KMeans(self.num_clusters, n_init="auto", random_state=seed).fit_predict(d)
        else:
            raise ValueError(f"ocfl: clusterer {self.name!r} does not cluster")
        return torch.as_tensor(np.unique(raw, return_inverse=True)[1].reshape(-1),
                               dtype=torch.int64)


@dataclass(frozen=True)
class SendUpdate:
    """A client uploads ``Δ = θ − θ_start`` (its round's update), dense fp32: ``4d`` bytes."""

    node_state: dict = field(default_factory=lambda: {"anchor": ANCHOR})

    def encode(self, params: Tensor, state: Vectors, key: Tensor) -> tuple[Vectors, Vectors]:
        return {"update": params - state["anchor"]}, {}

    def nbytes(self, dim: int) -> int:
        return 4 * dim


@dataclass(frozen=True)
class UploadUpdates(ServerOptimize):
    """Every client uploads its update to the server (weighted uniformly or by samples)."""

    encoder: Any = field(default_factory=SendUpdate)
    node_state: dict = field(default_factory=lambda: {"anchor": ANCHOR})


@dataclass(frozen=True)
class OCFLServer:
    """The cluster manager: temperature trigger, one clustering, per-cluster FedAvg steps."""

    clusterer: Clusterer = field(default_factory=Clusterer)
    server_lr: float = 1.0
    needs_uploads: bool = True

    def init(self, params: Tensor) -> Vectors:
        return {"params": params.clone(), "models": params.clone().unsqueeze(0),
                "labels": torch.zeros(0, dtype=torch.int64, device=params.device),
                "temperature": torch.tensor(math.inf, dtype=torch.float64),
                "fired_round": torch.tensor(-1, dtype=torch.int64)}

    def update(self, state: Vectors, aggregate: Vectors, ctx: RoundContext
               ) -> tuple[Vectors, Vectors]:
        delta, clients, weights = aggregate["update"], aggregate["clients"], aggregate["weights"]
        n = ctx.num_nodes
        if len(clients) != n:
            raise ValueError(f"ocfl: all {n} clients must upload every round (got "
                             f"{len(clients)}); OCFL clusters every client once")
        models, labels = state["models"], state["labels"]
        if labels.numel() == 0:
            labels = torch.zeros(n, dtype=torch.int64, device=delta.device)
        heat, fired = state["temperature"], state["fired_round"]
        if int(fired) < 0:  # still one cluster: measure the temperature, maybe fire
            self.clusterer.check(len(clients))
            distance = cosine_distances(delta)
            now = temperature(distance)
            if now > float(heat) and self.clusterer.name != "none":
                labels = labels.clone()
                labels[clients] = self.clusterer.labels(distance, ctx.seed).to(labels.device)
                models = models[:1].expand(int(labels.max()) + 1, -1).clone()
                fired = torch.tensor(ctx.round, dtype=torch.int64)
            heat = torch.tensor(now, dtype=torch.float64)
        # θ_c <- θ_c + η_s · (weighted) mean of Δ_i over the members of c
        member = labels[clients]
        w = weights.to(delta.dtype)
        total = torch.zeros(len(models), dtype=delta.dtype, device=delta.device)
        total = total.index_add(0, member, w)
        summed = torch.zeros_like(models).index_add(0, member, w[:, None] * delta)
        models = models + self.server_lr * summed / total.clamp_min(1e-30)[:, None]
        rows = models[labels]
        new = {"params": rows.mean(0), "models": models, "labels": labels,
               "temperature": heat, "fired_round": fired}
        return {"params": rows if len(models) > 1 else models[0]}, new


@ALGORITHMS.register("ocfl", "OCFL: FedAvg that clusters clients once, when the update "
                             "temperature first rises")
def ocfl(
    clusterer: str = "hdbscan",
    min_cluster_size: int = 3,
    num_clusters: int = 3,
    lr: float = 0.05,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    local_epochs: float | None = 3.0,
    local_steps: int | None = None,
    batch_size: int = 16,
    server_lr: float = 1.0,
    weighting: str = "uniform",
) -> Algorithm:
    """OCFL (Zuziak et al., 2024): every client trains ``local_epochs`` from its cluster's model
    and uploads its update; the first round whose temperature exceeds the last one's clusters
    the clients once with ``clusterer`` (``"hdbscan"`` with ``min_cluster_size``, ``"kmeans"``
    with ``num_clusters``, or ``"none"``: never, FedAvg that only tracks the
    temperature), and from then on each cluster runs FedAvg with
    server learning rate ``server_lr`` (the code's η_s = 1). ``weighting``: the mean within a
    cluster, ``"uniform"`` (the code's) or by ``"samples"``. Defaults: the spec's CPU pilot
    (3 epochs, lr 0.05, batch 16); the paper used lr 0.01, batch 32."""
    params = dict(locals())
    if clusterer not in CLUSTERERS:
        raise ValueError(f"ocfl: unknown clusterer {clusterer!r}; choose one of "
                         f"{', '.join(CLUSTERERS)}")
    for name, value, low in (("min_cluster_size", min_cluster_size, 2),
                             ("num_clusters", num_clusters, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"ocfl: {name} must be an integer >= {low}, got {value!r}")
    if isinstance(server_lr, bool) or not isinstance(server_lr, (int, float)) or not (
            math.isfinite(server_lr) and server_lr > 0):
        raise ValueError(f"ocfl: server_lr must be a positive number, got {server_lr!r}")
    if weighting not in ("uniform", "samples"):
        raise ValueError(f"ocfl: weighting must be 'uniform' or 'samples', got {weighting!r}")
    if local_steps is not None:
        local_epochs = None
    work = _work(local_steps, local_epochs, batch_size)
    return Algorithm(
        name="ocfl",
        local_rule=SGD(lr, momentum, weight_decay),
        local_work=LocalWork(work.batch_size, work.steps, work.epochs,
                             reset_state_each_round=True),
        communication=UploadUpdates(weighting),
        schedule=Every(1),
        participation=FullParticipation(),
        server=OCFLServer(Clusterer(clusterer, min_cluster_size, num_clusters),
                          float(server_lr)),
        params=params,
    )


__all__ = ["Clusterer", "OCFLServer", "SendUpdate", "UploadUpdates", "cosine_distances",
           "ocfl", "temperature"]
