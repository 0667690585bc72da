"""Bristle (Verbraeken, de Vos and Pouwelse, "Decentralized Federated Learning in Byzantine,
Non-i.i.d. Environments", arXiv 2110.11006, 2021; spec ``robust.md`` section 3): a
distance-based prioritizer and a performance-based, class-by-class integrator of received
models, for ONE receiver.

The paper trains and exchanges only the output layer over a frozen pre-trained feature
extractor, so that models are cheap to send and comparable class by class: column ``c`` of the
output layer scores class ``c``. In murmura the frozen extractor is applied once to the data
(:func:`frozen_features`) and the model is a linear head on those features (``logreg``), so the
vector the engine exchanges is exactly the head: ``C`` weight rows of ``h`` features (torch's
``Linear.weight`` is ``[C, h]``, the transpose of the paper's ``W [h, C]``) and ``C`` biases.
"Column ``c``" here is row ``c`` of the weight together with bias ``c`` (the reference code
rewrites only the weight's columns; the spec treats the bias of class ``c`` as part of column
``c``, as this does). The spec's CPU pilot uses the identity on the raw pixels as the backbone.

One receiver with its new model ``W_new`` (``own``: the node's model after this round's local
steps, the reference's ``oldModel - gradient``) and the received models ``W_j``:

1. prioritizer: ``dist_j = ||W_j - W_new||_2``; choose at most a few candidates
   (:func:`prioritize`): ``"exploit_explore"`` (the paper's, reference commit ``042b329e``: the
   50 closest and 5 drawn from the rest; the default), ``"tiered"`` (draws of
   ``round((1 - a)^2 N)``, ``round((2 a - 2 a^2) N)`` and ``round(a^2 N)`` from the closest,
   middle and farthest third of the sorted candidates, ``a = 0.4``, ``N = 10``; commented out
   in the reference master) or ``"random"`` (``N = 10`` drawn; what the reference master runs).
   The spec leaves open which one the paper's runs used.
2. per-class F1 of ``W_new`` (``my_f1``) and of every candidate (``f1_j``) on the node's local
   validation set ``V`` (up to ``per_class`` samples of each class it holds), for the familiar
   classes ``F`` (the labels present in ``V``); the foreign classes are the others.
3. per familiar class: ``d = 10 |my_f1 - f1_j|``, ``s = d^(3 + my_f1)`` if the candidate is
   better, else ``-d^(4 + my_f1)`` (:func:`score`), bounded ``s^b = max(-100, s)``;
   certainty ``max(0, mean_c f1_j - std_c f1_j)`` (:func:`certainty`), and
   ``g(s) = max(0, 10 sigmoid(s / 100) - 4)`` (:func:`g`).
4. familiar column ``c``: weight ``g(s^b_jc) certainty_j``; foreign column: one per-peer
   weight ``g(sum_c s_jc) certainty_j`` (the unbounded sum); each column is
   ``(W_new[c] + sum_j w_jc W_j[c]) / (1 + sum_j w_jc)`` (:func:`integrate`).

What the reference code (``jverbraeken/trustchain-superapp`` master ``a505112b``,
``fedml/src/main/java/nl/tudelft/trustchain/fedml/ai/gar/Bristle.kt``) does where the spec
leaves it open, and where this differs:

* ``W_avg`` of the foreign columns: the reference's ``incorporateForeignWeights`` starts from
  ``weightedAverage``, the familiar-column merge, whose foreign columns are untouched, i.e.
  ``W_new``'s. So a foreign column is ``(W_new[c] + sum_j W_j W_j[c]) / (1 + sum_j W_j)``; this
  follows it.
* the selected classes ``S_j``: without the peers' class counts (murmura's peers do not announce
  them) the spec's ``S_j = F``. The reference's ``getBestPerformingClassesPerPeer`` returns
  ``0 until |F|`` in that case, the class *indices* ``0 .. |F| - 1`` rather than ``F`` itself,
  a defect (it looks up classes the node may not have); this follows the spec.
* ``"tiered"``: the reference's thirds (``take(n / 3)``, ``subList(n / 3, 2n / 3)``,
  ``takeLast(n / 3)``) leave candidates out of every third when ``n`` is not a multiple of 3;
  here the middle third holds what the first and last do not.
* F1 per class is DL4J's ``Evaluation.f1``: ``2 TP / (2 TP + FP + FN)``, 0 without a true
  positive.
* candidates with a non-finite entry (an ``inf`` attack) are not considered.

The local validation set: the reference evaluates on a fixed local test set (``maxTestSample``
10 per class, from the test split). murmura's engine hands a non-vectorized aggregator only
the receiver's own *training* samples, a fresh random draw each round (``needs_data``): this
asks for up to ``pool`` of them (all of them on small partitions) and takes, per class, the
first ``per_class`` in a fixed order of the samples' values (:func:`validation_set`), so ``V``
is the same every round whenever the node holds at most ``pool`` samples. ``V`` is thus part of
what the node trains on (a held-out per-node validation set would need an engine change).

Robustness comes from evaluating: no count of attackers ``f`` is assumed; a candidate worse
than one's own model on one's familiar classes gets weight 0.

>>> import torch
>>> own = torch.tensor([1., 0., 0., 0.])       # Linear(1, 2): weights [1, 0], biases [0, 0]
>>> peer = torch.tensor([3., 1., 0., 1.])      # as good on class 0, the only one the node has
>>> batch = {"x": torch.tensor([[1.], [2.]]), "y": torch.tensor([0, 0])}
>>> Bristle(num_classes=2)(own, torch.stack([own, peer]), torch.ones(2), batch=batch).tolist()
[2.0, 0.5, 0.0, 0.5]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import nn

from murmura.data.dataset import Dataset
from murmura.robust.aggregators import AGGREGATORS, usable_rows
from murmura.swarm.random import key_uniform

Tensor = torch.Tensor

PRIORITIZERS = ("exploit_explore", "tiered", "random")


# ---------------------------------------------------------------------------------------------
# the integrator's formulas (spec section 3 (b), steps 2-7)


def f1_per_class(predicted: Tensor, labels: Tensor, classes: Tensor) -> Tensor:
    """F1 of each class in ``classes [F]`` from predictions ``[..., m]`` of ``labels [m]``:
    ``2 TP / (2 TP + FP + FN)`` (DL4J's ``Evaluation.f1``; 0 without a true positive), ``[..., F]``.
    Every class in ``classes`` must occur in ``labels``."""
    hit = predicted.unsqueeze(-1) == classes  # [..., m, F]
    true = labels.unsqueeze(-1) == classes  # [m, F]
    tp = (hit & true).sum(-2)
    wrong = (hit ^ true).sum(-2)  # FP + FN
    return (2 * tp / (2 * tp + wrong).clamp_min(1)).to(torch.float64)


def score(mine: Tensor, theirs: Tensor) -> Tensor:
    """The spec's per-class score of a candidate with F1 ``theirs`` against one's own ``mine``
    (broadcast): ``d = 10 |mine - theirs|``, ``d^(3 + mine)`` if the candidate is better, else
    ``-d^(4 + mine)``."""
    d = 10 * (mine - theirs).abs()
    return torch.where(theirs > mine, d ** (3 + mine), -(d ** (4 + mine)))


def bounded(s: Tensor) -> Tensor:
    """``s^b = max(-100, s)``: the bounded score the per-class weights use."""
    return s.clamp_min(-100.0)


def certainty(f1: Tensor) -> Tensor:
    """``max(0, mean - std)`` of a candidate's F1 over the selected classes (the last axis;
    the population standard deviation)."""
    return (f1.mean(-1) - f1.std(-1, correction=0)).clamp_min(0.0)


def g(s: Tensor) -> Tensor:
    """``max(0, 10 sigmoid(s / 100) - 4)``: 1 at ``s = 0``, at most 6, and 0 from
    ``s = 100 ln(2/3) = -40.55`` down."""
    return (10 * torch.sigmoid(s / 100) - 4).clamp_min(0.0)


def integrate(own: Tensor, candidates: Tensor, weights: Tensor) -> Tensor:
    """Column by column, ``(own[c] + sum_j w_jc cand_j[c]) / (1 + sum_j w_jc)``: ``own [C, p]``
    (one's own model's columns), ``candidates [k, C, p]``, ``weights [k, C]``."""
    w = weights.to(own.dtype)
    return (own + torch.einsum("kc,kcp->cp", w, candidates)) / (1 + w.sum(0)).unsqueeze(-1)


def class_weights(my_f1: Tensor, f1: Tensor, familiar: Tensor, num_classes: int) -> Tensor:
    """``[k, C]``: each candidate's weight of each column, from one's own F1 ``[F]`` and the
    candidates' ``[k, F]`` on the ``familiar`` classes: ``g(s^b_jc) certainty_j`` for a
    familiar column ``c``, ``g(sum_c s_jc) certainty_j`` for every foreign one."""
    s = score(my_f1, f1)
    sure = certainty(f1).unsqueeze(-1)
    weights = (g(s.sum(-1, keepdim=True)) * sure).expand(-1, num_classes).clone()
    weights[:, familiar] = g(bounded(s)) * sure
    return weights


# ---------------------------------------------------------------------------------------------
# the prioritizer (spec section 3 (b), step 1)


def _drawn(pool: Tensor, count: int, key: Tensor, salt: int) -> Tensor:
    """``count`` entries of ``pool`` drawn without replacement by ``key`` (all when fewer)."""
    order = torch.argsort(key_uniform(key, (len(pool),), salt=salt), stable=True)
    return pool[order[:count]]


def prioritize(distances: Tensor, key: Tensor, prioritizer: str = "exploit_explore",
               exploit: int = 50, explore: int = 5, alpha: float = 0.4, count: int = 10
               ) -> Tensor:
    """The candidates to evaluate, as sorted indices into ``distances [k]`` (each candidate's
    L2 distance to one's new model); random draws come from ``key``.

    ``"exploit_explore"``: the ``exploit`` closest, and ``explore`` drawn from the rest.
    ``"tiered"``: sorted by distance and cut in thirds, ``round((1 - alpha)^2 count)`` drawn
    from the closest third, ``round((2 alpha - 2 alpha^2) count)`` from the middle one and
    ``round(alpha^2 count)`` from the farthest (each at most what its third holds).
    ``"random"``: ``count`` drawn from all."""
    order = torch.argsort(distances, stable=True)
    if prioritizer == "exploit_explore":
        chosen = [order[:exploit], _drawn(order[exploit:], explore, key, 0)]
    elif prioritizer == "tiered":
        third = len(order) // 3
        parts = (order[:third], order[third:len(order) - third], order[len(order) - third:])
        wanted = (round((1 - alpha) ** 2 * count), round((2 * alpha - 2 * alpha**2) * count),
                  round(alpha**2 * count))
        chosen = [_drawn(p, w, key, i) for i, (p, w) in enumerate(zip(parts, wanted))]
    elif prioritizer == "random":
        chosen = [_drawn(order, count, key, 0)]
    else:
        raise ValueError(f"bristle: prioritizer must be one of {PRIORITIZERS}, got "
                         f"{prioritizer!r}")
    return torch.sort(torch.cat(chosen)).values


# ---------------------------------------------------------------------------------------------
# the local validation set and the frozen backbone


def validation_set(x: Tensor, y: Tensor, per_class: int) -> tuple[Tensor, Tensor]:
    """Up to ``per_class`` samples of each class in ``y``, flattened ``[m, h]``: the first in a
    fixed order of the samples' values (a projection on one fixed random direction), so the
    same samples are chosen whatever order they come in."""
    flat = x.reshape(len(x), -1).to(torch.float64)
    direction = torch.randn(flat.shape[1], generator=torch.Generator().manual_seed(0),
                            dtype=torch.float64).to(flat.device)
    order = torch.argsort(flat @ direction, stable=True)
    order = order[torch.argsort(y[order], stable=True)]  # by class, fixed order within
    labels = y[order]
    first = torch.searchsorted(labels, labels)  # where each sample's class starts
    keep = order[torch.arange(len(order), device=y.device) - first < per_class]
    return x.reshape(len(x), -1)[keep], y[keep]


def frozen_features(backbone: Callable[[Tensor], Tensor] | nn.Module, dataset: Dataset,
                    batch_size: int = 1024) -> Dataset:
    """``dataset`` with its train and test samples replaced by ``backbone``'s features,
    flattened to ``[N, h]`` float32, computed once without gradients: the paper's frozen,
    pre-trained feature layers, so that a linear head (``model="logreg"``) on the result is the
    only part trained and exchanged. An ``nn.Module`` runs in eval mode. The spec's CPU pilot
    uses the identity (``nn.Identity()``) on the raw pixels, the head's bias being the linear
    model's.

    >>> from murmura.data import load_dataset
    >>> frozen_features(nn.Identity(), load_dataset("digits")).train_x.shape
    torch.Size([1257, 64])
    """
    if not callable(backbone):
        raise ValueError(f"frozen_features: backbone must be a function or an nn.Module "
                         f"mapping samples [N, ...] to features, got {type(backbone).__name__}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"frozen_features: batch_size must be a positive integer, got "
                         f"{batch_size!r}")
    training = backbone.training if isinstance(backbone, nn.Module) else None
    if training is not None:
        backbone.eval()

    def features(x: Tensor) -> Tensor:
        parts = [backbone(x[i:i + batch_size]).reshape(len(x[i:i + batch_size]), -1)
                 for i in range(0, len(x), batch_size)]
        return torch.cat(parts).to(torch.float32).contiguous()

    try:
        with torch.no_grad():
            train_x, test_x = features(dataset.train_x), features(dataset.test_x)
    finally:
        if training:
            backbone.train()
    return dataclasses.replace(dataset, train_x=train_x, test_x=test_x)


# ---------------------------------------------------------------------------------------------
# the aggregator


def _count(name: str, value: object, lowest: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lowest:
        raise ValueError(f"bristle: {name} must be an integer >= {lowest}, got {value!r}")
    return value


@AGGREGATORS.register("bristle", "Bristle: distance prioritizer, then a per-class F1-weighted "
                      "merge of a linear head's columns on the node's own samples")
@dataclass(frozen=True)
class Bristle:
    """Bristle's prioritizer and integrator for one receiver (see the module docstring).

    ``prioritizer``: ``"exploit_explore"`` (``exploit`` closest + ``explore`` drawn, 50 / 5),
    ``"tiered"`` (``alpha`` 0.4, ``count`` 10) or ``"random"`` (``count`` 10). ``per_class``:
    the local validation set's samples per familiar class (10). ``pool``: how many of its own
    training samples the receiver asks the engine for, to build that set from. ``num_classes``:
    the head's classes, for use outside a simulation on flat ``Linear(h, C)`` heads (``C h``
    weights, then ``C`` biases); in a simulation the rule is bound to the model, which must be
    one linear layer (``logreg`` on :func:`frozen_features`).

    Runs on a graph (``dsgd``), where ``received[0]`` is the receiver's own message and the
    others are the candidates; ``own`` is the node's model after its local steps."""

    prioritizer: str = "exploit_explore"
    exploit: int = 50
    explore: int = 5
    alpha: float = 0.4
    count: int = 10
    per_class: int = 10
    pool: int = 4096
    num_classes: int | None = None
    head: tuple[int, int, int, int] | None = None  # (weight offset, C, h, bias offset or -1)
    vectorized = False
    needs_key = True

    def __post_init__(self) -> None:
        if self.prioritizer not in PRIORITIZERS:
            raise ValueError(f"bristle: prioritizer must be one of {PRIORITIZERS}, got "
                             f"{self.prioritizer!r}")
        _count("exploit", self.exploit, 0)
        _count("explore", self.explore, 0)
        if self.exploit + self.explore < 1:
            raise ValueError("bristle: exploit + explore must be at least 1 (the candidates "
                             "the exploit_explore prioritizer evaluates)")
        if (isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float))
                or not 0 <= self.alpha <= 1):
            raise ValueError(f"bristle: alpha must be a number in [0, 1] (the tiered "
                             f"prioritizer's share of far candidates), got {self.alpha!r}")
        _count("count", self.count, 1)
        _count("per_class", self.per_class, 1)
        _count("pool", self.pool, 1)
        if self.num_classes is not None:
            _count("num_classes", self.num_classes, 2)

    @property
    def needs_data(self) -> int:
        """The engine hands the receiver up to this many of its own training samples."""
        return self.pool

    def bind(self, layout: object) -> Bristle:
        """This rule for the simulation's model, which must be one linear layer: a weight
        ``[C, h]`` and a bias ``[C]``."""
        spec = layout.spec
        weights = [i for i, s in enumerate(spec.shapes) if len(s) == 2]
        biases = [i for i, s in enumerate(spec.shapes) if len(s) == 1]
        if len(weights) != 1 or len(biases) > 1 or len(weights) + len(biases) != len(spec.names):
            raise ValueError(
                f"bristle merges the columns of a linear head; the model's parameters are "
                f"{dict(zip(spec.names, spec.shapes))}: use model='logreg' on frozen features "
                "(murmura.robust.bristle.frozen_features)")
        (w,) = weights
        classes, features = spec.shapes[w]
        if biases and spec.shapes[biases[0]] != (classes,):
            raise ValueError(f"bristle: the bias {spec.names[biases[0]]!r} has shape "
                             f"{spec.shapes[biases[0]]}, not one entry per class ({classes},)")
        if self.num_classes is not None and self.num_classes != classes:
            raise ValueError(f"bristle: num_classes={self.num_classes} but the model's head has "
                             f"{classes} classes; leave num_classes out in a simulation")
        bias = spec.offsets[biases[0]] if biases else -1
        return replace(self, head=(spec.offsets[w], classes, features, bias))

    def _layout(self, dim: int) -> tuple[int, int, int, int]:
        if self.head is not None:
            return self.head
        if self.num_classes is None:
            raise ValueError("bristle needs the head's layout: run it in a simulation (bound to "
                             "the model) or pass num_classes (a flat Linear(h, C) head)")
        c = self.num_classes
        if dim % c or dim // c < 2:
            raise ValueError(f"bristle: vectors of {dim} entries are not a Linear(h, "
                             f"{c}) head (C h weights then C biases, i.e. a multiple of {c} "
                             "with h >= 1); check num_classes")
        return 0, c, dim // c - 1, dim - c

    def __call__(self, own: Tensor, received: Tensor, mask: Tensor, key: Tensor | None = None,
                 *, batch: dict[str, Tensor] | None = None) -> Tensor:
        if batch is None:
            raise ValueError("bristle evaluates the candidates on the receiver's own samples: "
                             "pass batch={'x': ..., 'y': ...} (a simulation does so on a graph, "
                             "e.g. dsgd)")
        w0, classes, h, b0 = self._layout(own.shape[-1])
        key = torch.zeros((), dtype=torch.int64) if key is None else key
        x, y = validation_set(torch.as_tensor(batch["x"]).to(own), torch.as_tensor(batch["y"]),
                              self.per_class)
        if len(y) == 0 or int(y.min()) < 0 or int(y.max()) >= classes:
            raise ValueError(f"bristle: the validation labels must lie in [0, {classes}), got "
                             f"{y.tolist()[:10]}")
        usable = usable_rows(received, mask)
        usable[0] = False  # received[0] is one's own message
        peers = received[usable]
        if len(peers) == 0:
            return own.clone()

        def columns(v: Tensor) -> Tensor:  # [..., C, h + 1]: class c's weights and bias
            weight = v[..., w0:w0 + classes * h].unflatten(-1, (classes, h))
            bias = v[..., b0:b0 + classes] if b0 >= 0 else torch.zeros_like(v[..., :classes])
            return torch.cat([weight, bias.unsqueeze(-1)], dim=-1)

        def predict(cols: Tensor) -> Tensor:
            return (x @ cols[..., :h].transpose(-1, -2) + cols[..., None, :, h]).argmax(-1)

        chosen = prioritize(torch.linalg.vector_norm(peers - own, dim=-1), key,
                            self.prioritizer, self.exploit, self.explore, self.alpha, self.count)
        mine, theirs = columns(own), columns(peers[chosen])
        familiar = torch.unique(y)
        weights = class_weights(f1_per_class(predict(mine), y, familiar),
                                f1_per_class(predict(theirs), y, familiar), familiar, classes)
        merged = integrate(mine, theirs, weights)
        out = own.clone()
        out[w0:w0 + classes * h] = merged[:, :h].reshape(-1)
        if b0 >= 0:
            out[b0:b0 + classes] = merged[:, h]
        return out


__all__ = ["PRIORITIZERS", "Bristle", "bounded", "certainty", "class_weights", "f1_per_class",
           "frozen_features", "g", "integrate", "prioritize", "score", "validation_set"]
