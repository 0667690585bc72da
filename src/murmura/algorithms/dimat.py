"""DIMAT: Decentralized Iterative Merging-And-Training (Saadati et al., CVPR 2024,
arXiv 2404.08079; official code github.com/nsaadati/DIMAT; spec §4 of decentralized.md).

Every agent aligns each neighbour's hidden units to its own by *activation matching* before it
averages: run both models on the same inputs, correlate the hidden layer's activations
(units x units), solve ``linear_sum_assignment(corr, maximize=True)`` (Hungarian), permute the
neighbour's layer (rows of the weight, the bias) and the next layer's input columns, and go on
to the next layer with the permuted model. The aligned models are averaged with the mixing
weights ``pi`` and the agent trains locally; repeat::

    x_i <- sum_{j in N(i) + i} pi_ij P_j(x_j),    P_j = argmax_P corr(A_i, P A_j)  per layer

Here ``pi_ij = 1 / |N(i) + i|`` (uniform over the neighbourhood, the agent included): the paper's
two graphs, fully connected (1/N, ``Connectivity/5_1.json``) and the ring (1/3 for self, left
and right, ``5_2.json``), are exactly this. The topology's own weights are not read (on other
graphs, e.g. Metropolis weights on an irregular one, they would differ). Each merge costs
``deg x 4P`` bytes per agent (full models; the statistics are computed by the receiver).

Activations are read after the ReLU (and pooling), where the official VGG graph puts its merge
nodes (``graphs/vgg_graph.py``); the correlation is Pearson's over the samples (and, for a
channel, its positions), as ``compute_correlation``; the assignment is
``match_tensors_permute``'s. A unit that is constant on the samples (a ReLU that never fires)
correlates 0 with everything and is matched arbitrarily, as in the official code.

What the spec fixes, and where this implementation stands:

* **activation data** (spec caveat [code]): the official ``main.py`` computes the statistics on
  the *global* training loader. A decentralized agent has only its own data, so the faithful
  default is ``act_data="local"``: up to ``act_samples`` of the receiver's own training samples,
  which the engine draws per (seed, node, round) and hands to the merge (``needs_data``).
  ``act_data="global"`` is offered without reading the simulation: the rule loads the named
  dataset's training set itself (``act_dataset``) and uses one fixed random subset of
  ``act_samples`` of it for every agent and round.
* **BatchNorm reset**: murmura's models carry no BatchNorm running statistics (they are refused,
  see ``murmura.models``), so there is nothing to reset. GroupNorm normalizes contiguous groups
  of channels: a permutation that moved a channel to another group would change the function,
  so the assignment is block-restricted: whole groups are matched to whole groups (a Hungarian
  solve on the groups, scored by the best within-block matchings), channels within them.
* **optimizer**: Adam (lr 1e-3) with a fresh optimizer each round, as in the paper; murmura's
  only built-in local rule is SGD, so :class:`Adam` below is a per-node rule whose state is
  reset every round (``LocalWork(reset_state_each_round=True)``). The resets also happen in the
  pretraining rounds (each is a fresh Adam), where the paper runs one optimizer.
* **architectures**: nn.Sequential stacks (nested ones too) of Flatten, Linear, ReLU, Conv2d,
  GroupNorm and MaxPool2d, murmura's ``mlp`` and ``cnn``. The ZipIt graph machinery the
  official code uses for residual networks is not reproduced.
* **baselines**: ``merge="average"`` is WA (the plain pi-average) on the same code path and
  ``merge="none"`` local training only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn
from torch.func import functional_call

from murmura.algorithms.base import ALGORITHMS, Action, Algorithm, ModelLayout
from murmura.algorithms.named import _work
from murmura.algorithms.rules import Adam, FullParticipation, Gossip, Never

Tensor = torch.Tensor

SUPPORTED = (nn.Flatten, nn.Linear, nn.ReLU, nn.Conv2d, nn.GroupNorm, nn.MaxPool2d)
WEIGHTED = (nn.Linear, nn.Conv2d)
SUPPORTED_TEXT = ("murmura's 'mlp' and 'cnn': an nn.Sequential (nested ones allowed) of "
                  "Flatten, Linear, ReLU, Conv2d, GroupNorm and MaxPool2d")


# ---------------------------------------------------------------------------------------------
# the layer walk: which hidden layers to align, and what a permutation of each one touches


@dataclass(frozen=True)
class Hidden:
    """One hidden layer to align: ``body`` runs from its weighted layer (``producer``) to the
    point where its activations are read (after GroupNorm, ReLU, pooling), ``after`` the Flatten
    that may follow; ``norm`` names the GroupNorm on its units (``groups`` of them) and
    ``consumer`` the next weighted layer, whose inputs come ``spread`` per unit (1, or H·W
    features per channel after a Flatten, channel-major)."""

    body: tuple[tuple[str, nn.Module], ...]
    after: tuple[tuple[str, nn.Module], ...]
    producer: str
    norm: str | None
    groups: int
    consumer: str
    spread: int


def _leaves(model: nn.Module) -> list[tuple[str, nn.Module]]:
    for name, module in model.named_modules():
        if list(module.children()) and not isinstance(module, nn.Sequential):
            raise ValueError(
                f"dimat aligns {SUPPORTED_TEXT}; module {name or '(root)'!r} is a "
                f"{type(module).__name__}, whose forward order it cannot read"
            )
    leaves = [(n, m) for n, m in model.named_modules() if not list(m.children())]
    for name, module in leaves:
        if not isinstance(module, SUPPORTED):
            raise ValueError(f"dimat aligns {SUPPORTED_TEXT}; module {name!r} is a "
                             f"{type(module).__name__}")
        if isinstance(module, nn.Conv2d) and module.groups != 1:
            raise ValueError(f"dimat: module {name!r} is a grouped convolution, which it does "
                             "not align; use groups=1")
    return leaves


def layer_walk(model: nn.Module) -> tuple[tuple[tuple[str, nn.Module], ...], tuple[Hidden, ...]]:
    """The modules before the first weighted layer, and every hidden layer to align, in order.
    Anything outside :data:`SUPPORTED` is refused with a ValueError."""
    leaves = _leaves(model)
    weighted = [k for k, (_, m) in enumerate(leaves) if isinstance(m, WEIGHTED)]
    if len(weighted) < 2:
        raise ValueError("dimat needs a model with a hidden layer to align (two weighted "
                         f"layers or more), got {len(weighted)}; use {SUPPORTED_TEXT}")
    hidden = []
    for k, start in enumerate(weighted[:-1]):
        run = leaves[start:weighted[k + 1]]
        (producer, first), (consumer, nxt) = run[0], leaves[weighted[k + 1]]
        units = first.out_features if isinstance(first, nn.Linear) else first.out_channels
        flat = [n for n, m in run if isinstance(m, nn.Flatten)]
        norms = [(n, m) for n, m in run if isinstance(m, nn.GroupNorm)]
        if len(norms) > 1 or norms and norms[0][1].num_channels != units:
            raise ValueError(f"dimat: layer {producer!r} must be followed by at most one "
                             f"GroupNorm over its {units} units")
        conv_to_linear = isinstance(first, nn.Conv2d) and isinstance(nxt, nn.Linear)
        if flat != ([run[-1][0]] if conv_to_linear else []):
            raise ValueError(f"dimat: between {producer!r} and {consumer!r} a Flatten must come "
                             "last, from a convolution to a linear layer, and nowhere else")
        if isinstance(first, nn.Linear) and isinstance(nxt, nn.Conv2d):
            raise ValueError(f"dimat: a convolution {consumer!r} after a linear layer "
                             f"{producer!r} is not supported; use {SUPPORTED_TEXT}")
        fan_in = nxt.in_features if isinstance(nxt, nn.Linear) else nxt.in_channels
        if fan_in % units:
            raise ValueError(f"dimat: {consumer!r} reads {fan_in} inputs, not a multiple of "
                             f"{producer!r}'s {units} units")
        body = tuple(run[:-1]) if flat else tuple(run)
        hidden.append(Hidden(body, tuple(run[len(body):]), producer,
                             norms[0][0] if norms else None,
                             norms[0][1].num_groups if norms else 1, consumer, fan_in // units))
    return tuple(leaves[:weighted[0]]), tuple(hidden)


def forward_through(modules, views: Mapping[str, Tensor], h: Tensor) -> Tensor:
    """The modules' forward pass with the parameters in ``views`` (a flat row's named views)."""
    for name, module in modules:
        params = {k: views[f"{name}.{k}"] for k in ("weight", "bias") if f"{name}.{k}" in views}
        h = functional_call(module, params, (h,)) if params else module(h)
    return h


def unit_activations(h: Tensor) -> Tensor:
    """Activations as ``[observations, units]``: a channel's every position is an observation."""
    return h.transpose(0, 1).reshape(h.shape[1], -1).T


