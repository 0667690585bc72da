"""Communication plans: what a communication rule asks the engine to execute and count.

A rule never moves tensors itself. It returns one plan, or a sequence of plans executed in
order (several gossip steps in a round, MoDeST's trainers-to-aggregators-to-trainers), and the
engine runs each for every node at once and counts every message from the plan's routing.

* :class:`Mix` and :class:`Average` are the linear fast paths: the node sends its model, the
  receiver takes the weighted sum (one sparse product, one matrix-vector product).
* :class:`Exchange` is the general graph step: a per-node :class:`Encoder` says what a node sends
  and how many bytes that is, the receiver gets the ``W``-weighted sum of its in-neighbours'
  messages (or, with an :class:`Aggregator`, a non-linear function of them), and a per-node
  :class:`Combiner` says what it does with what it got.
* :class:`ServerStep` is the star: clients upload an encoded message, the server aggregates it
  (weighted mean, or an :class:`Aggregator`), its :class:`ServerRule` updates the server's state
  and decides what it broadcasts.
* :class:`ShareRows` moves rows of per-peer tables between neighbours (a node gossiping what
  it knows about distant peers).

Every per-node function here is written for ONE node (``[d]`` vectors, a scalar ``key``); the
engine ``vmap``s it over blocks of nodes. The same function runs unvectorized in a real peer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

import torch

if TYPE_CHECKING:  # pragma: no cover
    from murmura.algorithms.base import RoundContext
    from murmura.topology import MixingMatrix

Tensor = torch.Tensor
Vectors = dict[str, Tensor]


# ---------------------------------------------------------------------------------------------
# per-node state that rules declare


@dataclass(frozen=True)
class NodeState:
    """Per-node state a rule declares under a name: by default a vector laid out like the
    parameters.

    ``init``: ``"zeros"``, ``"params"`` (a copy of the node's model), or a number every entry
    starts at. ``reset``: ``"never"``, or ``"round"`` (re-initialized at the start of every round,
    for that round's participants only: the model a client started its round from is
    ``NodeState("params", "round")``). ``shape``: each node's tensor, from ``"d"`` (the number of
    parameters), ``"n"`` (the number of nodes: one entry per peer the node may know of) and
    integers; ``("n", "d")`` is a table with one parameter-sized row per peer (SybilWall's update
    histories), ``("n",)`` one number per peer. Only parameter-shaped state reaches the local
    rule; tables are for communication rules. Rules of one algorithm that declare the same name
    share it (they must declare it alike).

    >>> NodeState(float("inf"), shape=("n",)).size(num_nodes=4, dim=10)
    (4,)
    """

    init: Literal["zeros", "params"] | float = "zeros"
    reset: Literal["never", "round"] = "never"
    shape: tuple[str | int, ...] = ("d",)

    def __post_init__(self) -> None:
        numeric = isinstance(self.init, (int, float)) and not isinstance(self.init, bool)
        if self.init not in ("zeros", "params") and not numeric:
            raise ValueError(f"node state init must be 'zeros', 'params' or a number, got "
                             f"{self.init!r}")
        if self.reset not in ("never", "round"):
            raise ValueError(f"node state reset must be 'never' or 'round', got {self.reset!r}")
        shape = tuple(self.shape)
        if any(not (e in ("n", "d") or (isinstance(e, int) and not isinstance(e, bool)
                                        and e > 0)) for e in shape):
            raise ValueError(f"node state shape entries must be 'n', 'd' or positive integers, "
                             f"got {self.shape!r}")
        if self.init == "params" and shape != ("d",):
            raise ValueError(f"node state init='params' copies the model, so its shape must be "
                             f"('d',), got {shape!r}")
        object.__setattr__(self, "shape", shape)

    @property
    def like_params(self) -> bool:
        """Whether it is one parameter-shaped vector per node (what local rules may read)."""
        return self.shape == ("d",)

    @property
    def fill(self) -> float:
        """The value a ``zeros`` or numeric ``init`` starts every entry at."""
        return 0.0 if self.init in ("zeros", "params") else float(self.init)

    def size(self, num_nodes: int, dim: int) -> tuple[int, ...]:
        """One node's tensor shape in a swarm of ``num_nodes`` with ``dim`` parameters."""
        return tuple(num_nodes if e == "n" else dim if e == "d" else e for e in self.shape)


