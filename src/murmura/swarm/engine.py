"""The vectorized round engine: runs per-node rules for every node at once.

State: ``params`` ``[n, d]`` (one flat row per node), the local rule's state (same shape), a
byte ledger ``[n]``. A round is

    participation -> local update (vmapped grad over node blocks, in place)
                  -> communication (sparse W @ X, or a server's weighted average)
                  -> bookkeeping (bytes from the plan's routing, metrics)

No Python loop over nodes runs on the hot path: the loops below go over parameter tensors, node
blocks (bounded memory) and local steps.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from murmura.algorithms.base import (
    Algorithm,
    Average,
    Mix,
    Plan,
    RoundContext,
    make_algorithm,
)
from murmura.algorithms.rules import global_average_weights
from murmura.metrics.evaluation import evaluate_model, evaluate_nodes
from murmura.metrics.history import History
from murmura.models import build_model, check_functional
from murmura.swarm.batches import BatchSampler
from murmura.swarm.fused import fused_step_for, linear_stack, node_accuracy_shared_input
from murmura.swarm.memory import tune_allocator
from murmura.swarm.params import ParamSpec
from murmura.swarm.random import uniform

if TYPE_CHECKING:  # pragma: no cover
    from murmura.data import FederatedData
    from murmura.topology import Topology


@dataclass(frozen=True)
class Evaluation:
    """What to measure and how often. ``every=0`` turns evaluation off (benchmarks)."""

    every: int = 1
    node_samples: int = 500
    test_batch_size: int = 4096

    def __post_init__(self) -> None:
        if int(self.every) != self.every or self.every < 0:
            raise ValueError(f"evaluation every must be an integer >= 0, got {self.every!r}")
        if int(self.node_samples) != self.node_samples or self.node_samples < 0:
            raise ValueError(
                f"evaluation node_samples must be an integer >= 0, got {self.node_samples!r}"
            )
        if int(self.test_batch_size) != self.test_batch_size or self.test_batch_size < 1:
            raise ValueError(
                f"evaluation test_batch_size must be a positive integer, got "
                f"{self.test_batch_size!r}"
            )


_ROWS_PER_SUM = 256  # rows per float32 partial sum in evaluation reductions


class NonFiniteError(FloatingPointError):
    """A node's parameters became NaN or Inf."""


