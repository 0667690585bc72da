"""The vectorized round engine: runs per-node rules for every node at once.

State: ``params`` ``[n, d]`` (one flat row per node), the local rule's state and the node state
the rules declare (same shape), a server's state (``[d]`` vectors), byte ledgers ``[n]``. A
round is

    participation -> local update (vmapped grad over node blocks, in place; swarm/local.py)
                  -> after-local step (vmapped)
                  -> communication (the rule's plans: sparse W @ X, a server's weighted
                     average, vmapped encoders / aggregators / combiners; swarm/communication.py)
                  -> bookkeeping (bytes from each plan's routing, metrics; swarm/measure.py)

This module holds the set-up, the round loop and checkpoints. No Python loop over nodes runs on
the hot path: the stages' loops go over parameter tensors, node blocks (bounded memory), local
steps and plans.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.func import vmap

from murmura.algorithms.base import (
    Algorithm,
    ModelLayout,
    RoundContext,
    bind_algorithm,
    make_algorithm,
)
from murmura.algorithms.plans import Average, ServerStep, declared_state
from murmura.algorithms.rules import global_average_weights
from murmura.metrics.history import History
from murmura.models import build_model, check_functional
from murmura.swarm.batches import BatchSampler
from murmura.swarm.communication import Communication
from murmura.swarm.fused import fused_step_for, linear_stack
from murmura.swarm.local import LocalTraining
from murmura.swarm.measure import Evaluation, Measurement, NonFiniteError
from murmura.swarm.memory import tune_allocator
from murmura.swarm.ordering import OrderedData
from murmura.swarm.params import ParamSpec
from murmura.swarm.random import hash_keys, stream_id, uniform
from murmura.tasks import Classification, Task, make_task

if TYPE_CHECKING:  # pragma: no cover
    from murmura.data import FederatedData
    from murmura.robust import Adversary
    from murmura.topology import Topology


def check_same_init(algorithm: Algorithm, same_init: bool) -> None:
    """A server sends every client the same model, so its clients cannot start apart."""
    if not same_init and getattr(algorithm.communication, "uses_server", False):
        raise ValueError(
            f"algorithm {algorithm.name!r} has a server, which starts every client from its own "
            "model: a different initial model per node (engine.same_init = false) would never "
            "have been sent; leave same_init true"
        )


class Simulation(LocalTraining, Communication, Measurement, OrderedData):
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
        adversary: Adversary | None = None,
        task: str | Task | None = None,
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
        # rules that work per layer (a merge that rescales or permutes) learn the layout here
        self.algorithm = algorithm = bind_algorithm(
            algorithm, ModelLayout(self.spec, copy.deepcopy(template)))
        # the loss and the scores: the dataset's task unless one is given
        self.task = make_task(task, dataset)
        self._activations_per_sample = self._probe_model()

        self.topology = self._make_topology(topology, topology_kwargs)

        # The nodes whose rows this process holds: all of them here; a contiguous block of
        # them in a sharded simulation (murmura.dist).
        self.first_node, self.last_node = self._node_range()
        check_same_init(algorithm, same_init)
        self.params = self._initial_params(same_init)
        n, d = self.params.shape
        self.local_state = {
            name: torch.zeros(n, d, device=self.device) for name in algorithm.local_rule.state_names
        }
        # per-node state the rules (and the task) declare, laid out like params; the server's
        self.node_state_specs = declared_state(algorithm.local_rule, algorithm.communication,
                                               algorithm.after_local, algorithm.before_local,
                                               self.task)
        self.node_state = {
            name: (self.params.clone() if spec.init == "params"
                   else torch.full((n, *spec.size(self.num_nodes, d)), spec.fill,
                                   device=self.device))
            for name, spec in self.node_state_specs.items()
        }
        self.server_state: dict[str, torch.Tensor] = (
            algorithm.server.init(self._initial_row()) if algorithm.server is not None else {}
        )
        self._check_aggregation()
        self.adversary = adversary
        self.malicious = self._place_adversary(adversary)
        self._bind_defence()
        self.robustness_warnings = self._check_neighbourhoods()
        # a data attack: the malicious nodes train on the attack's flipped labels
        self._flipped = (self.malicious if adversary is not None
                         and getattr(adversary.attack, "flips_labels", False) else None)
        self._plan_index = 0  # which plan of the round's sequence runs (keys its draws)
        self._round_total = 1
        self._neighbour_cache: dict[int, tuple] = {}
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
        fused = fused and type(self.task) is Classification  # its loss is written out there
        self._fused = fused_step_for(self.model, self.spec, algorithm.local_rule) if fused else None
        # the same models evaluate every node on shared samples with one GEMM for the first layer
        self._stack = linear_stack(self.model, self.spec) if fused else None
        self.chunk_size = int(chunk_size) if chunk_size is not None else self._auto_chunk_size()
        self._task_extras = bool(getattr(self.task, "needs_key", False)
                                 or getattr(self.task, "state_names", ())
                                 or getattr(self.task, "needs_label_counts", False)
                                 or getattr(self.task, "extra_batches", None))
        self._pool_samplers = self._make_pool_samplers()
        # each node's training samples per class, for tasks whose loss adjusts logits by them
        self.label_counts = self.data.label_counts().to(self.device) if getattr(
            self.task, "needs_label_counts", False) else None
        for name in getattr(algorithm.local_rule, "gradient_state", ()):
            if name not in self.node_state and name not in self.local_state:
                raise ValueError(
                    f"the local rule of {algorithm.name!r} reads state {name!r} in its gradient, "
                    f"which no rule declares (declared: "
                    f"{sorted(self.node_state) + sorted(self.local_state)})"
                )
        for name in (*getattr(algorithm.local_rule, "gradient_state", ()),
                     *getattr(self.task, "state_names", ())):
            if name in self.node_state and not self.node_state_specs[name].like_params:
                raise ValueError(
                    f"node state {name!r} is a table shaped {self.node_state_specs[name].shape}; "
                    "local rules and tasks read parameter-shaped state ('d',) only")
        for name in getattr(self.task, "state_names", ()):
            if name not in self.node_state:
                raise ValueError(
                    f"task {self.task.name!r} reads node state {name!r}, which no rule of "
                    f"algorithm {algorithm.name!r} declares (declared: {sorted(self.node_state)})"
                )
        self._grad_fn = vmap(algorithm.local_rule.gradient(
            self._loss_with_extras if self._task_extras else self._loss))
        self._weighted_grad_fn = vmap(algorithm.local_rule.gradient(
            self._weighted_loss_with_extras if self._task_extras else self._weighted_loss))
        self._node_eval_subset = self._pick_node_eval_subset()
        self._personal_table: tuple | None = None
        self._fewshot_tasks: list | None = None
        if self.evaluation.fewshot_shots and self.data.test_parts is None:
            raise ValueError("evaluation fewshot_shots needs each node's own held-out samples: "
                             "hold some out with data.holdout(fraction) (TOML: "
                             "data.local_test_fraction = 0.3)")
        self._check_order()
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

    def _make_pool_samplers(self) -> dict[str, BatchSampler]:
        """Per-step samplers of the sample sets a task reads besides its minibatch."""
        samplers = {}
        for name, count in (getattr(self.task, "extra_batches", None) or {}).items():
            if name not in self.data.pools:
                raise ValueError(
                    f"task {self.task.name!r} reads batches of {name!r}, which the data does not "
                    f"hold (pools: {sorted(self.data.pools) or 'none'}); add it with "
                    f"FederatedData.with_pool({name!r}, parts)"
                )
            table, sizes = self.data.pools[name]
            if bool((sizes < 1).any()):
                empty = torch.nonzero(sizes < 1).flatten()[:5].tolist()
                raise ValueError(f"pool {name!r}: nodes {empty} hold no samples in it; every "
                                 "node needs at least one")
            samplers[name] = BatchSampler(
                table, sizes, count, steps=self.sampler.num_steps(),
                seed=int(hash_keys(self.seed, stream_id(f"pool:{name}"))))
        return samplers

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
                # the CPU generator only: the model is built there, and seeding every device
                # too costs about 1 ms a node
                torch.default_generator.manual_seed(int(key.item() * 2**62))
                for module in model.modules():
                    if hasattr(module, "reset_parameters"):
                        module.reset_parameters()
                rows.append(self.spec.flatten(model))
        return torch.stack(rows).to(self.device)

    def _check_aggregation(self) -> None:
        """A robust rule that needs more messages than some receiver gets fails now."""
        from murmura.robust.aggregators import check_messages, fewest_messages

        how_many = getattr(self.algorithm.participation, "how_many", None)
        clients = how_many(self.num_nodes) if how_many is not None else self.num_nodes
        communication = self.algorithm.communication
        fewest = fewest_messages(communication, self.topology, clients)
        if fewest is not None:
            where = ("the node with the fewest neighbours gets" if communication.needs_topology
                     else "the server gets one upload per client of the round:")
            check_messages(communication.aggregator, fewest, where)

    def _initial_row(self) -> torch.Tensor:
        """The template model as one flat row (a server's initial model, on every process)."""
        return self.spec.flatten(self._cpu_template).to(self.device)

    def _place_adversary(self, adversary: Adversary | None) -> torch.Tensor | None:
        """The malicious nodes as a bool ``[n]`` mask (global), or ``None`` without adversary."""
        if adversary is None:
            return None
        return adversary.place(self.num_nodes, self.seed, self.topology).to(self.device)

    def _check_neighbourhoods(self) -> list[str]:
        """Honest graph nodes whose neighbourhood is too small for the robust rule to tolerate
        its Byzantine neighbours (fewer than 2f + 1 for a trimmed mean, 4f + 2 for Bulyan, ...;
        f is the rule's own or, without one, the node's count of malicious in-neighbours), or
        that have more malicious neighbours than the rule's f: warned once, and kept in the
        run's summary."""
        rule = getattr(self.algorithm.communication, "aggregator", None)
        if (rule is None or self.malicious is None or self.topology is None
                or self.topology.time_varying):
            return []
        from murmura.robust.graph_rules import minimum_neighbours

        # the graph's edges from the sparse matrix: a dense n x n copy would not fit at scale
        csr = self.topology.mixing_at(0).matrix.to_sparse_csr()
        crow, sender = csr.crow_indices().cpu(), csr.col_indices().cpu()
        receiver = torch.repeat_interleave(torch.arange(len(crow) - 1), crow.diff())
        keep = receiver != sender
        receiver, sender = receiver[keep], sender[keep]
        bad = self.malicious.cpu()
        n = self.num_nodes
        degree = torch.bincount(receiver, minlength=n)
        byzantine = torch.bincount(receiver[bad[sender]], minlength=n)
        tolerated = getattr(rule, "f", None)
        f = byzantine if tolerated is None else torch.full((n,), int(tolerated))
        need = torch.zeros(n, dtype=torch.int64)
        for value in f.unique().tolist():  # one lookup per distinct f, not per node
            wanted = minimum_neighbours(rule, int(value)) if value else None
            need[f == value] = 0 if wanted is None else wanted
        honest = ~bad
        short_nodes = torch.nonzero(honest & (degree < need)).flatten().tolist()
        short = [(i, int(degree[i]), int(need[i])) for i in short_nodes[:5]]
        over_nodes = ([] if tolerated is None else
                      torch.nonzero(honest & (byzantine > tolerated)).flatten().tolist())
        over = [(i, int(byzantine[i])) for i in over_nodes[:5]]
        notes = []
        name = type(rule).__name__
        if short_nodes:
            listed = ", ".join(f"{i} ({k} < {wanted})" for i, k, wanted in short)
            notes.append(f"{len(short_nodes)} honest node(s) have fewer neighbours than {name} "
                         f"needs to tolerate their Byzantine neighbours: {listed}")
        if over_nodes:
            listed = ", ".join(f"{i} ({b})" for i, b in over)
            notes.append(f"{len(over_nodes)} honest node(s) have more malicious neighbours than "
                         f"{name}'s f = {tolerated}: {listed}")
        for note in notes:
            warnings.warn(note, stacklevel=3)
        return notes

    def _bind_defence(self) -> None:
        """An attack that adapts to the defence (``bind_defence(aggregator, f)``: the optimal
        ALIE / IPM) learns the algorithm's aggregator (the plain mean without one) and how many
        malicious nodes there are."""
        attack = getattr(self.adversary, "attack", None)
        if attack is None or not hasattr(attack, "bind_defence"):
            return
        from murmura.robust.aggregators import Average

        defence = getattr(self.algorithm.communication, "aggregator", None) or Average()
        self.adversary = dataclasses.replace(
            self.adversary, attack=attack.bind_defence(defence, int(self.malicious.sum())))

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
        self.task.check_output(out, dataset, 2)
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

    # ---------------------------------------------------------------- a round

    def context(self, total_rounds: int) -> RoundContext:
        return RoundContext(self.round, total_rounds, self.seed, self.num_nodes, self.device)

    def step(self, total_rounds: int) -> dict[str, Any]:
        """Run one round and return its record."""
        algo = self.algorithm
        ctx = self.context(total_rounds)
        t0 = time.perf_counter()
        self._round_total = total_rounds
        if getattr(algo.participation, "needs_losses", False):
            participants = algo.participation.select(ctx, self.client_losses())
        else:
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
            # a robust algorithm merges robustly: the attackers' models are screened there too
            robust = getattr(algo.communication, "aggregator", None)
            plan = Average(weights) if robust is None else ServerStep(weights, aggregator=robust)
        else:
            plan = None
        self.communicate(plan)
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
        tensors.update({f"node_state.{k}": v for k, v in self.node_state.items()})
        tensors.update({f"server_state.{k}": v for k, v in self.server_state.items()})
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
        expected |= {f"node_state.{k}" for k in self.node_state}
        # a server's state may first appear with its first round (a rule without state of its
        # own gets the plain server then), so it is restored as saved
        saved_server = {k for k in tensors if k.startswith("server_state.")}
        if set(tensors) - saved_server != expected:
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
            for k, v in self.node_state.items():
                v.copy_(tensors[f"node_state.{k}"])
            self.server_state = {k.removeprefix("server_state."): tensors[k].to(self.device)
                                 .clone() for k in saved_server}
        self.round = int(values["round"])
        total = values.get("total_rounds")
        self.total_rounds = None if total is None else int(total)
        self.server_bytes_sent = float(values.get("server_bytes_sent", 0.0))
        self._wall = float(values.get("wall_seconds", 0.0))
        self.history = History(values.get("history", []))
        self._sent_before, self._received_before, _, _ = self._ledger_totals()
        self._identical = None

    # ---------------------------------------------------------------- measurement

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
            "task": self.task.name,
            "malicious_nodes": (None if self.malicious is None
                                else torch.nonzero(self.malicious).flatten().tolist()),
            "robustness_warnings": self.robustness_warnings,
        }

    @property
    def wall_seconds(self) -> float:
        """Wall time of every round run so far (evaluation included), across resumes."""
        return self._wall


__all__ = ["Evaluation", "NonFiniteError", "Simulation"]
