"""Decentralized baselines on the v2 contract: CHOCO-SGD and its compressors, gradient tracking,
plan sequences, and a robust rule on a graph under attack."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, replace

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from murmura.algorithms import Mix, make_algorithm
from murmura.algorithms.compressors import QSGD, Identity, Int8, RandomK, TopK, make_compressor
from murmura.algorithms.decentralized import (
    ChocoCombine,
    ChocoEncode,
    SendModelAndDrift,
    TrackCombine,
    TrackDrift,
    TrackedSGD,
)
from murmura.data import federate
from murmura.robust import Adversary
from murmura.swarm import Evaluation, Simulation
from murmura.swarm import communication as communication_module

NO_EVAL = Evaluation(every=0)
KEY = torch.tensor(7)


def digits(nodes: int = 8, seed: int = 0):
    return federate("digits", num_nodes=nodes, partition="dirichlet", alpha=0.5, seed=seed)


def sim_of(algorithm, topology="ring", nodes=8, topology_kwargs=None, **kwargs):
    kwargs.setdefault("lr", 0.1)
    kwargs.setdefault("local_steps", 2)
    options = {k: kwargs.pop(k) for k in ("chunk_size", "same_init", "evaluation")
               if k in kwargs}
    options.setdefault("evaluation", NO_EVAL)
    return Simulation(digits(nodes), "logreg", algorithm, topology,
                      topology_kwargs=topology_kwargs, algorithm_kwargs=kwargs, **options)


# ---------------------------------------------------------------------------------------------
# CHOCO-SGD


def test_choco_with_identity_and_gamma_one_is_dsgd():
    choco = sim_of("choco", gamma=1.0, same_init=False)
    dsgd = sim_of("dsgd", same_init=False)
    for _ in range(3):
        choco.step(3)
        dsgd.step(3)
    torch.testing.assert_close(choco.params, dsgd.params, atol=1e-6, rtol=1e-5)
    # identity messages are dense fp32 models: D-SGD's bytes on every link
    assert torch.equal(choco.bytes_sent, dsgd.bytes_sent)
    assert torch.equal(choco.bytes_received, dsgd.bytes_received)


def test_choco_with_gamma_below_one_is_not_dsgd():
    choco = sim_of("choco", gamma=0.5)
    dsgd = sim_of("dsgd")
    choco.step(1)
    dsgd.step(1)
    assert not torch.allclose(choco.params, dsgd.params, atol=1e-4)


def test_choco_encode_and_combine_by_hand():
    params, public = torch.tensor([1.0, -4.0, 0.5, 2.0]), torch.tensor([0.5, 0.0, 0.5, 1.0])
    payload, updates = ChocoEncode(TopK(0.5)).encode(params, {"public": public}, KEY)
    # q = top_2(x - x̂) = top_2([0.5, -4, 0, 1]) = [0, -4, 0, 1]
    assert payload["public"].tolist() == [0.5, -4.0, 0.5, 2.0]
    assert torch.equal(updates["public"], payload["public"])
    out = ChocoCombine(gamma=0.5).combine(params, {"public": public},
                                          {"public": torch.tensor([1.0, 1.0, 1.0, 1.0])})
    # x + gamma (sum_j W_ij x̂_j - x̂_i)
    assert out["params"].tolist() == [1.25, -3.5, 0.75, 2.0]


@pytest.mark.parametrize("compressor", [
    {"name": "top_k", "ratio": 0.1},
    {"name": "random_k", "ratio": 0.05},
    {"name": "qsgd", "levels": 4},
    {"name": "int8"},
    {"name": "identity"},
])
def test_choco_counts_the_compressed_message_on_every_link(compressor):
    sim = sim_of("choco", "erdos_renyi", topology_kwargs={"p": 0.4}, compressor=compressor)
    mixing = sim.topology.mixing_at(0)
    assert len(set(mixing.out_degree.tolist())) > 1  # unequal degrees
    d = sim.spec.dim
    size = make_compressor(compressor).nbytes(d)
    if compressor["name"] == "top_k":
        assert size == 8 * math.ceil(0.1 * d)  # fp32 values and int32 indices
    links = int(mixing.out_degree.sum())
    for _round_index in range(2):
        record = sim.step(2)
        assert record["bytes_sent"] == links * size
        assert record["bytes_received"] == links * size
    assert torch.equal(sim.bytes_sent, 2 * mixing.out_degree.to(torch.float64) * size)
    assert torch.equal(sim.bytes_received, 2 * mixing.in_degree.to(torch.float64) * size)


def test_random_draws_do_not_depend_on_blocking(monkeypatch):
    """Local blocks (chunk_size) and the communication stage's vmapped blocks change nothing:
    every node's random_k mask is drawn from its own key."""
    kwargs = dict(compressor={"name": "random_k", "ratio": 0.2}, gamma=0.6, nodes=10)
    default = sim_of("choco", **kwargs)
    chunked = sim_of("choco", chunk_size=3, **kwargs)
    assert (default.chunk_size, chunked.chunk_size) == (10, 3)
    default.run(3)
    chunked.run(3)
    # blocks of another size round the local GEMMs differently (1e-8); another mask would move
    # the models by far more than the tolerance (see the seed check below)
    torch.testing.assert_close(chunked.params, default.params, atol=1e-6, rtol=0)
    torch.testing.assert_close(chunked.node_state["public"], default.node_state["public"],
                               atol=1e-6, rtol=0)
    # the control: keys by a node's position (here: shifted by one) instead of its id
    original = Simulation._message_keys

    def shifted(self):
        keys = original(self)
        return torch.roll(keys, 1)

    monkeypatch.setattr(Simulation, "_message_keys", shifted)
    misdrawn = sim_of("choco", **kwargs)
    misdrawn.run(3)
    assert float((misdrawn.params - default.params).abs().max()) > 1e-3
    monkeypatch.undo()
    # the communication stage in blocks of one node: the same draws, bit for bit
    monkeypatch.setattr(communication_module, "_BLOCK_BYTES", 1)
    blocked = sim_of("choco", **kwargs)
    assert blocked._comm_block(4) == 1
    blocked.run(3)
    assert torch.equal(default.params, blocked.params)
    assert torch.equal(default.node_state["public"], blocked.node_state["public"])