def correlation(a: Tensor, b: Tensor) -> np.ndarray:
    """``corr[u, v]`` = Pearson correlation of unit ``u`` of ``a`` with unit ``v`` of ``b``
    (``[observations, units]`` each; a constant unit correlates 0 with everything). Rounded to
    1e-9, so that ties (dead units) are broken the same whatever the order of the samples."""
    a, b = a.double(), b.double()
    a = (a - a.mean(0)) / (a.std(0, unbiased=False) + 1e-12)
    b = (b - b.mean(0)) / (b.std(0, unbiased=False) + 1e-12)
    return np.round((a.T @ b / len(a)).cpu().numpy(), 9)


def assign(corr: np.ndarray, groups: int = 1) -> np.ndarray:
    """``perm`` maximizing ``sum_u corr[u, perm[u]]``: unit ``u`` of one's own model is matched
    with unit ``perm[u]`` of the neighbour's. With ``groups`` > 1 (GroupNorm) whole contiguous
    groups are matched to whole groups and units within them, so that GroupNorm is preserved."""
    if groups == 1:
        return linear_sum_assignment(corr, maximize=True)[1]
    size = len(corr) // groups
    blocks = corr.reshape(groups, size, groups, size)
    inner = [[linear_sum_assignment(blocks[g, :, h], maximize=True)[1] for h in range(groups)]
             for g in range(groups)]
    score = np.array([[blocks[g, np.arange(size), h, inner[g][h]].sum() for h in range(groups)]
                      for g in range(groups)])
    outer = linear_sum_assignment(score, maximize=True)[1]
    return np.concatenate([outer[g] * size + inner[g][outer[g]] for g in range(groups)])


