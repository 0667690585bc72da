"""Transductive few-shot inference: SimpleShot, K-means and SLK over a batch of tasks.

Ziko et al., "Transductive Few-Shot Learning: Clustering is All You Need?" (arXiv 2106.09516);
spec ``federated.md`` section 11. A few-shot task is ``K`` classes with ``shot`` labelled
support samples each and unlabelled queries. On features from any extractor (a murmura
model's penultimate layer, PCA, raw pixels), normalized by :func:`cl2n`:

* **SimpleShot** labels each query by its nearest support-class mean;
* **K-means** (transductive) starts the prototypes at the support means and alternates
  labelling every point (support labels held fixed) and recomputing each prototype as the mean
  of its points, so the queries move the prototypes;
* **SLK** (Laplacian K-means, the paper's SLK-Means) adds a kNN-graph term: soft labels
  ``Y = softmax(-a + lambda W Y)`` iterated to a fixed point between prototype updates, with
  ``a`` the squared distances, ``W`` the binary kNN affinity (self excluded) and the support rows
  clamped to their labels in every iteration (the spec pilot's variant).

Each method takes one task (``support [K*shot, D]``, ``support_labels``, ``query [Q, D]``) or
a batch of tasks of the same shape (a leading task axis; :func:`infer` checks its inputs):
a batch is one computation, a converged task is frozen while the others iterate (the spec's
stopping tolerances), and the batch stops when every task has converged. Before
inference the queries are shifted by ``mean(support) - mean(query)`` (the official code's
shift correction).

>>> import torch
>>> support = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
>>> query = torch.tensor([[0.1, 0.9], [0.9, 0.2], [0.2, 1.0]])
>>> simpleshot(support, torch.tensor([0, 1]), query, 2).tolist()
[0, 1, 0]
>>> kmeans(support, torch.tensor([0, 1]), query, 2).tolist()
[0, 1, 0]
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Tensor = torch.Tensor

METHODS = ("simpleshot", "kmeans", "slk")


def cl2n(features: Tensor, base_mean: Tensor) -> Tensor:
    """Centre on the base classes' mean feature and scale each row to unit length (CL2N)."""
    centred = features - base_mean
    return centred / centred.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def _shifted(support: Tensor, query: Tensor) -> Tensor:
    return query + (support.mean(1, keepdim=True) - query.mean(1, keepdim=True))


def _means(points: Tensor, labels: Tensor, k: int, fallback: Tensor) -> Tensor:
    """Each cluster's mean ``[T, K, D]``; an empty cluster keeps its ``fallback`` prototype."""
    onehot = torch.nn.functional.one_hot(labels, k).to(points.dtype)  # [T, N, K]
    counts = onehot.sum(1)
    sums = onehot.transpose(1, 2) @ points
    return torch.where(counts[..., None] > 0, sums / counts.clamp_min(1.0)[..., None], fallback)


def _distances(points: Tensor, prototypes: Tensor) -> Tensor:
    return torch.cdist(points, prototypes).square()


def _batch(support: Tensor, support_labels: Tensor, query: Tensor) -> tuple[Tensor, ...]:
    """One task (2-d inputs) as a batch of one; a batch as it is."""
    if support.dim() == 2:
        return support[None], support_labels[None], query[None]
    return support, support_labels, query


def _unbatch(labels: Tensor, single: bool) -> Tensor:
    return labels[0] if single else labels


def simpleshot(support: Tensor, support_labels: Tensor, query: Tensor, k: int) -> Tensor:
    """Each query's nearest support-class mean (inductive: the queries change nothing)."""
    single = support.dim() == 2
    support, support_labels, query = _batch(support, support_labels, query)
    zeros = support.new_zeros(support.shape[0], k, support.shape[2])
    prototypes = _means(support, support_labels, k, zeros)
    return _unbatch(_distances(query, prototypes).argmin(2), single)


def kmeans(support: Tensor, support_labels: Tensor, query: Tensor, k: int, *,
           iterations: int = 100, tol: float = 1e-4) -> Tensor:
    """Transductive K-means from the support means, support labels held (see the module)."""
    return _cluster(support, support_labels, query, k, iterations=iterations, tol=tol,
                    laplacian=0.0)