# ---------------------------------------------------------------------------------------------
# compressors by hand


def test_top_k_keeps_the_largest_magnitudes():
    v = torch.tensor([0.5, -3.0, 0.1, 2.0, -0.2])
    assert TopK(0.4)(v, KEY).tolist() == [0.0, -3.0, 0.0, 2.0, 0.0]
    assert TopK(0.4).nbytes(5) == 16
    assert TopK(0.01)(v, KEY).tolist() == [0.0, -3.0, 0.0, 0.0, 0.0]  # at least one entry
    assert TopK(0.01).nbytes(5) == 8
    assert TopK(1.0)(v, KEY).tolist() == v.tolist()


def test_int8_rounds_to_127_levels_of_the_largest_magnitude():
    v = torch.tensor([2.0, -0.9, 0.3, 0.01])
    scale = 2.0 / 127  # v / scale = [127, -57.15, 19.05, 0.635]
    expected = torch.tensor([127.0, -57.0, 19.0, 1.0]) * scale
    torch.testing.assert_close(Int8()(v, KEY), expected, atol=1e-7, rtol=1e-6)
    assert Int8().nbytes(4) == 8
    assert Int8()(torch.zeros(3), KEY).tolist() == [0.0, 0.0, 0.0]


def test_qsgd_is_unbiased_after_rescaling_and_on_its_grid():
    s, v = 4, torch.tensor([0.3, -1.2, 0.05, 0.0, 2.0, -0.4])
    d, norm = len(v), float(torch.linalg.vector_norm(v))
    tau = 1 + min(d / s**2, math.sqrt(d) / s)
    keys = torch.arange(4000)
    draws = torch.vmap(lambda key: QSGD(s)(v, key))(keys)
    torch.testing.assert_close(draws.mean(0), v / tau, atol=0.02 * norm, rtol=0)
    levels = draws * s * tau / norm
    torch.testing.assert_close(levels, levels.round(), atol=1e-4, rtol=0)
    low = torch.floor(s * v.abs() / norm)
    assert bool(((levels.abs().round() == low) | (levels.abs().round() == low + 1)).all())
    assert bool((torch.sign(draws) * torch.sign(v) >= 0).all())
    assert not torch.equal(draws[0], draws[1])  # stochastic rounding, per key
    assert torch.equal(QSGD(s)(v, KEY), QSGD(s)(v, KEY))
    assert QSGD(s)(torch.zeros(4), KEY).tolist() == [0.0] * 4
    assert QSGD(16).nbytes(10) == math.ceil(10 * 6 / 8) + 4  # sign + 5 bits, and the norm