def declared_state(*rules: object) -> dict[str, NodeState]:
    """The union of the ``node_state`` declarations of ``rules`` (``None`` entries skipped)."""
    merged: dict[str, NodeState] = {}
    for rule in rules:
        for name, spec in (getattr(rule, "node_state", None) or {}).items():
            if name == "params":
                raise ValueError(f"{type(rule).__name__}: 'params' is the model, not a state name")
            if name in merged and merged[name] != spec:
                raise ValueError(
                    f"node state {name!r} is declared as {merged[name]} and as {spec} "
                    f"(by {type(rule).__name__}); rules sharing a state must declare it alike"
                )
            merged[name] = spec
    return merged


# ---------------------------------------------------------------------------------------------
# per-node functions


@runtime_checkable
class Encoder(Protocol):
    """What one node sends: ``encode(params, state, key) -> (payload, updates)``.

    ``payload`` maps names to ``[d]`` tensors (what the receivers decode: a compressed vector is
    given back densely, its zeros included); ``updates`` are new values of the node's own state
    (CHOCO's public copy ``x̂ <- x̂ + q``). ``nbytes(d)`` is the size of one message *as sent*
    (top-k values and their indices, quantized bits, a seed and a scalar), which the engine
    multiplies by the links the plan routes it over."""

    node_state: Mapping[str, NodeState]

    def encode(self, params: Tensor, state: Vectors, key: Tensor) -> tuple[Vectors, Vectors]: ...

    def nbytes(self, dim: int) -> int: ...


@runtime_checkable
class Combiner(Protocol):
    """What one node does with what it received: ``combine(params, state, received) -> updates``,
    new values for ``"params"`` and/or state names (entries left out keep their value). A
    combiner with ``needs_key = True`` gets the node's key for the message as a fourth argument
    (CBO's noise), from (seed, node, round, plan) like every draw."""

    node_state: Mapping[str, NodeState]

    def combine(self, params: Tensor, state: Vectors, received: Vectors) -> Vectors: ...


@runtime_checkable
class Aggregator(Protocol):
    """A non-linear aggregation rule, ByzFL-style: ``f(own[d], received[k, d], mask[k]) -> [d]``.

    ``mask`` is 1 for the messages that are there (blocks pad neighbourhoods of different sizes);
    padded rows are zeros and must not influence the result. ``own`` is the receiver's own vector
    (a server's current model, or a node's own message), for self-centred rules. On a graph the
    engine puts the node's own message first in ``received`` (``include_self``), so rules that
    screen "the neighbourhood including oneself" (BRIDGE) need nothing more.

    Optional declarations, on a graph:

    * ``joint = True``: the rule reads every payload name at once (CBO's consensus weighs
      models by their scores): ``own`` and ``received`` are dicts of them and it returns a dict.
    * ``vectorized = False``: the engine calls it once per receiver instead of ``vmap`` (a
      solver on the CPU, such as DIMAT's assignment); with ``needs_data = m`` it also gets
      ``batch={"x", "y"}``, up to ``m`` of the receiver's own training samples drawn for the
      round (keyed by (seed, node, round), like every draw).
    * ``needs_round = True``: it gets the round number (after a key it asks for).
    * ``node_state`` (a mapping of names to :class:`NodeState`): the rule keeps per-node state.
      It then also gets ``ids[k]`` (the global ids of the rows of ``received``, its own first)
      and ``state`` (its slices of those names) as its last two arguments and returns
      ``(result, updates)``, new values of its state (SybilWall's per-peer histories)."""

    def __call__(self, own: Tensor, received: Tensor, mask: Tensor) -> Tensor: ...


