"""The rule interface every algorithm is built from (see docs/rules.md).

A round is participation -> local update -> communication -> bookkeeping. Each stage is a rule
written for ONE node; the engine (:mod:`murmura.swarm.engine`) runs it for all nodes at once and
owns vectorization, randomness, byte counting and metrics:

* a **local rule** (:class:`LocalRule`) says how a node turns its gradient into a parameter update
  (SGD, momentum, SAM, a proximal term...). Its per-node state is ``[d]`` per node, stacked by the
  engine into ``[n, d]`` tensors laid out like the parameters;
* a **communication rule** (:class:`CommunicationRule`) says what a node receives and how it
  combines it. Linear rules return a :class:`Mix` (``x_i <- sum_j W[i, j] m_j``, executed as one
  sparse product) or an :class:`Average` (a server's weighted mean sent back, executed as one
  matrix-vector product); the engine counts the bytes from the plan's routing;
* a **participation rule** (:class:`Participation`) says who is awake this round;
* a **schedule** (:class:`Schedule`) says in which rounds nodes communicate, and whether a single
  global merge closes training.

An :class:`Algorithm` is one of each, plus how much local work a round does
(:class:`LocalWork`). Named algorithms are short compositions registered in ``ALGORITHMS``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import torch

from murmura.algorithms.plans import AfterLocal, NodeState, Plan, ServerRule, declared_state
from murmura.registry import Registry

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

    from murmura.swarm.params import ParamSpec
    from murmura.topology import Topology

Tensor = torch.Tensor
LossFn = Callable[..., Tensor]
GradFn = Callable[..., dict[str, Tensor]]

ALGORITHMS: Registry = Registry("algorithm")


@dataclass(frozen=True)
class RoundContext:
    """What a rule may know about the current round (all plain values: rules stay pure)."""

    round: int
    total_rounds: int
    seed: int
    num_nodes: int
    device: torch.device
    uploaders: int = 0  # in a ServerRule's update: how many clients uploaded this round


# ---------------------------------------------------------------------------------------------
# local rules


@runtime_checkable
class LocalRule(Protocol):
    """How one node updates its parameters from a minibatch gradient.

    ``state_names`` lists the rule's optimizer state (momentum): per-node vectors shaped like the
    parameters, zero at the start and reset with ``LocalWork.reset_state_each_round``. A rule may
    also declare ``node_state`` (a mapping of names to :class:`NodeState`), vectors it shares with
    the algorithm's other rules (FedProx's round-start model, SCAFFOLD's control variates); the
    engine hands ``update`` the slices of both. A rule with ``needs_key = True`` gets a per-node
    random key as the gradient function's last argument: ``(params, x, y[, w], key)``, derived
    from (seed, node, round, step), so its draws do not depend on blocking or sharding
    (:func:`murmura.swarm.random.key_normal` draws from it); ``needs_key = "round"`` gives one
    key for all of a round's steps, from (seed, node, round). A rule with ``gradient_state``
    (names of its own or declared node state) gets those vectors, as named tensors like
    ``params``, before the key: ``(params, x, y[, w], state[, key])`` (a variance-reduced step
    takes a gradient at the previous iterate too).
    """

    state_names: tuple[str, ...]

    def gradient(self, loss: LossFn) -> GradFn:
        """The per-node gradient function ``(params, x, y[, w]) -> grads`` (both dicts of named
        tensors). The default is ``torch.func.grad(loss)``; SAM-style rules wrap it."""
        ...

    def update(
        self,
        param: Tensor,
        grad: Tensor,
        state: Mapping[str, Tensor],
        active: Tensor | None,
    ) -> None:
        """Apply one step to ``param`` (in place, like ``torch.optim``).

        Every argument is the slice of one named parameter for a block of nodes, with the node
        axis first; ``grad`` and the state tensors are donated to the rule (it may overwrite
        them). ``active`` is ``None`` or a 0/1 float tensor broadcastable to ``param`` marking the
        nodes that take this step; the others must be left unchanged, state included.
        """
        ...


# ---------------------------------------------------------------------------------------------
# communication


@runtime_checkable
class CommunicationRule(Protocol):
    """What nodes exchange in a communicating round, as a plan the engine executes (or a
    sequence of plans, executed in order and each counted by its own routing). A rule may declare
    ``node_state`` like a local rule (CHOCO's public copies)."""

    needs_topology: bool

    def plan(
        self,
        ctx: RoundContext,
        participants: Tensor | None,
        topology: Topology | None,
        sizes: Tensor,
    ) -> Plan | Sequence[Plan]: ...


# ---------------------------------------------------------------------------------------------
# participation and schedules


@runtime_checkable
class Participation(Protocol):
    """Who takes part in a round. One with ``needs_losses = True`` is called as
    ``select(ctx, losses)`` with each client's mean training loss under its current model
    (float ``[n]``), to pick clients by difficulty (curriculum client selection)."""

    def select(self, ctx: RoundContext) -> Tensor | None:
        """Sorted int64 ids of this round's participants, or ``None`` for every node."""
        ...


Action = Literal["communicate", "merge", "skip"]


@runtime_checkable
class Schedule(Protocol):
    def action(self, round: int, total_rounds: int) -> Action:
        """'communicate' (run the algorithm's rule), 'merge' (exact global average) or 'skip'."""
        ...


# ---------------------------------------------------------------------------------------------
# algorithms


@runtime_checkable
class DataOrder(Protocol):
    """Which of its samples a node reads at each step of a round (curricula), for ONE node.

    ``scoring`` names the model whose per-sample losses rank the samples: ``"global"`` (the
    model the node starts the round from), ``"expert"`` (the flat parameters in ``expert``) or
    ``"none"``. ``positions(losses[L], size, first, total, key, *, steps, batch)`` returns int64
    ``[steps, batch]`` positions in the node's partition (``< size``); ``losses`` are +inf past
    ``size``, ``first`` is the node's global index of this round's first step and ``total`` its
    steps over the whole run (a pacing function's ``s`` and ``S``), ``key`` its key for the
    round. The engine vmaps it and keeps the shuffled batches' shapes and masks."""

    scoring: str

    def positions(self, losses: Tensor, size: Tensor, first: Tensor, total: Tensor,
                  key: Tensor, *, steps: int, batch: int) -> Tensor: ...


@dataclass(frozen=True)
class LocalWork:
    """How much local training a round does: ``steps`` minibatches, or ``epochs`` passes over
    each node's data (exactly one must be set). ``order``: which samples each step reads
    (:class:`DataOrder`, a curriculum); ``None``: shuffled epochs."""

    batch_size: int = 32
    steps: int | None = None
    epochs: float | None = None
    reset_state_each_round: bool = False
    order: DataOrder | None = None

    def __post_init__(self) -> None:
        if (self.steps is None) == (self.epochs is None):
            raise ValueError(
                "local work: set exactly one of local_steps or local_epochs "
                f"(got local_steps={self.steps!r}, local_epochs={self.epochs!r})"
            )


@dataclass(frozen=True)
class Algorithm:
    """A named composition of rules. ``needs_connected`` makes the engine refuse a
    disconnected static topology; ``merge_weighting`` says how a schedule's global merge
    averages: ``"uniform"`` (x̄ = mean of the nodes' models, as in the single-merge paper) or
    ``"samples"`` (weighted by each node's number of samples, as FedAvg's server does).
    ``server``: the server's rule for :class:`ServerStep` plans (swarm-level state; evaluation
    reads its model). ``after_local``: a per-node step after each round's local training;
    ``before_local``: one before it, for that round's participants (FedAMD draws each client's
    role there), called as ``(params, state, node, key) -> updates`` with a key from (seed,
    node, round)."""

    name: str
    local_rule: LocalRule
    local_work: LocalWork
    communication: CommunicationRule
    schedule: Schedule
    participation: Participation
    needs_connected: bool = False
    merge_weighting: str = "uniform"
    params: dict[str, Any] = field(default_factory=dict)
    server: ServerRule | None = None
    after_local: AfterLocal | None = None
    before_local: AfterLocal | None = None

    def __post_init__(self) -> None:
        if self.merge_weighting not in ("uniform", "samples"):
            raise ValueError(
                f"merge_weighting must be 'uniform' or 'samples', got {self.merge_weighting!r}"
            )

    @property
    def needs_topology(self) -> bool:
        return bool(self.communication.needs_topology)

    @property
    def node_state(self) -> dict[str, NodeState]:
        """Every per-node state vector the algorithm's rules declare, by name."""
        return declared_state(self.local_rule, self.communication, self.after_local,
                              self.before_local)


@dataclass(frozen=True)
class ModelLayout:
    """What a rule that works per layer may know about the swarm's model: the parameter layout
    of a flat row (``spec``) and the architecture (``model``, a CPU copy with the initial
    weights, which rules must not modify). The engine hands it to every rule, or field of a
    rule, that has ``bind(layout) -> rule`` (variance-corrected averaging rescales per weight
    tensor; DIMAT permutes hidden units layer by layer)."""

    spec: ParamSpec
    model: nn.Module


def bind_layout(rule: Any, layout: ModelLayout) -> Any:
    """``rule.bind(layout)`` if the rule has it, else the rule with each of its dataclass fields
    bound the same way (a gossip rule's aggregator); unchanged when nothing binds."""
    if rule is None:
        return None
    if hasattr(rule, "bind"):
        return rule.bind(layout)
    if dataclasses.is_dataclass(rule) and not isinstance(rule, type):
        changes = {}
        for f in dataclasses.fields(rule):
            value = getattr(rule, f.name)
            if hasattr(value, "bind") and not isinstance(value, type):
                changes[f.name] = value.bind(layout)
        if changes:
            return dataclasses.replace(rule, **changes)
    return rule


def bind_algorithm(algorithm: Algorithm, layout: ModelLayout) -> Algorithm:
    """The algorithm with every rule bound to the model's layout (see :class:`ModelLayout`)."""
    return dataclasses.replace(
        algorithm,
        local_rule=bind_layout(algorithm.local_rule, layout),
        communication=bind_layout(algorithm.communication, layout),
        after_local=bind_layout(algorithm.after_local, layout),
        before_local=bind_layout(algorithm.before_local, layout),
    )


def make_algorithm(name: str, **params: Any) -> Algorithm:
    """Build a registered algorithm by name; unknown parameters get a clear error."""
    from murmura.registry import build_component

    return build_component(ALGORITHMS, {"name": name, **params})