def slk(support: Tensor, support_labels: Tensor, query: Tensor, k: int, *,
        lam: float = 0.7, knn: int = 3, iterations: int = 100, inner: int = 600,
        tol: float = 1e-4, inner_tol: float = 1e-7) -> Tensor:
    """Laplacian K-means (SLK-Means): K-means prototypes and soft labels smoothed over the
    kNN graph (``lam`` its weight, ``knn`` neighbours)."""
    return _cluster(support, support_labels, query, k, iterations=iterations, tol=tol,
                    laplacian=lam, knn=knn, inner=inner, inner_tol=inner_tol)


def knn_affinity(points: Tensor, knn: int) -> Tensor:
    """Binary ``W[p, q] = 1`` if ``q`` is among ``p``'s ``knn`` nearest (itself excluded);
    ``points`` ``[N, D]`` or a batch ``[T, N, D]``."""
    d = torch.cdist(points, points)
    d = d + torch.diag(torch.full((points.shape[-2],), float("inf"), dtype=d.dtype))
    nearest = d.topk(knn, largest=False).indices
    return torch.zeros_like(d).scatter(-1, nearest, 1.0)


def _cluster(support: Tensor, support_labels: Tensor, query: Tensor, k: int, *,
             iterations: int, tol: float, laplacian: float, knn: int = 3, inner: int = 0,
             inner_tol: float = 1e-7) -> Tensor:
    single = support.dim() == 2
    support, support_labels, query = _batch(support, support_labels, query)
    query = _shifted(support, query)
    points = torch.cat([support, query], dim=1)
    t, s = support.shape[:2]
    clamp = torch.cat([torch.nn.functional.one_hot(support_labels, k).to(points.dtype),
                       points.new_zeros(t, query.shape[1], k)], dim=1)
    is_support = (torch.arange(points.shape[1]) < s)[None, :, None]
    prototypes = _means(support, support_labels, k, points.new_zeros(t, k, points.shape[2]))
    labels = torch.cat([support_labels, _distances(query, prototypes).argmin(2)], dim=1)
    W = knn_affinity(points, knn) if laplacian else None
    energy = points.new_full((t,), float("inf"))
    done = torch.zeros(t, dtype=torch.bool)
    for _ in range(iterations):
        prototypes = _means(points, labels, k, prototypes)
        a = _distances(points, prototypes)
        if W is None:
            new = a.argmin(2)
            soft = torch.nn.functional.one_hot(new, k).to(points.dtype)
        else:
            soft = _laplacian_labels(a, W, clamp, is_support, laplacian, inner, inner_tol)
            new = soft.argmax(2)
        new = torch.where(is_support[..., 0], labels, new)  # support labels are constraints
        e = (a * soft).sum((1, 2))
        if W is not None:
            e = e - laplacian * ((W @ soft) * soft).sum((1, 2))
        labels = torch.where(done[:, None], labels, new)
        done = done | ((energy - e).abs() <= tol * e.abs())
        energy = e
        if bool(done.all()):  # a batch stops once every task has converged
            break
    return _unbatch(labels[:, s:], single)


def _laplacian_labels(a: Tensor, W: Tensor, clamp: Tensor, is_support: Tensor, lam: float,
                      inner: int, tol: float) -> Tensor:
    """The fixed point of ``Y = softmax(-a + lam W Y)``, support rows clamped every step."""
    Y = torch.where(is_support, clamp, torch.softmax(-a, dim=2))
    energy = a.new_full((a.shape[0],), float("inf"))
    done = torch.zeros(a.shape[0], dtype=torch.bool)
    for _ in range(inner):
        new = torch.where(is_support, clamp, torch.softmax(-a + lam * (W @ Y), dim=2))
        e = (new * new.clamp_min(1e-30).log()).sum((1, 2)) + (a * new).sum((1, 2)) - lam * (
            (W @ new) * new).sum((1, 2))
        Y = torch.where(done[:, None, None], Y, new)
        done = done | ((energy - e).abs() <= tol * e.abs())
        energy = e
        if bool(done.all()):
            break
    return Y


