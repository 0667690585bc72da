"""Curricula in FL (specs/federated.md section 7): the six pacing functions at hand-computed
points, the paced orders (curriculum / anti / random) on hand losses, the curriculum client
selection, the algorithm end to end against hand-computed SGD steps, and the experiment's smoke
mode."""

import importlib.util
import json
import math
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from murmura.algorithms import make_algorithm
from murmura.algorithms.base import RoundContext
from murmura.algorithms.curriculum import PACING, EasyClientsFirst, PacedOrder, pace
from murmura.data import federate
from murmura.swarm import Evaluation, Simulation

REPO = Path(__file__).resolve().parents[1]

# N = 100, S = 1000, a = 0.5, b = 0.2: n0 = 20, aS = 500; g at s = 0, 250, 400, aS, S
HAND = {
    "linear": [20, 60, 84, 100, 100],          # 20 + 80 s / 500
    "quad": [20, 40, 71, 100, 100],            # 20 + 80 (s / 500)^2: 40, 71.2
    "root": [20, 76, 91, 100, 100],            # 20 + 80 sqrt(s / 500): 76.57, 91.55
    "step": [20, 20, 20, 100, 100],            # 20 + 100 floor(s / 500), clipped
    "exp": [20, 20, 30, 100, 100],             # 20 + 80 (e^(s/50) - 1) / (e^10 - 1): 30.8
    "log": [20, 94, 98, 100, 100],             # 20 + 80 (1 + 0.1 log(s/500 + e^-10))
}


@pytest.mark.parametrize("name", sorted(PACING))
def test_each_pacing_function_at_hand_computed_points(name):
    s = torch.tensor([0, 250, 400, 500, 1000])
    g = pace(name, s, 100, 1000, 0.5, 0.2)
    assert g.dtype == torch.int64 and g.tolist() == HAND[name]
    # the spec's formulas in plain Python floats, int() and clipped: the reference's arithmetic
    n0, at = 20.0, 500.0
    ref = {"linear": lambda t: (100 - n0) / at * t + n0,
           "quad": lambda t: (100 - n0) / at**2 * t**2 + n0,
           "root": lambda t: (100 - n0) / at**0.5 * t**0.5 + n0,
           "step": lambda t: 100 * math.floor(t / at) + n0,
           "exp": lambda t: (100 - n0) / (math.exp(10) - 1) * (math.exp(t * 10 / at) - 1) + n0,
           "log": lambda t: (100 - n0) * (1 + 0.1 * math.log(t / at + math.exp(-10))) + n0}[name]
    steps = torch.arange(0, 1001, 37)
    assert pace(name, steps, 100, 1000, 0.5, 0.2).tolist() == [
        min(max(int(ref(float(t))), 1), 100) for t in steps.tolist()]
    # per-node N and S under vmap = one call per node
    n, total = torch.tensor([100, 37, 5]), torch.tensor([1000, 90, 12])
    batched = vmap(lambda a, b: pace(name, s, a, b, 0.5, 0.2))(n, total)
    assert torch.equal(batched, torch.stack([pace(name, s, int(a), int(b), 0.5, 0.2)
                                             for a, b in zip(n, total)]))


def test_pacing_clips_to_one_and_to_n():
    assert pace("linear", torch.tensor([0, 1]), 10, 100, 1.0, 0.0).tolist() == [1, 1]
    assert pace("linear", torch.tensor([100]), 10, 100, 2.0, 0.0).tolist() == [5]  # a > 1
    # exp past the float range and with b = 1 (no growth): N, not NaN
    assert pace("exp", torch.tensor([1000]), 10, 1000, 0.01, 0.2).tolist() == [10]
    assert pace("exp", torch.tensor([1000]), 10, 1000, 0.01, 1.0).tolist() == [10]


# a node of 8 samples (and 2 slots of padding); its losses and their orders
LOSSES = torch.tensor([5.0, 1.0, 3.0, 0.5, 2.0, 4.0, 7.0, 6.0, torch.inf, torch.inf])
EASY = [3, 1, 4, 2, 5, 0, 7, 6]
POOL = [2, 3, 4, 5, 6, 8]  # a = 0.5, b = 0.25, S = 10: g(s) = floor(2 + 6 s / 5), s = 0..5


def positions(ordering, losses=LOSSES, key=3, first=0, steps=6, batch=4):
    order = PacedOrder(ordering, "linear", 0.5, 0.25)
    return order.positions(losses, torch.tensor(8), torch.tensor(first), torch.tensor(10),
                           torch.tensor(key), steps=steps, batch=batch)