def test_random_k_keeps_exactly_k_entries_drawn_from_the_key():
    v = torch.arange(1.0, 11.0)  # no zeros
    out = RandomK(0.3)(v, KEY)
    kept = out != 0
    assert int(kept.sum()) == 3
    assert torch.equal(out[kept], v[kept])
    assert torch.equal(out, RandomK(0.3)(v, KEY))
    assert RandomK(0.3).nbytes(10) == 3 * 4 + 8
    masks = torch.vmap(lambda key: RandomK(0.3)(v, key) != 0)(torch.arange(2000))
    assert bool((masks.sum(1) == 3).all())
    assert len({tuple(m.tolist()) for m in masks[:20]}) > 10
    torch.testing.assert_close(masks.float().mean(0), torch.full((10,), 0.3), atol=0.05, rtol=0)


def test_identity_and_compressor_errors():
    v = torch.tensor([1.0, -2.0])
    assert torch.equal(Identity()(v, KEY), v) and Identity().nbytes(3) == 12
    assert isinstance(make_compressor(None), Identity)
    with pytest.raises(KeyError, match="Did you mean 'top_k'"):
        make_compressor("top_kk")
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match=r"ratio must lie in \(0, 1\]"):
            make_compressor({"name": "top_k", "ratio": bad})
    with pytest.raises(ValueError, match="levels must be a positive integer"):
        make_compressor({"name": "qsgd", "levels": 0})
    with pytest.raises(ValueError, match=r"gamma .* must lie in \(0, 1\]"):
        make_algorithm("choco", gamma=0.0)


# ---------------------------------------------------------------------------------------------
# gradient tracking


def test_tracking_rules_by_hand():
    x_start, x = torch.tensor([1.0, 2.0]), torch.tensor([0.4, 2.6])
    state = {"anchor": x_start, "correction": torch.tensor([0.1, -0.1]),
             "drift": torch.zeros(2)}
    param, grad = x_start.clone(), torch.tensor([0.5, -0.5])
    TrackedSGD(0.2).update(param, grad, state, None)  # x - lr (g + c)
    torch.testing.assert_close(param, torch.tensor([0.88, 2.12]))
    drift = TrackDrift(lr=0.2)(x, state, torch.tensor(0), torch.tensor(3))["drift"]
    torch.testing.assert_close(drift, torch.tensor([-1.0, 1.0]))  # (x - x_start) / (K lr)
    state["drift"] = drift
    payload, _ = SendModelAndDrift().encode(x, state, KEY)
    assert set(payload) == {"params", "drift"} and SendModelAndDrift().nbytes(5) == 40
    received = {"params": torch.tensor([9.0, 9.0]), "drift": torch.tensor([-0.25, 0.5])}
    out = TrackCombine().combine(x, state, received)
    assert out["params"].tolist() == [9.0, 9.0]  # x <- sum_j W_ij x_j
    # c <- c + d - sum_j W_ij d_j
    torch.testing.assert_close(out["correction"], torch.tensor([-0.65, 0.4]))