def permute(views: Mapping[str, Tensor], layer: Hidden, perm: Tensor) -> None:
    """Reorder ``layer``'s units in place: the producer's rows (weight, bias), the GroupNorm's
    affine parameters and the consumer's input columns (channel-major groups of ``spread``)."""
    for name in filter(None, (layer.producer, layer.norm)):
        for key in (f"{name}.weight", f"{name}.bias"):
            if key in views:
                views[key].copy_(views[key][perm])
    cols = (perm[:, None] * layer.spread + torch.arange(layer.spread, device=perm.device)
            ).reshape(-1)
    weight = views[f"{layer.consumer}.weight"]
    weight.copy_(weight[:, cols])


# ---------------------------------------------------------------------------------------------
# the merge: one receiver's rule


@dataclass(frozen=True)
class ActivationMerge:
    """DIMAT's merge for one agent: align every neighbour to its own model, layer by layer, by
    activation matching on ``batch`` (its own samples; ``proxy`` with ``act_data="global"``),
    then average the aligned models uniformly over the neighbourhood (the agent included).
    ``matching=False`` is WA, the plain average, on the same code path. Must be bound to the
    model's layout (the Simulation does it) before it aligns anything."""

    needs_data: int = 512
    matching: bool = True
    vectorized: bool = False
    proxy: Tensor | None = field(default=None, compare=False, repr=False)
    spec: Any = field(default=None, compare=False, repr=False)
    walk: Any = field(default=None, compare=False, repr=False)

    def bind(self, layout: ModelLayout) -> ActivationMerge:
        walk = layer_walk(layout.model) if self.matching else None
        if self.proxy is not None:
            try:
                layout.model(self.proxy[:2])
            except RuntimeError as error:
                raise ValueError(f"dimat: the act_dataset samples, shaped "
                                 f"{tuple(self.proxy.shape[1:])}, do not fit the model: use the "
                                 "simulation's dataset as act_dataset") from error
        return replace(self, spec=layout.spec, walk=walk)

    @torch.no_grad()
    def __call__(self, own: Tensor, received: Tensor, mask: Tensor,
                 batch: Mapping[str, Tensor] | None = None) -> Tensor:
        rows = received[mask > 0]  # the agent's own model first
        if self.matching and len(rows) > 1:
            x = self.inputs(batch, own.device)
            targets = self.activations(rows[0], x)  # the agent's own, layer by layer
            rows = torch.stack([rows[0], *(self.align(targets, r, x)[0] for r in rows[1:])])
        return rows.mean(dim=0)  # pi_ij = 1 / |N(i) + i|

    def inputs(self, batch: Mapping[str, Tensor] | None, device: torch.device) -> Tensor:
        """The samples the statistics are computed on: the agent's own, or the fixed proxy."""
        if self.walk is None:
            raise ValueError("dimat's merge is not bound to a model layout: let Simulation "
                             "bind it, or call merge.bind(ModelLayout(spec, model)) first")
        return (batch["x"] if self.proxy is None else self.proxy).to(device)

    def activations(self, row: Tensor, x: Tensor) -> list[Tensor]:
        """The model ``row``'s activations at every hidden layer, ``[observations, units]``."""
        views, (prefix, layers) = self.spec.views(row), self.walk
        h, acts = forward_through(prefix, views, x), []
        for layer in layers:
            out = forward_through(layer.body, views, h)
            acts.append(unit_activations(out))
            h = forward_through(layer.after, {}, out)
        return acts

    def align(self, targets: list[Tensor], row: Tensor, x: Tensor
              ) -> tuple[Tensor, list[Tensor]]:
        """A copy of the neighbour's ``row`` with its hidden units permuted onto the agent's
        (``targets``: its activations), and each layer's permutation."""
        row = row.clone()
        views, (prefix, layers) = self.spec.views(row), self.walk
        h, perms = forward_through(prefix, views, x), []
        for layer, target in zip(layers, targets):
            out = forward_through(layer.body, views, h)
            corr = correlation(target, unit_activations(out))
            perms.append(torch.as_tensor(assign(corr, layer.groups), device=row.device))
            permute(views, layer, perms[-1])
            h = forward_through(layer.after, {}, out[:, perms[-1]])  # the permuted model's
        return row, perms