@pytest.mark.parametrize("ordering,ranked", [("curriculum", EASY), ("anti", EASY[::-1])])
def test_the_orders_read_the_first_g_of_the_ranked_samples(ordering, ranked):
    out = positions(ordering)
    assert out.shape == (6, 4) and out.dtype == torch.int64
    for k, g in enumerate(POOL):
        assert set(out[k].tolist()) <= set(ranked[:g])
        assert len(set(out[k].tolist())) == min(g, 4)  # without replacement
        if g <= 4:
            assert set(out[k].tolist()) == set(ranked[:g])
    assert sorted(out[0].tolist()) == sorted(ranked[:2] * 2)  # a pool of 2 read twice each
    # a later round starts from its global step: s = 3 -> a pool of 5
    assert set(positions(ordering, first=3, steps=1).flatten().tolist()) <= set(ranked[:5])


def test_the_random_order_has_the_same_pools_and_ignores_the_losses():
    out = positions("random")
    pools = [set(out[k].tolist()) for k in range(6)]
    for k, g in enumerate(POOL):
        assert len(pools[k]) == min(g, 4) and max(pools[k]) < 8
    assert pools[0] < pools[1] < pools[2]  # whole pools (g <= batch): prefixes of one order
    assert torch.equal(out, positions("random", losses=torch.rand(10)))
    firsts = {tuple(sorted(set(positions("random", key=k)[0].tolist()))) for k in range(20)}
    assert len(firsts) > 5  # the first pool is not the easiest one but a keyed random pair


def test_positions_stay_inside_each_node_under_vmap():
    torch.manual_seed(0)
    sizes = torch.tensor([1, 3, 7, 12, 12])
    losses = torch.rand(5, 12)
    losses[torch.arange(12) >= sizes.unsqueeze(1)] = torch.inf
    first, total, keys = torch.tensor([0, 5, 9, 0, 30]), torch.tensor([10, 20, 9, 40, 40]), \
        torch.arange(5)
    for ordering in ("curriculum", "anti", "random"):
        for name in PACING:
            for batch in (1, 4, 20):  # a batch larger than every node
                order = PacedOrder(ordering, name, 0.8, 0.2)
                out = vmap(partial(order.positions, steps=4, batch=batch))(
                    losses, sizes, first, total, keys)
                assert out.shape == (5, 4, batch)
                assert bool((out >= 0).all()) and bool((out < sizes.view(-1, 1, 1)).all())
                one = order.positions(losses[3], sizes[3], first[3], total[3], keys[3],
                                      steps=4, batch=batch)
                assert torch.equal(out[3], one)


def test_client_selection_prefers_easy_clients_and_widens_the_pool():
    chooser = EasyClientsFirst("linear", a=0.5, b=0.4, count=2)
    losses = torch.tensor([0.9, 0.1, 0.5, 0.3, 0.7])  # easiest first: 1, 3, 2, 4, 0

    def chosen(round, seed=0):
        ctx = RoundContext(round, 10, seed, 5, torch.device("cpu"))
        return chooser.select(ctx, losses).tolist()

    # round 0: g = floor(0.4 * 5) = 2 eligible, the two easiest
    assert all(chosen(0, seed) == [1, 3] for seed in range(10))
    # round 2: g = floor(2 + 3 * 2 / 5) = 3 eligible
    seen = {c for seed in range(30) for c in chosen(2, seed)}
    assert seen == {1, 2, 3}
    # from round aT = 5 on, every client is eligible
    assert {c for seed in range(30) for c in chosen(5, seed)} == {0, 1, 2, 3, 4}
    assert all(len(chosen(t, seed)) == 2 for t in range(10) for seed in range(3))
    assert chosen(3, 7) == chosen(3, 7)  # keyed by (seed, round)
    # b = 0 keeps at least the round's count eligible; all clients: everybody
    low = EasyClientsFirst("linear", 0.5, 0.0, count=2)
    assert low.select(RoundContext(0, 10, 0, 5, torch.device("cpu")), losses).tolist() == [1, 3]
    assert EasyClientsFirst(count=5).select(
        RoundContext(0, 10, 0, 5, torch.device("cpu")), losses) is None


def _losses(sim, row, node):
    index = sim.data.index_table[node, : int(sim.data.sizes[node])]
    out = functional_call(sim.model, sim.spec.views(row), (sim.data.dataset.train_x[index],))
    return F.cross_entropy(out, sim.data.dataset.train_y[index], reduction="none"), index


def _sgd(sim, row, x, y, lr, steps):
    def loss(params):
        return F.cross_entropy(functional_call(sim.model, params, (x,)), y)

    for _ in range(steps):
        g = grad(loss)(sim.spec.views(row))
        row = row - lr * torch.cat([g[k].reshape(-1) for k in sim.spec.names])
    return row