def test_gradient_tracking_with_one_local_step_is_gradient_tracking_by_hand():
    """With one local step per round the rules compute DIGing's tracker with the step taken
    before mixing (Koloskova et al., 2021's form; K-GT with K = 1):
    ``x_{t+1} = W (x_t - lr y_t)``, ``y_{t+1} = W y_t + g(x_{t+1}) - g(x_t)``, ``y_0 = g(x_0)``,
    each node's g on its round's minibatch."""
    lr, rounds = 0.2, 4
    sim = sim_of("gradient_tracking", "erdos_renyi", nodes=6, topology_kwargs={"p": 0.5},
                 lr=lr, local_steps=1, batch_size=16, same_init=False)
    W = sim.topology.mixing_at(0).matrix.to_dense()
    data = sim.data.dataset

    def gradients(x: torch.Tensor, round_index: int) -> torch.Tensor:
        rows = []
        for node in range(sim.num_nodes):
            index = sim.sampler.batch(torch.tensor([node]), round_index, 0).index[0]
            leaf = x[node].clone().requires_grad_(True)
            out = functional_call(sim.model, (sim.spec.views(leaf), sim.buffers),
                                  (data.train_x[index],))
            (g,) = torch.autograd.grad(F.cross_entropy(out, data.train_y[index]), leaf)
            rows.append(g)
        return torch.stack(rows)

    x = sim.params.clone()
    y = g_old = None
    for t in range(rounds):
        g = gradients(x, t)
        y = g if t == 0 else W @ y + g - g_old
        g_old = g
        x = W @ (x - lr * y)
        sim.step(rounds)
        torch.testing.assert_close(sim.params, x, atol=1e-5, rtol=1e-5)
        # the correction the next round starts from, c = y_{t+1} - g(x_{t+1}) = W y_t - g(x_t)
        torch.testing.assert_close(sim.node_state["correction"], W @ y - g, atol=1e-5,
                                   rtol=1e-5)
    # the tracker keeps the network's mean gradient: mean(y) = mean(g) every round
    torch.testing.assert_close(y.mean(0), g.mean(0), atol=1e-5, rtol=1e-4)


def test_gradient_tracking_sends_two_vectors_per_link():
    sim = sim_of("gradient_tracking", "erdos_renyi", topology_kwargs={"p": 0.4})
    mixing = sim.topology.mixing_at(0)
    sim.run(2)
    d = sim.spec.dim
    assert torch.equal(sim.bytes_sent, 2 * mixing.out_degree.to(torch.float64) * 8 * d)
    assert torch.equal(sim.bytes_received, 2 * mixing.in_degree.to(torch.float64) * 8 * d)


# ---------------------------------------------------------------------------------------------
# plan sequences


@dataclass(frozen=True)
class RepeatedGossip:
    """Q gossip steps per round: a list of Q Mix plans."""

    q: int
    needs_topology: bool = True

    def plan(self, ctx, participants, topology, sizes):
        return [Mix(topology.mixing_at(ctx.round, device=ctx.device))] * self.q


@pytest.mark.parametrize("q", [1, 3])
def test_a_list_of_q_mix_plans_runs_q_gossip_steps_and_counts_q_messages(q):
    base = make_algorithm("dsgd", lr=0.1, local_steps=1)
    algorithm = replace(base, communication=RepeatedGossip(q))
    data = digits()
    kwargs = dict(evaluation=NO_EVAL, same_init=False, topology_kwargs={"p": 0.4})
    sim = Simulation(data, "logreg", algorithm, "erdos_renyi", **kwargs)
    once = Simulation(data, "logreg", base, "erdos_renyi", **kwargs)
    W = sim.topology.mixing_at(0).matrix.to_dense()
    sim.step(1)
    once.step(1)  # the same local step, then W once
    torch.testing.assert_close(sim.params, torch.linalg.matrix_power(W, q - 1) @ once.params,
                               atol=1e-5, rtol=1e-5)
    degree = sim.topology.mixing_at(0).out_degree.to(torch.float64)
    assert torch.equal(sim.bytes_sent, q * degree * 4 * sim.spec.dim)
    assert torch.equal(sim.bytes_received, q * degree * 4 * sim.spec.dim)