@runtime_checkable
class Attack(Protocol):
    """What a malicious node sends instead of its honest message:
    ``attack(own[d], honest[k, d], mask[k], key) -> [d]``, where ``honest`` are the honest
    messages it can see this round (its in-neighbours' on a graph, every honest client's at a
    server: an omniscient attacker), padded and masked like an aggregator's input."""

    def __call__(self, own: Tensor, honest: Tensor, mask: Tensor, key: Tensor) -> Tensor: ...


@runtime_checkable
class AfterLocal(Protocol):
    """A per-node step after a round's local training: ``(params, state, node, steps) ->
    updates`` (SCAFFOLD's control-variate update). ``steps`` is how many local steps the node
    took this round; ``node`` its id."""

    node_state: Mapping[str, NodeState]

    def __call__(self, params: Tensor, state: Vectors, node: Tensor, steps: Tensor) -> Vectors:
        ...


@runtime_checkable
class ServerRule(Protocol):
    """A server's optimizer, Optax-style, on swarm-level state (``[d]`` tensors or scalars).

    ``init(params)`` gets the initial global model and returns the state; it must hold the
    server's model as ``"params"`` (evaluation reads it). ``update(state, aggregate, ctx)``
    gets the aggregate of the clients' payloads (same names) and returns ``(broadcast, state)``:
    ``broadcast`` maps ``"params"`` and node-state names to the ``[d]`` vectors every receiver
    stores (SCAFFOLD broadcasts its control variate too); the engine counts its bytes. A
    broadcast value may also be ``[n, d]``, one row per node: each node stores (and downloads)
    its own row (OCFL's cluster models).

    A rule with ``needs_uploads = True`` gets every upload instead of their mean: ``aggregate``
    maps each payload name to ``[m, ...]`` (the ``m`` uploads), ``"clients"`` to their ids and
    ``"weights"`` to the plan's weights of them (FedAMD's bullseye table, OCFL's clustering)."""

    def init(self, params: Tensor) -> Vectors: ...

    def update(self, state: Vectors, aggregate: Vectors, ctx: RoundContext
               ) -> tuple[Vectors, Vectors]: ...


# ---------------------------------------------------------------------------------------------
# the built-in encoder and combiner the fast paths stand for


@dataclass(frozen=True)
class SendModel:
    """The node sends its model, dense fp32: ``{"params": x}``, ``4 d`` bytes."""

    node_state: Mapping[str, NodeState] = field(default_factory=dict)

    def encode(self, params: Tensor, state: Vectors, key: Tensor) -> tuple[Vectors, Vectors]:
        return {"params": params}, {}

    def nbytes(self, dim: int) -> int:
        return 4 * dim


@dataclass(frozen=True)
class TakeReceived:
    """The node's model becomes what it received: ``x <- received["params"]``."""

    node_state: Mapping[str, NodeState] = field(default_factory=dict)

    def combine(self, params: Tensor, state: Vectors, received: Vectors) -> Vectors:
        return {"params": received["params"]}


@dataclass(frozen=True)
class ServerAverageRule:
    """The plain server: its model becomes the aggregate, which it broadcasts (FedAvg)."""

    def init(self, params: Tensor) -> Vectors:
        return {"params": params.clone()}

    def update(self, state: Vectors, aggregate: Vectors, ctx: RoundContext
               ) -> tuple[Vectors, Vectors]:
        return {"params": aggregate["params"]}, {"params": aggregate["params"]}


# ---------------------------------------------------------------------------------------------
# plans


@dataclass(frozen=True)
class Mix:
    """``x_i <- sum_j W[i, j] x_j``: node ``j`` sends its model to every ``i`` with
    ``W[i, j] != 0`` (i != j). The fast path of an :class:`Exchange` of models."""

    matrix: MixingMatrix