@pytest.mark.parametrize("ordering,pick", [("curriculum", torch.argmin), ("anti", torch.argmax)])
def test_a_round_reads_only_the_easiest_or_hardest_sample_by_hand(ordering, pick):
    data = federate("digits", num_nodes=3, partition="dirichlet", alpha=1.0, seed=0)
    # a "step" pacing with n0 = 1 for the whole run: one sample, the (anti-)curriculum's first
    kwargs = dict(ordering=ordering, pacing="step", a=1.0, b=1.0 / int(data.sizes.max()),
                  local_steps=2, batch_size=4, lr=0.1)
    sim = Simulation(data, "logreg", "curriculum", algorithm_kwargs=kwargs, seed=0,
                     evaluation=Evaluation(every=0))
    x0 = sim.params[0].clone()
    rows = []
    for i in range(3):
        losses, index = _losses(sim, x0, i)
        j = index[pick(losses)].view(1)
        rows.append(_sgd(sim, x0, data.dataset.train_x[j], data.dataset.train_y[j], 0.1, 2))
    w = data.sizes.to(torch.float32) / data.sizes.sum()
    expected = sum(w[i] * rows[i] for i in range(3))  # FedAvg's mean weighted by size
    sim.run(rounds=1)
    assert torch.allclose(sim.params[0], expected, atol=1e-5)


def test_client_selection_picks_the_easiest_clients_first_in_the_engine():
    data = federate("digits", num_nodes=10, partition="pathological", classes_per_node=2, seed=0)
    sim = Simulation(data, "logreg", "curriculum", seed=0, evaluation=Evaluation(every=0),
                     algorithm_kwargs=dict(client_selection=True, b=0.3, clients_per_round=3,
                                           local_steps=1))
    x0 = sim.params[0].clone()
    mean_loss = torch.stack([_losses(sim, x0, i)[0].mean() for i in range(10)])
    sim.run(rounds=1)
    uploaded = torch.nonzero(sim.bytes_sent > 0).flatten()
    assert uploaded.tolist() == sorted(torch.argsort(mean_loss)[:3].tolist())


def _run(rounds=2, seed=0, **kwargs):
    data = federate("digits", num_nodes=6, partition="pathological", classes_per_node=2, seed=0)
    params = dict(lr=0.05, local_epochs=1, batch_size=10, clients_per_round=3) | kwargs
    name = params.pop("name", "curriculum")
    sim = Simulation(data, "mlp", name, seed=seed, model_kwargs={"hidden": [16]},
                     algorithm_kwargs=params, evaluation=Evaluation(every=0))
    if rounds:
        sim.run(rounds)
    return sim


def test_ordering_none_is_fedavg_and_runs_are_deterministic(tmp_path):
    assert torch.equal(_run(ordering="none").params, _run(name="fedavg").params)
    for ordering in ("curriculum", "random"):
        assert torch.equal(_run(ordering=ordering).params, _run(ordering=ordering).params)
    assert not torch.equal(_run(ordering="random").params, _run(ordering="curriculum").params)
    # an expert equal to the initial model scores round 0 as the global model does
    x0 = _run(rounds=0).params[0].clone()
    torch.save(x0, tmp_path / "expert.pt")
    one = _run(rounds=1, scoring="expert", expert=str(tmp_path / "expert.pt")).params
    assert torch.equal(one, _run(rounds=1).params)
    assert not torch.equal(_run(scoring="expert", expert=x0).params, _run().params)


@pytest.mark.parametrize("kwargs,words", [
    ({"a": 0}, "a (the fraction"), ({"a": -1.0}, "a (the fraction"),
    ({"a": math.inf}, "a (the fraction"), ({"b": -0.1}, "b (the fraction"),
    ({"b": 1.5}, "b (the fraction"), ({"pacing": "cubic"}, "pacing must be one of"),
    ({"ordering": "easy"}, "ordering must be one of"), ({"scoring": "local"}, "scoring must"),
    ({"scoring": "expert"}, "needs expert"), ({"expert": [0.0]}, "only used with"),
    ({"client_selection": "cubic", "clients_per_round": 3}, "client_selection must be one of"),
    ({"client_selection": 1, "clients_per_round": 3}, "client_selection must be true"),
    ({"client_selection": True}, "clients_per_round"),
])
def test_bad_values_are_refused_by_name(kwargs, words):
    with pytest.raises(ValueError, match=words.replace("(", r"\(")):
        make_algorithm("curriculum", **kwargs)


def test_an_expert_of_the_wrong_size_is_refused():
    data = federate("digits", num_nodes=3, seed=0)
    with pytest.raises(ValueError, match="expert"):
        Simulation(data, "logreg", "curriculum",
                   algorithm_kwargs={"scoring": "expert", "expert": torch.zeros(5)})


def test_the_experiment_quick_mode_runs_every_arm(tmp_path):
    spec = importlib.util.spec_from_file_location("curriculum_run",
                                                  REPO / "experiments" / "curriculum" / "run.py")
    run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run)
    assert run.main(["--quick", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "quick.json").read_text())
    assert len(result["table"]) == len(run.ARMS) * len(run.SPLITS)
    assert set(result["verdict"]["curriculum_minus_vanilla"]) == {"pathological", "iid"}
    assert (tmp_path / "curriculum_quick.png").exists()