class Simulation:
    """A simulated swarm: data split over nodes, one model architecture, an algorithm, a topology.

    >>> from murmura.data import federate
    >>> from murmura.swarm.engine import Simulation
    >>> data = federate("digits", num_nodes=8, partition="dirichlet", alpha=0.5, seed=0)
    >>> sim = Simulation(data, model="mlp", model_kwargs={"hidden": [32]},
    ...                  algorithm="dsgd", algorithm_kwargs={"lr": 0.1, "local_steps": 5},
    ...                  topology="ring", seed=0)
    >>> history = sim.run(rounds=3)
    >>> len(history), 0.0 <= history.final["test_accuracy"] <= 1.0
    (3, True)
    """

    def __init__(
        self,
        data: FederatedData,
        model: str | nn.Module = "mlp",
        algorithm: str | Algorithm = "fedavg",
        topology: str | Topology | None = None,
        *,
        seed: int = 0,
        device: str | torch.device | None = None,
        model_kwargs: dict[str, Any] | None = None,
        algorithm_kwargs: dict[str, Any] | None = None,
        topology_kwargs: dict[str, Any] | None = None,
        evaluation: Evaluation | None = None,
        chunk_size: int | None = None,
        same_init: bool = True,
        fused: bool = True,
    ) -> None:
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self._large_blocks = self.device.type == "cpu" and tune_allocator()
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
        self.seed = seed
        if not hasattr(data, "index_table"):
            raise TypeError(
                f"data must be a FederatedData (a dataset split over nodes), got "
                f"{type(data).__name__}: build it with murmura.data.federate(dataset, num_nodes, "
                "partition=...)"
            )
        self.data = data.to(self.device)
        dataset = self.data.dataset
        self.num_nodes = int(self.data.num_nodes)
        self.evaluation = evaluation or Evaluation()

        if isinstance(algorithm, str):
            algorithm = make_algorithm(algorithm, **(algorithm_kwargs or {}))
        elif algorithm_kwargs:
            raise ValueError("algorithm_kwargs only apply when the algorithm is given by name")
        self.algorithm = algorithm
        how_many = getattr(algorithm.participation, "how_many", None)
        if how_many is not None:
            how_many(self.num_nodes)  # e.g. more clients per round than nodes: fail now

        # Initialization draws from torch's global CPU generator: seed it inside a fork so the
        # caller's random state is left as it was, and build on the CPU so a seed gives the same
        # model on every device. A user's module is copied, never modified.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            if isinstance(model, nn.Module):
                if model_kwargs:
                    raise ValueError("model_kwargs only apply when the model is given by name")
                check_functional(model)
                template = copy.deepcopy(model).cpu()
            else:
                template = build_model(
                    model, dataset.feature_shape, dataset.num_classes, **(model_kwargs or {})
                )
        template = template.to(torch.float32)
        self._cpu_template = template
        self.model = copy.deepcopy(template).to(self.device)
        self.spec = ParamSpec.from_module(self.model)
        self.buffers = {k: v.detach() for k, v in self.model.named_buffers()}
        self._activations_per_sample = self._probe_model()

        self.topology = self._make_topology(topology, topology_kwargs)

        # The nodes whose rows this process holds: all of them here; a contiguous block of
        # them in a sharded simulation (murmura.dist).
        self.first_node, self.last_node = self._node_range()
        self.params = self._initial_params(same_init)
        n, d = self.params.shape
        self.local_state = {
            name: torch.zeros(n, d, device=self.device) for name in algorithm.local_rule.state_names
        }
        self._mix_buffer: torch.Tensor | None = None
        self._workspace: dict[str, dict[str, torch.Tensor]] | None = None
        self._workspace_rows = 0
        self._batch_buffer: torch.Tensor | None = None
        self._eval_scratch: torch.Tensor | None = None
        self.bytes_sent = torch.zeros(n, dtype=torch.float64, device=self.device)
        self.bytes_received = torch.zeros(n, dtype=torch.float64, device=self.device)
        self.server_bytes_sent = 0.0
        self.message_bytes = d * self.params.element_size()

        work = algorithm.local_work
        self.sampler = BatchSampler(
            self.data.index_table,
            self.data.sizes,
            work.batch_size,
            seed=self.seed,
            steps=work.steps,
            epochs=work.epochs,
        )
        if chunk_size is not None and (int(chunk_size) != chunk_size or chunk_size < 1):
            raise ValueError(
                f"chunk_size must be a positive number of nodes per block, got {chunk_size!r} "
                "(or None to size blocks automatically)"
            )
        # SGD on a linear stack: backprop written out, gradients accumulated straight
        # into the state (murmura.swarm.fused); everything else goes through vmap(grad)
        self._fused = fused_step_for(self.model, self.spec, algorithm.local_rule) if fused else None
        # the same models evaluate every node on shared samples with one GEMM for the first layer
        self._stack = linear_stack(self.model, self.spec) if fused else None
        self.chunk_size = int(chunk_size) if chunk_size is not None else self._auto_chunk_size()
        self._grad_fn = vmap(algorithm.local_rule.gradient(self._loss))
        self._weighted_grad_fn = vmap(algorithm.local_rule.gradient(self._weighted_loss))
        self._node_eval_subset = self._pick_node_eval_subset()
        self.round = 0
        self.total_rounds: int | None = None
        self.history = History()
        self._wall = 0.0
        self._sent_before = self._received_before = 0.0
        # (state tensor, its version) when a server average made every row the same model
        self._identical: tuple[torch.Tensor, int] | None = None

    # ---------------------------------------------------------------- setup

    def _make_topology(self, topology: Any, kwargs: dict[str, Any] | None) -> Any:
        if topology is not None and not self.algorithm.needs_topology:
            raise ValueError(
                f"algorithm {self.algorithm.name!r} does not communicate over a graph (a server "
                "or nothing), so a topology would be ignored: leave topology out"
            )
        if topology is None:
            if self.algorithm.needs_topology:
                raise ValueError(
                    f"algorithm {self.algorithm.name!r} gossips over a graph: pass a topology, "
                    "e.g. topology='ring' (see murmura.topology.TOPOLOGIES)"
                )
            return None
        from murmura.topology import make_topology

        if isinstance(topology, str):
            topology = make_topology(
                topology,
                self.num_nodes,
                seed=self.seed,
                require_connected=self.algorithm.needs_connected,
                **(kwargs or {}),
            )
        elif kwargs:
            raise ValueError("topology_kwargs only apply when the topology is given by name")
        elif self.algorithm.needs_connected and not topology.time_varying:
            from murmura.topology import check_connected

            check_connected(topology)
        if topology.num_nodes != self.num_nodes:
            raise ValueError(
                f"the topology has {topology.num_nodes} nodes but the data is split over "
                f"{self.num_nodes}; build both for the same number of nodes"
            )
        return topology

    def _node_range(self) -> tuple[int, int]:
        return 0, self.num_nodes

    @property
    def local_nodes(self) -> int:
        """How many nodes' rows this process holds."""
        return self.last_node - self.first_node

    def _initial_params(self, same_init: bool) -> torch.Tensor:
        template = self._cpu_template
        if same_init:
            row = self.spec.flatten(template).to(self.device)
            return row.unsqueeze(0).repeat(self.local_nodes, 1)
        # One draw per node on the CPU, seeded by (seed, node): the same whatever the node
        # order or device.
        model = copy.deepcopy(template)
        rows = []
        with torch.random.fork_rng(devices=[]):
            for node in range(self.first_node, self.last_node):
                key = uniform(self.seed, "init", torch.tensor([node]), dtype=torch.float64)
                torch.manual_seed(int(key.item() * 2**62))
                for module in model.modules():
                    if hasattr(module, "reset_parameters"):
                        module.reset_parameters()
                rows.append(self.spec.flatten(model))
        return torch.stack(rows).to(self.device)

    def _probe_model(self) -> int:
        """Run the model on two training samples: a clear error now instead of a shape error
        deep inside a vmapped step, and the activation size per sample, for block sizing."""
        dataset = self.data.dataset
        sizes: list[int] = []

        def count(module: nn.Module, inputs: Any, output: Any) -> None:
            if isinstance(output, torch.Tensor):
                sizes.append(output.numel())

        leaves = [m for m in self.model.modules() if not list(m.children())]
        hooks = [m.register_forward_hook(count) for m in leaves]
        x = dataset.train_x[:2]
        try:
            with torch.no_grad():
                out = self.model(x)
        except Exception as error:  # any failure here is the model/data mismatch it reports
            raise ValueError(
                f"the model cannot run on this dataset's samples (shape "
                f"{tuple(dataset.feature_shape)}): {type(error).__name__}: {error}"
            ) from error
        finally:
            for hook in hooks:
                hook.remove()
        expected = (2, dataset.num_classes)
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != expected:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(
                f"the model must map a batch of samples to class scores of shape [batch, "
                f"{dataset.num_classes}] ({dataset.num_classes} classes in {dataset.name!r}); "
                f"it returned {shape} for a batch of 2"
            )
        return max(1, sum(sizes) // 2)

    def _memory_budget(self) -> int:
        """Bytes a block of nodes may use for its gradients, inputs and activations."""
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            return max(64 << 20, min(4 << 30, free // 8))
        # With the default allocator, blocks stay under glibc's 32 MB mmap ceiling so freed
        # buffers are reused instead of re-mapped (and zeroed) every step.
        return (512 << 20) if self._large_blocks else (32 << 20)

    def _auto_chunk_size(self) -> int:
        feature = math.prod(self.data.dataset.feature_shape)
        batch = self.algorithm.local_work.batch_size
        # parameters' gradient + update temporaries, the minibatch, and the activations that
        # backward keeps (about three tensors per activation: output, saved input, gradient)
        per_node = 4 * (2 * self.spec.dim + batch * (feature + 3 * self._activations_per_sample))
        return max(1, min(self.num_nodes, self._memory_budget() // per_node))

    def _eval_chunk_size(self, samples: int) -> int:
        per_node = 4 * (self.spec.dim + 2 * samples * self._activations_per_sample)
        return max(1, min(self.num_nodes, self._memory_budget() // per_node))

    def _pick_node_eval_subset(self) -> torch.Tensor | None:
        k = min(self.evaluation.node_samples, len(self.data.dataset.test_y))
        if k == 0:
            return None
        keys = uniform(self.seed, "node-eval", torch.arange(len(self.data.dataset.test_y)))
        return torch.sort(torch.topk(keys, k, largest=False).indices).values.to(self.device)

    # ---------------------------------------------------------------- the per-node loss

    def _loss(self, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor):
        out = functional_call(self.model, (params, self.buffers), (x,))
        return F.cross_entropy(out, y)

    def _weighted_loss(self, params, x, y, w):
        out = functional_call(self.model, (params, self.buffers), (x,))
        losses = F.cross_entropy(out, y, reduction="none")
        return (losses * w).sum() / w.sum().clamp_min(1.0)

    # ---------------------------------------------------------------- a round

    def context(self, total_rounds: int) -> RoundContext:
        return RoundContext(self.round, total_rounds, self.seed, self.num_nodes, self.device)

    def _order(self, participants: torch.Tensor | None) -> tuple[torch.Tensor, bool]:
        """The nodes to train, in block order, and whether blocks can be slices of the state.

        When nodes take different numbers of steps (epochs over unequal partitions) they are
        sorted by size, so a block stops as soon as its own nodes are done instead of computing
        masked steps for the largest node's epoch. Results do not depend on the order: every
        draw is keyed by node."""
        ids = participants
        if ids is None:
            ids = torch.arange(self.first_node, self.last_node, device=self.device)
        elif self.local_nodes != self.num_nodes:
            ids = ids[(ids >= self.first_node) & (ids < self.last_node)]
        if len(ids) == 0:
            return ids, False
        sizes = self.data.sizes[ids]
        uneven = self.sampler.epochs is not None and bool((sizes != sizes[0]).any())
        if uneven:
            ids = ids[torch.argsort(sizes, descending=True, stable=True)]
        return ids, participants is None and not uneven

    def _step_shapes(
        self, plan: Any, num_steps: int, block: int
    ) -> tuple[list[int], list[int], list[bool]]:
        """For each step of a block: how many nodes still train, how many batch columns the
        fullest of them needs, and whether some of them need fewer (masked samples).

        Nodes are sorted by their number of steps, so the nodes still training at a step are a
        prefix of the block: a step computes exactly those. Valid samples come first in every
        batch, so a step computes only the columns its fullest node needs, and masks nothing
        when every node has that many."""
        if plan.active is None:
            alive = [block] * num_steps
        else:
            steps_of = plan.active.sum(dim=1)
            still = steps_of.unsqueeze(1) > torch.arange(num_steps, device=steps_of.device)
            alive = still.sum(dim=0).tolist()
        width = [self.sampler.batch_size] * num_steps
        masked = [False] * num_steps
        if plan.weight is not None:
            counts = plan.weight.sum(dim=2)
            width = counts.max(dim=0).values.to(torch.int64).tolist()
            low = torch.where(counts > 0, counts, float("inf")).min(dim=0).values
            masked = (low < counts.max(dim=0).values).tolist()
        return alive, width, masked

    def train(
        self, participants: torch.Tensor | None, round_index: int, rows_identical: bool = False
    ) -> None:
        """Local update: every participant takes its local steps, block by block, in place.
        ``rows_identical``: every node holds the same parameters (after a server average), which
        the fused step uses for its first step."""
        if self.algorithm.local_work.reset_state_each_round:
            for buf in self.local_state.values():
                buf.zero_()
        ids, contiguous = self._order(participants)
        # The round's minibatches in one vectorized call (hashing is cheap per element, costly
        # per call): for every node at once when all take the same number of steps, else per
        # block (blocks of similar sizes, see _order).
        whole = None
        if len(ids) and (self.sampler.steps is not None
                         or bool((self.data.sizes[ids] == self.data.sizes[ids[0]]).all())):
            whole = self.sampler.batches(ids, round_index, 0, self.sampler.num_steps(ids))
        for start in range(0, len(ids), self.chunk_size):
            stop = min(start + self.chunk_size, len(ids))
            nodes = ids[start:stop]
            where: Any = slice(start, stop) if contiguous else nodes - self.first_node
            if whole is not None:
                plan = whole.rows(start, stop)
                num_steps = plan.index.shape[1]
            else:
                num_steps = self.sampler.num_steps(nodes)
                plan = self.sampler.batches(nodes, round_index, 0, num_steps)
            X = self.params[where]
            state = {k: v[where] for k, v in self.local_state.items()}
            alive, width, masked = self._step_shapes(plan, num_steps, stop - start)
            if self._fused is not None:
                self._train_block_fused(X, state, plan, num_steps, alive, width, masked,
                                        rows_identical)
            else:
                self._train_block_generic(X, state, plan, num_steps, alive, width, masked)
            if not contiguous:
                self.params[where] = X
                for k, v in state.items():
                    self.local_state[k][where] = v

    def _train_block_generic(
        self, X: torch.Tensor, state: dict, plan: Any, num_steps: int, alive: list,
        width: list, masked: list,
    ) -> None:
        """A block's local steps: the vmapped gradient, then the rule's update per parameter."""
        rule = self.algorithm.local_rule
        dataset = self.data.dataset
        feature = dataset.feature_shape
        train_x, train_y = dataset.train_x, dataset.train_y
        index_all, weight_all = plan.index, plan.weight
        views_for: dict[int, tuple[dict, dict]] = {}
        for step in range(num_steps):
            m = alive[step]
            if m not in views_for:
                views_for[m] = (
                    self.spec.views(X[:m]),
                    {k: self.spec.views(v[:m]) for k, v in state.items()},
                )
            param_views, state_views = views_for[m]
            index = index_all[:m, step, : width[step]]
            xb = self._gather(train_x, index).view(*index.shape, *feature)
            yb = train_y[index]
            if not masked[step]:
                grads = self._grad_fn(param_views, xb, yb)
                active = None
            else:
                weight = weight_all[:m, step, : width[step]]
                grads = self._weighted_grad_fn(param_views, xb, yb, weight)
                active = (weight.sum(dim=1) > 0).to(X.dtype)
            with torch.no_grad():
                for name in self.spec.names:
                    p = param_views[name]
                    a = None if active is None else active.view(-1, *(1,) * (p.dim() - 1))
                    rule.update(
                        p, grads[name], {k: v[name] for k, v in state_views.items()}, a
                    )

    def _gather(self, samples: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """``samples[index]`` (flattened index) into a buffer kept across steps: a fresh
        minibatch tensor every step costs page faults that cost more than the gather."""
        count = index.numel()
        size = count * math.prod(samples.shape[1:])
        if self._batch_buffer is None or self._batch_buffer.numel() < size:
            self._batch_buffer = torch.empty(size, dtype=samples.dtype, device=samples.device)
        out = self._batch_buffer[:size].view(count, *samples.shape[1:])
        return torch.index_select(samples, 0, index.reshape(-1), out=out)

    @torch.no_grad()
    def _train_block_fused(
        self, X: torch.Tensor, state: dict, plan: Any, num_steps: int, alive: list,
        width: list, masked: list, rows_identical: bool = False,
    ) -> None:
        """A block's local steps by the fused linear-SGD step. On the CPU a batched GEMM can
        accumulate in place only into contiguous weights: with 2 steps or more the block works
        on a contiguous copy of its parameters (and momentum), copied in and out once per round;
        with fewer, the copies would cost more than they save and the step updates the state's
        rows through a scratch block (see FusedLinearSGD._accumulate)."""
        dataset = self.data.dataset
        block = X.shape[0]
        rows = {"params": self.spec.views(X)}
        rows.update({k: self.spec.views(v) for k, v in state.items()})
        work = rows
        copied = self.device.type == "cpu" and num_steps >= 2
        if copied:
            if self._workspace is None or self._workspace_rows < block or set(
                self._workspace
            ) != set(rows):
                self._workspace = {
                    kind: {
                        name: torch.empty(block, *shape, device=self.device)
                        for name, shape in zip(self.spec.names, self.spec.shapes)
                    }
                    for kind in rows
                }
                self._workspace_rows = block
            work = {kind: {name: buf[:block] for name, buf in bufs.items()}
                    for kind, bufs in self._workspace.items()}
            for kind, bufs in work.items():
                for name, buf in bufs.items():
                    source = rows[kind][name]
                    # identical rows: read one and broadcast it, not the whole block
                    buf.copy_(source[:1].expand_as(buf) if rows_identical and kind == "params"
                              else source)
        for step in range(num_steps):
            m = alive[step]
            index = plan.index[:m, step, : width[step]]
            xb = self._gather(dataset.train_x, index)
            weight = plan.weight[:m, step, : width[step]] if masked[step] else None
            views = work if m == block else {
                kind: {name: buf[:m] for name, buf in bufs.items()} for kind, bufs in work.items()
            }
            self._fused(views["params"], xb.view(*index.shape, -1), dataset.train_y[index],
                        weight, views.get("momentum"), shared=rows_identical and step == 0)
        if copied:
            for kind, bufs in work.items():
                for name, buf in bufs.items():
                    rows[kind][name].copy_(buf)

    @torch.no_grad()
    def communicate(self, plan: Plan) -> None:
        """Execute a communication plan and count the bytes that crossed each link."""
        if plan is None:
            return
        size = self.message_bytes
        if isinstance(plan, Mix):
            mixing = plan.matrix
            if self._mix_buffer is None:
                self._mix_buffer = torch.empty_like(self.params)
            # addmm into a kept buffer: a fresh [n, d] result would cost page faults every round.
            # cuSPARSE scales the output by beta in a pass of its own, beta 0 included; zeroing
            # it first is cheaper there (8.6 against 10.7 ms at 100,000 x 7,850 on an H100).
            buf = self._mix_buffer
            if buf.device.type == "cuda":
                torch.addmm(buf.zero_(), mixing.matrix, self.params, out=buf)
            else:
                torch.addmm(buf, mixing.matrix, self.params, beta=0.0, out=buf)
            self.params, self._mix_buffer = self._mix_buffer, self.params
            self.bytes_sent += mixing.out_degree.to(torch.float64) * size
            self.bytes_received += mixing.in_degree.to(torch.float64) * size
        elif isinstance(plan, Average):
            weights = plan.weights.to(self.params.dtype)
            average = weights @ self.params
            self.params.copy_(average.expand_as(self.params))
            uploaders = plan.weights > 0
            receivers = uploaders if plan.receivers is None else plan.receivers
            self.bytes_sent += uploaders.to(torch.float64) * size
            self.bytes_received += receivers.to(torch.float64) * size
            self.server_bytes_sent += float(receivers.sum()) * size
        else:
            raise TypeError(f"unknown communication plan {type(plan).__name__}")

    def step(self, total_rounds: int) -> dict[str, Any]:
        """Run one round and return its record."""
        algo = self.algorithm
        ctx = self.context(total_rounds)
        t0 = time.perf_counter()
        participants = algo.participation.select(ctx)
        rows_identical = self._rows_identical()
        self._identical = None
        self.train(participants, self.round, rows_identical)
        t1 = time.perf_counter()
        sent_before, received_before = self._sent_before, self._received_before
        action = algo.schedule.action(self.round, total_rounds)
        if action == "communicate":
            plan = algo.communication.plan(ctx, participants, self.topology, self.data.sizes)
        elif action == "merge":
            weights = global_average_weights(self.data.sizes, None, algo.merge_weighting)
            plan = Average(weights)
        else:
            plan = None
        self.communicate(plan)
        # after a server average every node holds x̄: evaluation can skip summing the state
        if isinstance(plan, Average) and plan.receivers is None:
            self._identical = (self.params, self.params._version)
        t2 = time.perf_counter()
        record: dict[str, Any] = {"round": self.round, "communicated": action}
        if self._should_evaluate(total_rounds):
            record.update(self.evaluate())
        sent_total, received_total, sent_max, received_max = self._ledger_totals()
        n = self.num_nodes
        record.update(
            bytes_sent=sent_total - sent_before,
            bytes_received=received_total - received_before,
            bytes_sent_total=sent_total,
            bytes_sent_per_node_mean=sent_total / n,
            bytes_sent_per_node_max=sent_max,
            bytes_received_total=received_total,
            bytes_received_per_node_mean=received_total / n,
            bytes_received_per_node_max=received_max,
            server_bytes_sent_total=self.server_bytes_sent,
            train_seconds=t1 - t0,
            comm_seconds=t2 - t1,
        )
        round_seconds = time.perf_counter() - t0
        self._wall += round_seconds
        record.update(round_seconds=round_seconds, wall_seconds=self._wall)
        self.history.append(record)
        self._sent_before, self._received_before = sent_total, received_total
        self.round += 1
        return record

    def _ledger_totals(self) -> tuple[float, float, float, float]:
        """Bytes sent and received by all nodes, and by the busiest node, so far."""
        sums = self._all_sum(torch.stack([self.bytes_sent.sum(), self.bytes_received.sum()]))
        maxes = self._all_max(torch.stack([self.bytes_sent.max(), self.bytes_received.max()]))
        return float(sums[0]), float(sums[1]), float(maxes[0]), float(maxes[1])

    def run(
        self,
        rounds: int,
        callback: Callable[[dict[str, Any]], None] | None = None,
    ) -> History:
        """Run until ``rounds`` rounds in total have been done; returns the history.

        The total is part of the experiment (schedules such as a final merge or late
        communication are placed relative to it), so a simulation keeps the total of its first
        ``run``: calling ``run`` again with the same total resumes an interrupted run."""
        if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
            raise ValueError(f"rounds must be a positive integer, got {rounds!r}")
        if self.total_rounds is None:
            self.total_rounds = rounds
        elif rounds != self.total_rounds:
            raise ValueError(
                f"this simulation was started for {self.total_rounds} rounds (schedules are placed "
                f"relative to that total); build a new Simulation to run {rounds}"
            )
        while self.round < rounds:
            record = self.step(rounds)
            if callback is not None:
                callback(record)
        self._check_finite()
        return self.history

    # ---------------------------------------------------------------- checkpoints

    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Everything a later round depends on: tensors (the state, the local rule's state, the
        byte ledgers) and plain values (round counters, the history). Randomness needs no
        saving: every draw is a function of (seed, node, round, step)."""
        tensors = {"params": self.params, "bytes_sent": self.bytes_sent,
                   "bytes_received": self.bytes_received}
        tensors.update({f"local_state.{k}": v for k, v in self.local_state.items()})
        values = {
            "round": self.round,
            "total_rounds": self.total_rounds,
            "server_bytes_sent": self.server_bytes_sent,
            "wall_seconds": self._wall,
            "history": list(self.history.records),
        }
        return tensors, values

    def load_state_dict(self, tensors: dict[str, torch.Tensor], values: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` taken from a simulation built with the same settings."""
        expected = {"params", "bytes_sent", "bytes_received"}
        expected |= {f"local_state.{k}" for k in self.local_state}
        if set(tensors) != expected:
            raise ValueError(
                f"the checkpoint holds {sorted(tensors)} but this simulation needs "
                f"{sorted(expected)}: it was saved by a different algorithm"
            )
        if tuple(tensors["params"].shape) != tuple(self.params.shape):
            raise ValueError(
                f"the checkpoint's state is {tuple(tensors['params'].shape)} (nodes x parameters) "
                f"but this simulation's is {tuple(self.params.shape)}: different nodes or model"
            )
        with torch.no_grad():
            self.params.copy_(tensors["params"])
            self.bytes_sent.copy_(tensors["bytes_sent"])
            self.bytes_received.copy_(tensors["bytes_received"])
            for k, v in self.local_state.items():
                v.copy_(tensors[f"local_state.{k}"])
        self.round = int(values["round"])
        total = values.get("total_rounds")
        self.total_rounds = None if total is None else int(total)
        self.server_bytes_sent = float(values.get("server_bytes_sent", 0.0))
        self._wall = float(values.get("wall_seconds", 0.0))
        self.history = History(values.get("history", []))
        self._sent_before, self._received_before, _, _ = self._ledger_totals()
        self._identical = None

    # ---------------------------------------------------------------- measurement

    def _should_evaluate(self, total_rounds: int) -> bool:
        every = self.evaluation.every
        if every == 0:
            return False
        return (self.round + 1) % every == 0 or self.round == total_rounds - 1

    def summary(self) -> dict[str, Any]:
        """What was simulated: sizes, algorithm, topology and its spectral gap (static graphs;
        ``None`` when it cannot be computed, e.g. a time-varying topology)."""
        gap = None
        if self.topology is not None and not self.topology.time_varying:
            try:
                gap = float(self.topology.spectral_gap())
            except ValueError:
                gap = None
        return {
            "num_nodes": self.num_nodes,
            "model_parameters": self.spec.dim,
            "message_bytes": self.message_bytes,
            "algorithm": self.algorithm.name,
            "algorithm_params": {
                k: v for k, v in self.algorithm.params.items()
                if v is None or isinstance(v, (bool, int, float, str))
            },
            "topology": None if self.topology is None else self.topology.label,
            "spectral_gap": gap,
            "rounds_done": self.round,
            "chunk_size": self.chunk_size,
            "device": str(self.device),
        }

    @property
    def wall_seconds(self) -> float:
        """Wall time of every round run so far (evaluation included), across resumes."""
        return self._wall

    def average_params(self) -> torch.Tensor:
        """x̄ = (1/n) sum_i x_i: float32 sums over blocks of rows, accumulated in float64 (a
        float64 copy of the whole state, what ``sum(dtype=float64)`` makes, cost more than all
        the rest of an evaluation)."""
        total = torch.zeros(self.spec.dim, dtype=torch.float64, device=self.device)
        for start in range(0, self.local_nodes, _ROWS_PER_SUM):
            total += self.params[start : start + _ROWS_PER_SUM].sum(dim=0)
        return (self._all_sum(total) / self.num_nodes).to(self.params.dtype)

    def evaluate(self) -> dict[str, float]:
        dataset = self.data.dataset
        identical = self._rows_identical()
        mean = self.params[0].clone() if identical else self.average_params()
        acc, loss = evaluate_model(
            self.model,
            self.spec,
            mean,
            dataset.test_x,
            dataset.test_y,
            self.buffers,
            self.evaluation.test_batch_size,
        )
        result = {"test_accuracy": acc, "test_loss": loss}
        distance = 0.0 if identical else self._consensus_distance(mean)
        if not math.isfinite(distance):
            self._check_finite(last_round=self.round)
        result["consensus_distance"] = distance
        subset = self._node_eval_subset
        if subset is not None:
            x, y = dataset.test_x[subset], dataset.test_y[subset]
            if distance == 0.0:  # all nodes hold the same model: evaluate it once
                node_acc = evaluate_nodes(
                    self.model, self.spec, self.params[:1], x, y, self.buffers
                ).expand(self.local_nodes)
            else:
                node_acc = self._node_accuracies(x, y)
            total = self._all_sum(node_acc.sum(dtype=torch.float64).reshape(1))
            result.update(
                node_accuracy_mean=float(total) / self.num_nodes,
                node_accuracy_min=float(self._all_min(node_acc.min().reshape(1))),
                node_accuracy_max=float(self._all_max(node_acc.max().reshape(1))),
            )
        return result

    def _rows_identical(self) -> bool:
        """Whether every row is known to hold the same model: true after a server average, void
        as soon as the state is written in place or replaced (torch counts in-place writes in
        ``_version``), so a caller editing ``sim.params`` between rounds cannot mislead it."""
        return (self._identical is not None and self._identical[0] is self.params
                and self._identical[1] == self.params._version)

    def _node_accuracies(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Every local node's accuracy on the samples ``(x, y)``: ``[local_nodes]``."""
        shapes = dict(zip(self.spec.names, self.spec.shapes))
        if self._stack is None or shapes[self._stack[0].weight][0] > 64:
            # per-node products with a wide first layer already run near the GEMM rate
            chunk = self._eval_chunk_size(len(y))
            return evaluate_nodes(self.model, self.spec, self.params, x, y, self.buffers, chunk)
        # per node: a copy of its first layer, and each layer's outputs about three times over;
        # the shared input is not per node
        outputs = sum(shapes[layer.weight][0] for layer in self._stack)
        per_node = 4 * (self.spec.dim + 3 * len(y) * outputs)
        chunk = max(1, min(self.local_nodes, self._memory_budget() // per_node))
        first = shapes[self._stack[0].weight][0]
        if self._eval_scratch is None or self._eval_scratch.numel() < len(y) * chunk * first:
            self._eval_scratch = torch.empty(len(y) * chunk * first, device=self.device)
        blocks = (self.spec.views(self.params[start : start + chunk])
                  for start in range(0, self.local_nodes, chunk))
        return torch.cat([node_accuracy_shared_input(self._stack, views, x, y, self._eval_scratch)
                          for views in blocks])

    # Reductions over every node's row. One process holds them all, so these are identities;
    # a sharded simulation (murmura.dist) reduces across processes.

    def _all_sum(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def _all_min(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def _all_max(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def any_process(self, flag: bool) -> bool:
        """Whether ``flag`` holds in any process of the simulation (this one, unsharded)."""
        return bool(self._all_max(torch.tensor([float(flag)], device=self.device)) > 0)

    def _consensus_distance(self, mean: torch.Tensor) -> float:
        """(1/n) sum_i ||x_i - x̄||²: each row's squared distance in float32 (the differences
        come first, so nothing cancels), summed over rows in float64."""
        total = torch.zeros(1, dtype=torch.float64, device=self.device)
        for start in range(0, self.local_nodes, _ROWS_PER_SUM):
            block = (self.params[start : start + _ROWS_PER_SUM] - mean).square_()
            total += block.sum(dim=1).sum(dtype=torch.float64)
        return float(self._all_sum(total)) / self.num_nodes

    def check_finite(self) -> None:
        """Raise NonFiniteError naming the nodes whose parameters are NaN or Inf."""
        self._check_finite()

    def _check_finite(self, last_round: int | None = None) -> None:
        # Checked on evaluation rounds and at the end of a run, not every round: it reads the
        # whole state, and a NaN, once there, spreads to every model it is averaged into.
        finite = torch.isfinite(self.params).all(dim=1)
        bad_count = self._all_sum((~finite).sum(dtype=torch.float64).reshape(1))
        if float(bad_count) > 0:
            bad = (torch.nonzero(~finite).flatten()[:5] + self.first_node).tolist()
            when = self.round - 1 if last_round is None else last_round
            raise NonFiniteError(
                f"after round {when}: the parameters of nodes {bad} are NaN or Inf "
                "(checked on evaluation rounds and at the end of run); lower the learning rate "
                f"or check the data. Simulation.history keeps the {len(self.history)} rounds "
                "recorded before this check."
            )


__all__ = ["Evaluation", "NonFiniteError", "Simulation"]