_METHOD: dict[str, Callable[..., Tensor]] = {"simpleshot": simpleshot, "kmeans": kmeans,
                                              "slk": slk}


def infer(method: str, support: Tensor, support_labels: Tensor, query: Tensor, k: int,
          **options: float) -> Tensor:
    """Labels of the queries of a batch of tasks: ``support [T, K*shot, D]``,
    ``support_labels [T, K*shot]`` (ints in ``0..k-1``, every class present), ``query
    [T, Q, D]``; returns ``[T, Q]``. ``options`` go to the method (``lam``, ``knn``, ...)."""
    if method not in _METHOD:
        raise ValueError(f"unknown few-shot method {method!r}; choose one of {', '.join(METHODS)}")
    if support.dim() != 3 or query.dim() != 3 or support_labels.dim() != 2:
        raise ValueError("a batch of tasks: support [T, S, D], support_labels [T, S], query "
                         f"[T, Q, D]; got {tuple(support.shape)}, {tuple(support_labels.shape)}, "
                         f"{tuple(query.shape)}")
    if support.shape[:2] != support_labels.shape or support.shape[0] != query.shape[0] or \
            support.shape[2] != query.shape[2]:
        raise ValueError("support, support_labels and query disagree on tasks, support size or "
                         "feature size")
    if int(support_labels.min()) < 0 or int(support_labels.max()) >= k:
        raise ValueError(f"support labels must be in 0..{k - 1}")
    present = torch.nn.functional.one_hot(support_labels, k).sum(1)
    if bool((present == 0).any()):
        raise ValueError("every task's support set must hold every one of its k classes")
    if method == "slk" and int(options.get("knn", 3)) >= support.shape[1] + query.shape[1]:
        raise ValueError("knn must be smaller than a task's number of points")
    return _METHOD[method](support, support_labels, query, k, **options)


def sample_tasks(labels: Tensor, classes: list[int], *, ways: int, shot: int, queries: int,
                 tasks: int, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Draw ``tasks`` few-shot tasks from the samples whose label is in ``classes``: indices
    ``support [T, ways*shot]``, ``support_labels`` (0..ways-1), ``query [T, ways*queries]``,
    ``query_labels``."""
    if ways > len(classes):
        raise ValueError(f"{ways}-way tasks need at least {ways} classes, got {len(classes)}")
    by_class = {c: torch.nonzero(labels == c).flatten() for c in classes}
    short = [c for c, idx in by_class.items() if len(idx) < shot + queries]
    if short:
        raise ValueError(f"classes {short} have fewer than shot + queries = {shot + queries} "
                         "samples")
    out: tuple[list, list, list, list] = ([], [], [], [])
    for _ in range(tasks):
        chosen = torch.randperm(len(classes), generator=generator)[:ways].tolist()
        s, sl, q, ql = [], [], [], []
        for way, c in enumerate(classes[i] for i in chosen):
            idx = by_class[c][torch.randperm(len(by_class[c]), generator=generator)]
            s.append(idx[:shot])
            q.append(idx[shot:shot + queries])
            sl += [way] * shot
            ql += [way] * queries
        for bucket, value in zip(out, (torch.cat(s), torch.tensor(sl), torch.cat(q),
                                       torch.tensor(ql))):
            bucket.append(value)
    return tuple(torch.stack(b) for b in out)  # type: ignore[return-value]


__all__ = ["METHODS", "cl2n", "infer", "kmeans", "knn_affinity", "run_features", "sample_tasks",
           "simpleshot", "slk"]


def digits_features(features: str, base_classes: int = 5) -> tuple[Tensor, Tensor]:
    """sklearn's digits as few-shot data (the spec's CPU design): base classes
    ``0..base_classes-1`` only shape the features, novel classes are the rest. ``features``:
    ``"raw"`` (pixels), ``"pca"`` (20 components fitted on the base classes) or ``"mlp"`` (the
    32-unit penultimate layer of an MLP 64-128-32 trained on the base classes, sklearn's,
    seed 0); all CL2N with the base classes' mean. Returns ``(features [N, D], labels [N])``."""
    from sklearn.datasets import load_digits
    from sklearn.decomposition import PCA

    x, y = load_digits(return_X_y=True)
    base = y < base_classes
    if features == "pca":
        x = PCA(20, random_state=0).fit(x[base]).transform(x)
    elif features == "mlp":
        import numpy as np
        from sklearn.neural_network import MLPClassifier

        net = MLPClassifier((128, 32), max_iter=300, random_state=0).fit(x[base] / 16, y[base])
        h = x / 16
        for w, b in zip(net.coefs_[:2], net.intercepts_[:2]):
            h = np.maximum(h @ w + b, 0.0)
        x = h
    elif features != "raw":
        raise ValueError(f"features {features!r}: choose 'raw', 'pca' or 'mlp'")
    z = torch.tensor(x, dtype=torch.float32)
    return cl2n(z, z[torch.tensor(base)].mean(0)), torch.tensor(y)


