"""DADAO (Nabli and Oyallon, ICML 2023): decoupled accelerated decentralized asynchronous
optimization, and asynchronous gossip-DGD on the same two Poisson processes.

Local gradient steps and pairwise communications fire at the points of two independent Poisson
processes (specification ``specs/decentralized.md`` section 6, read from the official
``optimizers.py``): a gradient event picks a node uniformly (every node's clock ticks at rate
1, a total of ``n``), a communication event an edge uniformly (every edge's at ``λ_mix / |E|``,
a total of ``λ_mix = √(2 χ₁ χ₂)``). Between its events a node's six variables
``(x, x̃, y, ỹ, z, z̃)`` follow the linear ODE ``ṡ = M s`` (:meth:`DADAO.ode_matrix`), and at
an event:

* gradient at ``i``:  ``r = ∇f_i(x_i) − ν x_i − ỹ_i``; ``x_i −= γ r``, ``x̃_i −= γ̃ r``,
  ``ỹ_i += (δ + δ̃) r``;
* communication on ``(i, j)``: ``m = (y_i + z_i) − (y_j + z_j)``; ``z_i −= β m``,
  ``z̃_i −= β̃ m``, ``z_j += β m``, ``z̃_j += β̃ m``

with the code's constants (``ν = μ/2``, :class:`DADAO`). Each endpoint of a communication sends
``y + z`` (``d`` floats); gradient events send nothing. The baseline, :class:`GossipDGD`, is the
spec's "async gossip-DGD": ``x_i −= step ∇f_i(x_i)`` on a gradient event and
``x_i, x_j ← (x_i + x_j) / 2`` on a communication.

The ODE is integrated exactly: ``exp(M t) = V diag(e^{λ t}) V⁻¹`` from ``M``'s eigenvectors,
computed once (for every ``μ ≤ L``, ``M``'s spectrum is ``{0, 0, −α, −3α/2, −α/2 ± iω}`` and it
is diagonalizable; the double 0's eigenvectors are set exactly; the tests check the result
against ``torch.linalg.matrix_exp``, which costs several times more per event).

The rules (``flow``, ``gradient``, ``communicate``) are written for one node or one pair and
broadcast over a leading axis of nodes, so :class:`ClockedDecoupled` applies each to a whole
*wave* of events at once: the events of a window are grouped into waves of node-disjoint events
(an event goes one wave after the latest earlier event sharing a node with it), and since every
node's ODE is its own and an event touches only its nodes, the waves in order give exactly the
one-event-at-a-time result, whatever the window (the tests check it against ``window = 0``,
which runs one event per wave). The streams are keyed draws, ``(seed, "clock.dadao.gradient",
node, tick)`` and ``(seed, "clock.dadao.communication", edge, tick)``, so both methods run on
the same events when given the same seed.

>>> import networkx as nx
>>> from murmura.data import federate
>>> from murmura.tasks.convex import LogisticProblem
>>> problem = LogisticProblem.from_federated(federate("digits", num_nodes=4, seed=0), mu=0.5)
>>> run = ClockedDecoupled(problem, nx.cycle_graph(4), DADAO.for_graph(problem, nx.cycle_graph(4)))
>>> records = run.run(until=20.0, eval_every=10.0)
>>> [r["time"] for r in records], records[1]["distance"] < records[0]["distance"]
([10.0, 20.0], True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import networkx as nx
import numpy as np
import torch

from murmura.clock.draws import keyed_exponential
from murmura.clock.events import EventKind
from murmura.clock.log import EventLog

Tensor = torch.Tensor
FLOAT_BYTES = 4  # a float on the wire (specs/decentralized.md section 0.2)


@dataclass(frozen=True)
class GraphConstants:
    """DADAO's graph constants for uniform edge sampling, ``L_norm = Laplacian / |E|``:
    ``chi1 = 1 / λ₂(L_norm)``, ``chi2 = max_(i,j)∈E ½ (e_i − e_j)ᵀ L_norm⁺ (e_i − e_j)``
    (``chi2 ≤ chi1``), and ``comm_rate = √(2 chi1 chi2)``, the total communication rate."""

    chi1: float
    chi2: float
    edges: int

    @property
    def comm_rate(self) -> float:
        return math.sqrt(2.0 * self.chi1 * self.chi2)

    @classmethod
    def of(cls, graph: nx.Graph) -> GraphConstants:
        n = graph.number_of_nodes()
        if n < 2 or not nx.is_connected(graph):
            raise ValueError("DADAO needs a connected graph of at least 2 nodes")
        laplacian = nx.laplacian_matrix(graph, nodelist=range(n)).toarray().astype(np.float64)
        norm = laplacian / graph.number_of_edges()
        chi1 = 1.0 / float(np.linalg.eigvalsh(norm)[1])
        pinv = np.linalg.pinv(norm)
        chi2 = max(0.5 * (pinv[i, i] + pinv[j, j] - 2 * pinv[i, j]) for i, j in graph.edges)
        return cls(chi1, float(chi2), graph.number_of_edges())


class DADAO:
    """DADAO's per-node rule (module docstring) for ``μ``-strongly convex, ``L``-smooth local
    functions, with ``chi1_star = χ₁ / comm_rate``, the rate-weighted Laplacian's ``χ₁``."""

    slots = 6  # x, x̃, y, ỹ, z, z̃

    def __init__(self, mu: float, smoothness: float, chi1_star: float) -> None:
        for name, value in (("mu", mu), ("smoothness", smoothness), ("chi1_star", chi1_star)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{name} must be > 0, got {value!r}")
        if mu > smoothness:
            raise ValueError(f"mu ({mu}) cannot exceed the smoothness L ({smoothness})")
        nu, L = mu / 2.0, float(smoothness)
        self.nu = nu
        self.eta = self.eta_tilde = math.sqrt(nu / L) / 8
        self.alpha, self.alpha_tilde = math.sqrt(nu / L) / 4, math.sqrt(nu / L) / 8
        self.theta = math.sqrt(L / nu) / 2
        self.gamma, self.gamma_tilde = 1 / (4 * L), 1 / (4 * math.sqrt(L * nu))
        self.delta, self.delta_tilde = math.sqrt(nu / L) / 4, 1.0
        self.beta, self.beta_tilde = 0.5, 2 * chi1_star * math.sqrt(L / nu)
        values, vectors = torch.linalg.eig(self.ode_matrix())
        # 0 is a double eigenvalue, which LAPACK resolves into two parallel vectors: its
        # eigenspace is known exactly (x = x̃, y = ỹ, z = z̃, ν x + y + z = 0)
        zero = values.abs().argsort()[:2]
        values[zero] = 0
        vectors[:, zero] = torch.tensor([[1, 1, -nu, -nu, 0, 0], [0, 0, -1, -1, 1, 1]],
                                        dtype=torch.complex128).T
        self._eigenvalues, self._vectors = values, vectors
        self._inverse = torch.linalg.inv(vectors)

    @classmethod
    def for_graph(cls, problem: Any, graph: nx.Graph, comm_rate: float | None = None) -> DADAO:
        """The rule for ``problem`` (its ``mu`` and ``smoothness()``) on ``graph`` at a total
        communication rate ``comm_rate`` (default: the theory's ``√(2 χ₁ χ₂)``)."""
        constants = GraphConstants.of(graph)
        rate = constants.comm_rate if comm_rate is None else comm_rate
        return cls(problem.mu, problem.smoothness(), constants.chi1 / rate)

    def ode_matrix(self) -> Tensor:
        """``M`` of ``ṡ = M s`` for ``s = (x, x̃, y, ỹ, z, z̃)``."""
        m = torch.zeros(6, 6, dtype=torch.float64)
        m[0, 0], m[0, 1] = -self.eta, self.eta               # ẋ = η (x̃ − x)
        m[1, 0], m[1, 1] = self.eta_tilde, -self.eta_tilde   # x̃̇ = η̃ (x − x̃)
        m[2, 2], m[2, 3] = -self.alpha, self.alpha           # ẏ = α (ỹ − y)
        m[3, 1], m[3, 2], m[3, 4] = -self.theta * self.nu, -self.theta, -self.theta
        m[4, 4], m[4, 5] = -self.alpha, self.alpha           # ż = α (z̃ − z)
        m[5, 4], m[5, 5] = self.alpha_tilde, -self.alpha_tilde  # z̃̇ = α̃ (z − z̃)
        return m

    def propagator(self, dt: Tensor) -> Tensor:
        """``exp(M dt)`` for every ``dt`` (``[...] -> [..., 6, 6]``)."""
        scale = torch.exp(self._eigenvalues * dt.to(torch.complex128).unsqueeze(-1))
        return ((self._vectors * scale.unsqueeze(-2)) @ self._inverse).real.contiguous()

    def init(self, x0: Tensor) -> Tensor:
        """Every variable 0 but ``x = x0`` (``[n, d] -> [n, 6, d]``)."""
        state = torch.zeros(x0.shape[0], 6, x0.shape[1], dtype=torch.float64)
        state[:, 0] = x0
        return state

    def flow(self, state: Tensor, dt: Tensor) -> Tensor:
        """The ODE over ``dt`` simulated seconds."""
        return self.propagator(dt) @ state

    def gradient(self, state: Tensor, grad: Tensor) -> Tensor:
        """A gradient event, ``grad = ∇f_i(x_i)`` at the flowed state."""
        x, y_tilde = state[..., 0, :], state[..., 3, :]
        r = grad - self.nu * x - y_tilde
        jump = torch.stack([-self.gamma * r, -self.gamma_tilde * r, torch.zeros_like(r),
                            (self.delta + self.delta_tilde) * r, torch.zeros_like(r),
                            torch.zeros_like(r)], -2)
        return state + jump

    def communicate(self, mine: Tensor, theirs: Tensor) -> tuple[Tensor, Tensor]:
        """A communication on an edge: each side sends ``y + z``."""
        m = (mine[..., 2, :] + mine[..., 4, :]) - (theirs[..., 2, :] + theirs[..., 4, :])
        zero = torch.zeros_like(m)
        jump = torch.stack([zero, zero, zero, zero, -self.beta * m, -self.beta_tilde * m], -2)
        return mine + jump, theirs - jump

    @staticmethod
    def point(state: Tensor) -> Tensor:
        return state[..., 0, :]


class GossipDGD:
    """Asynchronous gossip-DGD: ``x −= step ∇f_i(x)`` at a gradient event, pairwise averaging
    at a communication (the spec's baseline uses ``step = 1 / L``)."""

    slots = 1

    def __init__(self, step: float) -> None:
        if isinstance(step, bool) or not isinstance(step, (int, float)) or not step > 0:
            raise ValueError(f"step must be > 0, got {step!r}")
        self.step = float(step)

    def init(self, x0: Tensor) -> Tensor:
        return x0.to(torch.float64).unsqueeze(1).clone()

    def flow(self, state: Tensor, dt: Tensor) -> Tensor:
        return state

    def gradient(self, state: Tensor, grad: Tensor) -> Tensor:
        return state - self.step * grad.unsqueeze(-2)

    def communicate(self, mine: Tensor, theirs: Tensor) -> tuple[Tensor, Tensor]:
        average = (mine + theirs) / 2
        return average, average.clone()

    @staticmethod
    def point(state: Tensor) -> Tensor:
        return state[..., 0, :]


class PoissonStreams:
    """The two processes' events, generated window by window: ``n`` gradient clocks at rate
    ``grad_rate`` each and one communication clock per edge at ``comm_rate / |E|``."""

    def __init__(self, seed: int, num_nodes: int, edges: Tensor, grad_rate: float,
                 comm_rate: float) -> None:
        self.seed, self.n, self.edges = seed, num_nodes, edges
        rates = torch.cat([torch.full((num_nodes,), float(grad_rate), dtype=torch.float64),
                           torch.full((len(edges),), comm_rate / len(edges),
                                      dtype=torch.float64)])
        self.rates, self.ticks = rates, torch.zeros(len(rates), dtype=torch.int64)
        self.next = self._gaps(torch.arange(len(rates)))

    def _gaps(self, clocks: Tensor) -> Tensor:
        grad = clocks < self.n
        gaps = torch.empty(len(clocks), dtype=torch.float64)
        for mask, purpose, key in ((grad, "clock.dadao.gradient", clocks),
                                   (~grad, "clock.dadao.communication", clocks - self.n)):
            if mask.any():
                gaps[mask] = keyed_exponential(self.seed, purpose, key[mask],
                                               self.ticks[clocks[mask]],
                                               rate=self.rates[clocks[mask]])
        return gaps

    def until(self, end: float) -> tuple[Tensor, Tensor]:
        """Every tick before ``end`` not yet handed out, in time order: ``(times, clocks)``;
        a clock below ``n`` is node ``clock``'s gradient, one above edge ``clock − n``."""
        times, clocks = [], []
        while True:
            due = (self.next < end).nonzero().squeeze(1)
            if not len(due):
                break
            times.append(self.next[due].clone())
            clocks.append(due)
            self.ticks[due] += 1
            self.next[due] += self._gaps(due)
        if not times:
            return torch.zeros(0, dtype=torch.float64), torch.zeros(0, dtype=torch.int64)
        t, c = torch.cat(times), torch.cat(clocks)
        order = torch.sort(t, stable=True).indices
        return t[order], c[order]


class ClockedDecoupled:
    """Runs ``rule`` (:class:`DADAO` or :class:`GossipDGD`) for ``problem`` (``gradient(nodes,
    x)``, ``num_nodes``, ``dim``; optionally ``optimum()``) on ``graph`` over the two Poisson
    processes: ``grad_rate`` gradients per node per simulated second, ``comm_rate`` edge
    communications per second in all (default: DADAO's ``√(2 χ₁ χ₂)`` of the graph).
    ``window``: simulated seconds of events taken at once (any width gives the same numbers;
    0 runs one event at a time). ``x0``: the nodes' starting points (default: every node at
    the same keyed standard normal point, seed ``seed``). ``log``: keep the event log."""

    def __init__(self, problem: Any, graph: nx.Graph, rule: Any, seed: int = 0,
                 grad_rate: float = 1.0, comm_rate: float | None = None, window: float = 1.0,
                 x0: Tensor | None = None, log: bool = True) -> None:
        n = problem.num_nodes
        if sorted(graph.nodes) != list(range(n)):
            raise ValueError(f"the graph's nodes must be 0..{n - 1}, one per problem node")
        constants = GraphConstants.of(graph)
        comm_rate = constants.comm_rate if comm_rate is None else comm_rate
        for name, value, low in (("grad_rate", grad_rate, 0), ("comm_rate", comm_rate, 0),
                                 ("window", window, None)):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (
                value > 0 if low is not None else value >= 0)
            if not ok:
                raise ValueError(f"{name} must be a number {'> 0' if low is not None else '>= 0'}"
                                 f", got {value!r}")
        self.problem, self.rule, self.window = problem, rule, float(window)
        self.graph_constants, self.comm_rate = constants, float(comm_rate)
        self.edges = torch.tensor(sorted(tuple(sorted(e)) for e in graph.edges),
                                  dtype=torch.int64)
        if x0 is None:
            from murmura.clock.draws import keyed_normal
            point = keyed_normal(seed, "clock.dadao.init", torch.arange(problem.dim))
            x0 = point.expand(n, -1)
        if tuple(x0.shape) != (n, problem.dim):
            raise ValueError(f"x0 must be [{n}, {problem.dim}], got {tuple(x0.shape)}")
        self.seed, self.x0 = seed, x0.to(torch.float64)
        self.state = rule.init(self.x0)
        self.last = torch.zeros(n, dtype=torch.float64)  # each node's last event time
        self.streams = PoissonStreams(seed, n, self.edges, grad_rate, self.comm_rate)
        self.now, self.gradients, self.communications = 0.0, 0, 0
        self.message_bytes = FLOAT_BYTES * problem.dim
        self.bytes_sent = torch.zeros(n, dtype=torch.float64)
        self.log = EventLog() if log else None
        self._optimum = problem.optimum() if hasattr(problem, "optimum") else None

    def points(self, at: float | None = None) -> Tensor:
        """Every node's ``x`` flowed to time ``at`` (default: now), without changing the state."""
        at = self.now if at is None else at
        flowed = self.rule.flow(self.state, at - self.last)
        return self.rule.point(flowed)

    def _advance(self, end: float) -> None:
        times, clocks = self.streams.until(end)
        if not len(times):
            return
        n, edges = self.problem.num_nodes, self.edges
        is_grad = clocks < n
        first = torch.where(is_grad, clocks, edges[(clocks - n).clamp(min=0), 0])
        second = torch.where(is_grad, -1, edges[(clocks - n).clamp(min=0), 1])
        waves = (torch.arange(len(times)) if self.window == 0
                 else _waves(first.tolist(), second.tolist()))
        if self.log is not None:  # in time order, whatever the waves: a communication is a
            rows = 1 + (~is_grad).to(torch.int64)  # row per endpoint, each sending y + z
            self.log.record(times.repeat_interleave(rows),
                            torch.where(is_grad, int(EventKind.GRADIENT_WAKE),
                                        int(EventKind.GOSSIP_WAKE)).repeat_interleave(rows),
                            torch.stack([first, second], 1).reshape(-1)[
                                torch.stack([torch.ones_like(is_grad), ~is_grad], 1).reshape(-1)],
                            nbytes=torch.where(is_grad, 0, self.message_bytes
                                               ).repeat_interleave(rows))
        order = torch.sort(waves, stable=True).indices
        counts = torch.bincount(waves).tolist()
        for positions in torch.split(order, counts):
            self._wave(times[positions], is_grad[positions], first[positions],
                       second[positions])

    def _wave(self, times: Tensor, is_grad: Tensor, first: Tensor, second: Tensor) -> None:
        """Node-disjoint events: flow their nodes to their times, then apply the jumps."""
        rule, state = self.rule, self.state
        comm = ~is_grad
        nodes = torch.cat([first, second[comm]])
        at = torch.cat([times, times[comm]])
        state[nodes] = rule.flow(state[nodes], at - self.last[nodes])
        self.last[nodes] = at
        g = first[is_grad]
        if len(g):
            grads = self.problem.gradient(g, rule.point(state[g]))
            state[g] = rule.gradient(state[g], grads)
        i, j = first[comm], second[comm]
        if len(i):
            state[i], state[j] = rule.communicate(state[i], state[j])
            self.bytes_sent.index_add_(0, torch.cat([i, j]), torch.full(
                (2 * len(i),), float(self.message_bytes), dtype=torch.float64))
        self.gradients += len(g)
        self.communications += len(i)

    def run(self, until: float, eval_every: float, callback: Any = None
            ) -> list[dict[str, Any]]:
        """Run until simulated time ``until``, evaluating every ``eval_every`` seconds:
        ``distance`` (mean ``‖x_i − x*‖²`` when the problem has an optimum), ``gradients``,
        ``communications``, ``bytes_sent_total``; ``callback(run) -> dict`` adds to each."""
        if not (until > 0 and eval_every > 0):
            raise ValueError(f"until and eval_every must be positive seconds, got {until!r}, "
                             f"{eval_every!r}")
        self.records: list[dict[str, Any]] = []
        next_eval = self.now + eval_every
        while next_eval <= until + 1e-12:
            width = self.window if self.window > 0 else next_eval - self.now
            end = min(self.now + width, next_eval)
            self._advance(end)
            self.now = end
            if end < next_eval:
                continue
            record: dict[str, Any] = {"time": next_eval, "gradients": self.gradients,
                                      "communications": self.communications,
                                      "bytes_sent_total": float(self.bytes_sent.sum())}
            if self._optimum is not None:
                gap = self.points() - self._optimum
                record["distance"] = float((gap * gap).sum(1).mean())
            if callback is not None:
                record.update(callback(self) or {})
            self.records.append(record)
            next_eval += eval_every
        return self.records


def _waves(first: list[int], second: list[int]) -> Tensor:
    """Each event's wave: one after the latest earlier event sharing a node with it (a node of
    ``-1`` is none)."""
    last: dict[int, int] = {}
    out = []
    for i, j in zip(first, second):
        wave = max(last.get(i, -1), last.get(j, -1)) + 1
        last[i] = wave
        if j >= 0:
            last[j] = wave
        out.append(wave)
    return torch.tensor(out, dtype=torch.int64)


__all__ = ["DADAO", "ClockedDecoupled", "GossipDGD", "GraphConstants", "PoissonStreams"]