# ---------------------------------------------------------------------------------------------
# a robust rule on a graph under attack


def test_robust_dsgd_under_attack_reports_honest_metrics():
    algorithm = make_algorithm("dsgd", lr=0.1, local_steps=2,
                               aggregator={"name": "trimmed_mean", "fraction": 0.2})
    sim = Simulation(digits(10), "logreg", algorithm, "random_regular",
                     topology_kwargs={"k": 4},
                     adversary=Adversary({"name": "gaussian", "std": 10.0}, count=2),
                     evaluation=Evaluation(every=1, node_samples=50))
    history = sim.run(2)
    final = history.records[-1]
    honest = ~sim.malicious
    rows = sim.params[honest]
    mean = rows.mean(0)
    spread = float((rows - mean).square().sum(1).mean())
    assert final["honest_consensus_distance"] == pytest.approx(spread, rel=1e-5)
    for key in ("honest_test_accuracy", "honest_node_accuracy_mean",
                "honest_node_accuracy_min"):
        assert 0.0 <= final[key] <= 1.0, key
    assert final["honest_node_accuracy_min"] <= final["honest_node_accuracy_mean"]


def test_a_sign_flipper_on_a_ring_sends_minus_its_honest_neighbours_mean():
    """An Exchange with an aggregator: node 2's message is replaced by the attack, which sees
    its honest in-neighbours' messages; every node averages its own and its neighbours'."""
    data = federate("digits", num_nodes=8, partition="iid", seed=0)
    kwargs = dict(algorithm_kwargs=dict(lr=0.1, local_steps=1, aggregator="average"),
                  evaluation=NO_EVAL, same_init=False)
    attacked = Simulation(data, "logreg", "dsgd", "ring",
                          adversary=Adversary("sign_flip", nodes=(2,)), **kwargs)
    honest = Simulation(data, "logreg", "dsgd", "ring", **kwargs)
    honest.train(None, 0)
    messages = honest.params.clone()
    messages[2] = -(messages[1] + messages[3]) / 2
    expected = torch.stack([(messages[i] + messages[i - 1] + messages[(i + 1) % 8]) / 3
                            for i in range(8)])
    attacked.step(1)
    torch.testing.assert_close(attacked.params, expected, atol=1e-6, rtol=1e-5)


ROBUST_CONFIG = """
seed = 4
rounds = 2
[data]
dataset = "digits"
nodes = 10
[model]
name = "logreg"
[topology]
name = "random_regular"
k = 4
[algorithm]
name = "dsgd"
lr = 0.1
local_steps = 2
aggregator = { name = "median" }
[adversary]
attack = "sign_flip"
fraction = 0.2
[evaluation]
every = 1
node_samples = 50
[output]
checkpoint_every = 0
plots = false
report = false
"""


def test_a_robust_run_writes_honest_metric_columns(tmp_path):
    from murmura.config import Experiment
    from murmura.runner import run_experiment

    result = run_experiment(Experiment.from_toml_text(ROBUST_CONFIG), tmp_path / "run",
                            progress=False)
    assert result.status == "completed"
    with (tmp_path / "run" / "metrics.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2
    for key in ("honest_test_accuracy", "honest_consensus_distance",
                "honest_node_accuracy_mean", "honest_node_accuracy_min"):
        assert key in rows[0], key
        assert all(math.isfinite(float(row[key])) for row in rows), key


def test_sparse_messages_never_cost_more_than_dense_ones():
    from murmura.algorithms.compressors import RandomK, TopK

    assert TopK(ratio=0.9).nbytes(100) == 400 and TopK(ratio=0.1).nbytes(100) == 80
    assert RandomK(ratio=1.0).nbytes(100) == 400 and RandomK(ratio=0.1).nbytes(100) == 48