def run_features(run_dir: str, base_classes: int = 5) -> tuple[Tensor, Tensor]:
    """Few-shot data from a murmura run: its dataset's samples (training and test sets) through
    the run's trained model (:func:`murmura.runner.trained.load_run_model`, the nodes' mean),
    its penultimate layer when it is an ``nn.Sequential`` ending in a ``Linear``, its outputs
    otherwise; CL2N with the base classes' mean. Classes ``base_classes..`` are the novel ones:
    a model trained on every class has seen them, so this measures how well a federation's
    features separate classes, not few-shot transfer to unseen ones."""
    from murmura.runner.trained import load_run_model
    from murmura.swarm.fewshot_eval import feature_function

    model, _, dataset = load_run_model(run_dir)
    if dataset.num_classes < base_classes + 2:
        raise ValueError(f"{run_dir}: its dataset has {dataset.num_classes} classes; few-shot "
                         f"tasks need novel classes beyond the {base_classes} base ones")
    x = torch.cat([dataset.train_x, dataset.test_x]).float()
    y = torch.cat([dataset.train_y, dataset.test_y])
    features = feature_function(model)
    params = dict(model.named_parameters())
    with torch.no_grad():
        z = torch.cat([features(params, x[i : i + 4096]).flatten(1)
                       for i in range(0, len(x), 4096)])
    return cl2n(z, z[y < base_classes].mean(0)), y


def _register_kind() -> None:
    from murmura.runner.kinds import KINDS

    @KINDS.register("fewshot", "transductive few-shot inference on digits' novel classes: "
                    "SimpleShot, K-means and SLK accuracy as tasks accumulate", overwrite=True)
    def fewshot_kind(context, features: str = "raw", shot: int = 1, ways: int = 5,
                     queries: int = 15, tasks: int = 300, batch: int = 50, lam: float = 0.7,
                     knn: int = 3, run_dir: str | None = None):
        """One record per batch of tasks: each method's accuracy over the tasks so far
        (``test_accuracy`` is SLK's), for one seed (the experiment's). With ``run_dir`` the
        features are that murmura run's model's (:func:`run_features`, any dataset of 10
        classes: novel classes 5-9) and ``features`` is not read."""
        if min(shot, ways, queries, tasks, batch, knn) < 1:
            raise ValueError("shot, ways, queries, tasks, batch and knn must be >= 1")
        z, y = digits_features(features) if run_dir is None else run_features(run_dir)
        generator = torch.Generator().manual_seed(context.seed)
        correct = dict.fromkeys(METHODS, 0)
        seen = 0
        for step, start in enumerate(range(0, tasks, batch)):
            count = min(batch, tasks - start)
            s, sl, q, ql = sample_tasks(y, list(range(5, 10)), ways=ways, shot=shot,
                                        queries=queries, tasks=count, generator=generator)
            for method in METHODS:
                options = {"lam": lam, "knn": knn} if method == "slk" else {}
                pred = infer(method, z[s], sl, z[q], ways, **options)
                correct[method] += int((pred == ql).sum())
            seen += ql.numel()
            record = {"round": step, "tasks": start + count}
            record.update({f"{m}_accuracy": correct[m] / seen for m in METHODS})
            record["test_accuracy"] = record["slk_accuracy"]
            yield record
        return {"queries_scored": seen}


_register_kind()