# ---------------------------------------------------------------------------------------------
# local rule and schedule


@dataclass(frozen=True)
class AfterPretraining:
    """Train alone for the first ``pretrain_rounds`` rounds, then merge after every round's
    training: the first merge closes round ``pretrain_rounds - 1`` (so it follows that many
    rounds of training; the engine trains before it communicates, so 0 and 1 are the same).
    DIMAT's loop ends with training, so the last round does not merge unless ``merge_last``."""

    pretrain_rounds: int = 0
    merge_last: bool = False

    def action(self, round: int, total_rounds: int) -> Action:
        if round + 1 < self.pretrain_rounds or round == total_rounds - 1 and not self.merge_last:
            return "skip"
        return "communicate"


# ---------------------------------------------------------------------------------------------
# the named algorithm

MERGES = ("activations", "average", "none")


@ALGORITHMS.register("dimat", "DIMAT: align neighbours' hidden units by activation matching "
                     "(Hungarian), average, train (Adam)")
def dimat(
    lr: float = 1e-3,
    local_steps: int | None = None,
    local_epochs: float | None = None,
    batch_size: int = 16,
    act_samples: int = 512,
    act_data: str = "local",
    act_dataset: str | None = None,
    pretrain_rounds: int = 0,
    merge: str = "activations",
    merge_last: bool = False,
) -> Algorithm:
    """DIMAT (Saadati et al., 2024): Adam local training (fresh optimizer each round), then
    every agent merges its neighbourhood after aligning each neighbour's hidden units to its own
    by activation matching on ``act_samples`` samples (its own: ``act_data="local"``; a fixed
    subset of ``act_dataset``'s training set: ``"global"``, the official code's choice).
    ``merge``: ``"activations"`` (DIMAT), ``"average"`` (WA, the plain average) or ``"none"``
    (local training only). ``pretrain_rounds``: rounds of training before the first merge."""
    params = dict(locals())
    if merge not in MERGES:
        raise ValueError(f"dimat: merge must be one of {', '.join(MERGES)}, got {merge!r}")
    if act_data not in ("local", "global"):
        raise ValueError(f"dimat: act_data must be 'local' or 'global', got {act_data!r}")
    if isinstance(act_samples, bool) or int(act_samples) != act_samples or act_samples < 2:
        raise ValueError(f"dimat: act_samples must be an integer >= 2, got {act_samples!r}")
    if isinstance(pretrain_rounds, bool) or int(pretrain_rounds) != pretrain_rounds \
            or pretrain_rounds < 0:
        raise ValueError(f"dimat: pretrain_rounds must be an integer >= 0, got {pretrain_rounds!r}")
    proxy = None
    if act_data == "global":
        if act_dataset is None:
            raise ValueError("dimat: act_data='global' needs act_dataset, the dataset whose "
                             "training set gives the statistics (e.g. act_dataset='digits')")
        from murmura.data import load_dataset

        train_x = load_dataset(act_dataset).train_x
        pick = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(0))
        proxy = train_x[pick[: int(act_samples)]]
    elif act_dataset is not None:
        raise ValueError("dimat: act_dataset is only read with act_data='global'")
    matching = merge == "activations"
    aggregator = ActivationMerge(needs_data=int(act_samples) if matching and proxy is None else 0,
                                 matching=matching, proxy=proxy)
    work = _work(local_steps, local_epochs, batch_size)
    return Algorithm(
        name="dimat",
        local_rule=Adam(lr),
        local_work=replace(work, reset_state_each_round=True),  # a fresh Adam every round
        communication=Gossip(aggregator=aggregator),
        schedule=(Never() if merge == "none"
                  else AfterPretraining(int(pretrain_rounds), merge_last)),
        participation=FullParticipation(),
        needs_connected=True,
        params=params,
    )