@dataclass(frozen=True)
class Average:
    """A server averages the models of nodes with nonzero ``weights`` and sends the average to the
    ``receivers`` (all nodes' rows are set to it; only receivers are counted as downloads). The
    fast path of a :class:`ServerStep` with the plain server."""

    weights: Tensor  # float [n]; zero for nodes that do not upload
    receivers: Tensor | None = None  # bool [n]; None: the uploaders
    hosts: Tensor | None = None  # int64 ids of the nodes that play the server; None: a server


@dataclass(frozen=True)
class Exchange:
    """One message from every node to its out-neighbours in ``matrix``, then a combine step.

    Linear (``aggregator=None``): node ``i`` receives ``r_i = sum_j W[i, j] m_j`` for each payload
    name (``W``'s diagonal included: a node "receives" its own message at no cost). Non-linear:
    ``r_i = aggregator(m_i, [m_i, m_j for j in N_in(i)], mask)`` on the single payload, with the
    neighbourhood read from ``W``'s nonzeros and its weights unused. Every node sends to every
    out-neighbour; the engine counts ``encoder.nbytes(d)`` per link, whatever the link's weight.
    ``routes``: when messages go where ``W`` gives them no weight (a receiver that discards what
    it gets still received it), a matrix whose nonzeros are the links actually used; it is
    counted instead of ``W``'s."""

    matrix: MixingMatrix
    encoder: Encoder = field(default_factory=SendModel)
    combiner: Combiner = field(default_factory=TakeReceived)
    aggregator: Aggregator | None = None
    routes: MixingMatrix | None = None


@dataclass(frozen=True)
class ServerStep:
    """Clients with nonzero ``weights`` upload ``encoder``'s payload; the server aggregates it (the
    weighted mean per payload name, or ``aggregator`` over the uploads with the server's model as
    ``own``), its rule updates the server state, and the ``receivers`` (default: the uploaders)
    download the broadcast. Every node's row is set to the broadcast (a node that was not a
    receiver would download it when next sampled); only receivers are counted.

    ``hosts`` (int64 node ids, here and in :class:`Average`): the server's part is played by
    these nodes (MoDeST's aggregators), each of which gets every upload and sends the result to
    every receiver; the bytes are theirs (``hosts x`` what one server would move), nothing is
    a server's, and a node sends nothing to itself."""

    weights: Tensor
    encoder: Encoder = field(default_factory=SendModel)
    aggregator: Aggregator | None = None
    receivers: Tensor | None = None
    hosts: Tensor | None = None


@dataclass(frozen=True)
class ShareRows:
    """Each node sends each out-neighbour in ``matrix`` one row of its per-peer tables (node
    state shaped ``("n", ...)``), chosen per link, and each receiver merges what it got:
    SybilWall's gossip of peer histories.

    * ``pick(state, sender, receiver, key) -> row`` runs for every link: ``state`` holds the
      sender's ``reads`` (its per-peer tables, e.g. distances), ``sender`` and ``receiver`` are
      node ids, ``key`` is keyed by (seed, sender, round, plan, receiver); it returns the peer
      (row) to send, or ``-1`` for nothing.
    * The engine sends row ``row`` of each table in ``sends``; ``merge(state, rows, peers,
      senders, mask) -> updates`` then runs for every receiver, with ``rows[name]`` ``[k, ...]``
      over its in-neighbour slots, ``peers`` the rows they sent, ``senders`` their ids and
      ``mask`` 1 where a row arrived. Its updates are new values of the receiver's state.
    * ``nbytes(d)`` is the size of one row as sent; only links that send something count.

    Malicious nodes send nothing in this plan (SybilWall's Sybils do not gossip)."""

    matrix: MixingMatrix
    pick: Callable[..., Tensor]
    merge: Callable[..., Vectors]
    reads: tuple[str, ...]
    sends: tuple[str, ...]
    nbytes: Callable[[int], int]


@dataclass(frozen=True)
class Control:
    """Control traffic that moves no tensor (pings and pongs, membership adverts): ``sent`` and
    ``received`` are float ``[n]`` bytes per node, added to the ledgers as they are."""

    sent: Tensor
    received: Tensor


Plan = Mix | Average | Exchange | ServerStep | ShareRows | Control | None
