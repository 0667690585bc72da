"""SybilWall and the engine hooks it needs: per-peer table state, stateful aggregators, the
ShareRows gossip plan, Sybil identities and the ``attached`` topology (hand-computed cases)."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import networkx as nx
import pytest
import torch
from torch.func import vmap

from murmura.algorithms.plans import NodeState
from murmura.data import federate
from murmura.robust import Adversary, HistoryGossip, SybilWall, foolsgold_weights
from murmura.robust.sybilwall import DISTANCE, HISTORY, ROUND, SOURCE
from murmura.swarm import Simulation
from murmura.topology import StaticTopology, make_topology

INF = math.inf
ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------
# per-peer tables


def test_node_state_tables_have_their_declared_shape():
    assert NodeState(shape=("n", "d")).size(num_nodes=5, dim=3) == (5, 3)
    assert NodeState(INF, shape=("n",)).fill == INF
    assert NodeState("params").like_params and not NodeState(shape=("n",)).like_params
    with pytest.raises(ValueError, match="shape must be"):
        NodeState("params", shape=("n", "d"))
    with pytest.raises(ValueError, match="'n', 'd' or positive integers"):
        NodeState(shape=("k",))
    with pytest.raises(ValueError, match="a number"):
        NodeState("ones")


# ---------------------------------------------------------------------------------------------
# FoolsGold


def test_foolsgold_gives_identical_histories_weight_zero_and_a_lone_one_weight_one():
    h = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [5.0, 5.0]])
    # with row 3 absent, rows 1 and 2 are clones (cs 1) and row 0 is orthogonal to both
    assert foolsgold_weights(h, torch.tensor([1.0, 1.0, 1.0, 0.0])).tolist() == [1, 0, 0, 0]
    assert foolsgold_weights(h[:1], torch.ones(1)).tolist() == [1.0]


def test_foolsgold_logit_by_hand():
    # cs(0, 1) = cos 60 deg = 0.5, cs(0, 2) = cs(1, 2) = 0: v = (0.5, 0.5, 0) + 1e-5, no
    # pardoning between 0 and 1; w = 1 - max cs = (0.5, 0.5, 1), / max = same; logit:
    # ln(0.5 / 0.5) + 0.5 = 0.5, and 1 -> +inf -> 1
    h = torch.tensor([[1.0, 0.0, 0.0], [0.5, math.sqrt(3) / 2, 0.0], [0.0, 0.0, 2.0]])
    assert torch.allclose(foolsgold_weights(h, torch.ones(3)), torch.tensor([0.5, 0.5, 1.0]),
                          atol=1e-4)


# ---------------------------------------------------------------------------------------------
# the aggregator at one node


def records(n: int, d: int) -> dict[str, torch.Tensor]:
    return {HISTORY: torch.zeros(n, d), ROUND: torch.full((n,), -1.0),
            DISTANCE: torch.full((n,), INF), SOURCE: torch.full((n,), -1.0)}


def test_sybilwall_mixes_distinct_neighbours_and_shuts_out_clones():
    own = {"params": torch.tensor([3.0, 0.0]), "update": torch.tensor([0.0, 0.0])}
    models = torch.tensor([[3.0, 0.0], [0.0, 3.0], [0.0, 6.0]])
    ids, mask = torch.tensor([0, 1, 2]), torch.ones(3)
    distinct = {"params": models, "update": torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])}
    out, state = SybilWall()(own, distinct, mask, torch.tensor(4.0), ids, records(4, 2))
    # orthogonal updates: w = 1, 1 -> (x_0 + x_1 + x_2) / 3
    assert torch.allclose(out["params"], torch.tensor([1.0, 3.0]))
    assert state[DISTANCE].tolist() == [INF, 1.0, 1.0, INF]
    assert state[ROUND].tolist() == [-1.0, 4.0, 4.0, -1.0]
    assert state[SOURCE].tolist() == [-1.0, 1.0, 2.0, -1.0]
    assert state[HISTORY].tolist() == [[0, 0], [1, 0], [0, 1], [0, 0]]
    clones = {"params": models, "update": torch.tensor([[0.0, 0.0], [0.0, 1.0], [0.0, 2.0]])}
    out, _ = SybilWall()(own, clones, mask, torch.tensor(4.0), ids, records(4, 2))
    assert torch.equal(out["params"], own["params"])  # both weighted 0: the own model stays


def test_sybilwall_sees_a_clone_of_a_distant_peer_and_ignores_padding():
    state = records(4, 2)
    state[HISTORY][3] = torch.tensor([0.0, 2.0])  # a gossiped record, two hops away
    state[DISTANCE][3] = 2.0
    own = {"params": torch.tensor([1.0, 1.0]), "update": torch.zeros(2)}
    received = {"params": torch.tensor([[1.0, 1.0], [5.0, 5.0], [9.0, 9.0]]),
                "update": torch.tensor([[0.0, 0.0], [0.0, 1.0], [7.0, 7.0]])}
    out, _ = SybilWall()(own, received, torch.tensor([1.0, 1.0, 0.0]), torch.tensor(1.0),
                         torch.tensor([0, 1, 0]), state)
    # neighbour 1's history (0, 1) is node 3's direction: weight 0; the padded row is unused
    assert torch.equal(out["params"], own["params"])


def test_latest_model_history_is_what_the_reference_telescopes_to():
    state = records(3, 2)
    state[HISTORY][1] = torch.tensor([7.0, 7.0])
    state[DISTANCE][1] = 1.0
    own = {"params": torch.zeros(2)}
    received = {"params": torch.tensor([[0.0, 0.0], [1.0, 2.0]])}
    _, new = SybilWall("latest_model")(own, received, torch.ones(2), torch.tensor(2.0),
                                       torch.tensor([0, 1]), state)
    assert new[HISTORY][1].tolist() == [1.0, 2.0]
    with pytest.raises(ValueError, match="needs each sender's local update"):
        SybilWall()(own, received, torch.ones(2), torch.tensor(2.0), torch.tensor([0, 1]), state)
    with pytest.raises(ValueError, match="history must be"):
        SybilWall("sum")


# ---------------------------------------------------------------------------------------------
# the gossip's pick and merge


def test_gossip_picks_an_eligible_record_nearer_ones_likelier():
    gossip = HistoryGossip()
    state = {DISTANCE: torch.tensor([INF, 1.0, 2.0, 1.0]), SOURCE: torch.tensor([-1, 1, 3, 0.0])}
    # to receiver 3: not 0 (the sender), not 3, not node 2 (received from 3) -> only 1
    assert int(gossip.pick(state, torch.tensor(0), torch.tensor(3), torch.tensor(5))) == 1
    nothing = {DISTANCE: torch.tensor([INF, 1.0]), SOURCE: torch.tensor([-1.0, 1.0])}
    assert int(gossip.pick(nothing, torch.tensor(0), torch.tensor(1), torch.tensor(5))) == -1
    # to receiver 4 (unknown): records 1 (d 1), 2 (d 2), 3 (d 1): weights 1 : e^-0.8 : 1
    keys = torch.arange(6000)
    picks = vmap(gossip.pick, in_dims=(None, None, None, 0))(
        state, torch.tensor(0), torch.tensor(4), keys)
    share = torch.bincount(picks, minlength=4).float() / len(keys)
    expected = torch.tensor([0.0, 1.0, math.exp(-0.8), 1.0])
    assert torch.allclose(share, expected / expected.sum(), atol=0.02)
    with pytest.raises(ValueError, match="gossip_lambda"):
        HistoryGossip(0.0)


def test_gossip_merge_stores_new_records_and_keeps_direct_ones():
    state = records(5, 1)
    state[DISTANCE][1], state[ROUND][1] = 1.0, 3.0  # a direct neighbour's
    state[DISTANCE][2], state[ROUND][2] = 3.0, 1.0  # an old distant record
    rows = {HISTORY: torch.tensor([[10.0], [20.0], [30.0], [40.0], [50.0]]),
            ROUND: torch.tensor([9.0, 2.0, 4.0, 6.0, 9.0]),
            DISTANCE: torch.tensor([2.0, 1.0, 1.0, 4.0, 1.0])}
    peers = torch.tensor([1, 2, 3, 3, 4])
    senders = torch.tensor([7, 8, 9, 6, 5])
    mask = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0])  # the last slot sent nothing
    new = HistoryGossip().merge(state, rows, peers, senders, mask)
    # peer 1: direct, never overwritten; peer 2: newer (2 > 1) and stored distance 3 > 1 -> taken
    # at distance 1 + 1; peer 3: two records, the newer (round 6) wins; peer 4: nothing arrived
    assert new[HISTORY].flatten().tolist() == [0.0, 0.0, 20.0, 40.0, 0.0]
    assert new[DISTANCE].tolist() == [INF, 1.0, 2.0, 5.0, INF]
    assert new[ROUND].tolist() == [-1.0, 3.0, 2.0, 6.0, -1.0]
    assert new[SOURCE].tolist() == [-1.0, -1.0, 8.0, 6.0, -1.0]


# ---------------------------------------------------------------------------------------------
# the engine: a path 0 - 1 - 2 - 3


def path_sim(**kwargs) -> Simulation:
    data = federate("digits", num_nodes=4, seed=0)
    topology = StaticTopology.from_graph(nx.path_graph(4))
    return Simulation(data, "logreg", "sybilwall_dl", topology, seed=0,
                      algorithm_kwargs={"local_steps": 1, **kwargs}, **{})


def test_records_travel_one_hop_per_round_and_only_sent_rows_are_counted():
    sim, two = path_sim(), path_sim()
    d = sim.spec.dim
    sim.run(rounds=1)
    assert sim.node_state[DISTANCE].tolist() == [[INF, 1, INF, INF], [1, INF, 1, INF],
                                                 [INF, 1, INF, 1], [INF, INF, 1, INF]]
    first, told = sim.bytes_sent.clone(), sim.node_state[HISTORY][1, 2].clone()
    assert first.tolist() == [8 * d * k for k in (1, 2, 2, 1)]  # model + update, no records yet
    sim = two
    sim.run(rounds=2)
    # node 1 told 0 about 2 (its only record 0 may hear); 2 told 3 about 1
    assert sim.node_state[DISTANCE][0].tolist() == [INF, 1, 2, INF]
    assert sim.node_state[DISTANCE][3].tolist() == [INF, 2, 1, INF]
    assert sim.node_state[SOURCE][0].tolist() == [-1, 1, 1, -1]
    # nodes 0 and 3 had nothing to tell their one neighbour; 1 and 2 sent a record per link
    record = 4 * d + 12
    assert (sim.bytes_sent - first).tolist() == [8 * d, 2 * (8 * d + record),
                                                 2 * (8 * d + record), 8 * d]
    # what node 1 knew of node 2 when it gossiped, before round 2's exchange added to it
    assert torch.equal(sim.node_state[HISTORY][0, 2], told)
    assert not torch.equal(sim.node_state[HISTORY][1, 2], told)


def test_tables_survive_a_checkpoint_and_same_seed_same_records():
    a, b = path_sim(), path_sim()
    a.run(rounds=3)
    b.run(rounds=3)
    for name in (HISTORY, ROUND, DISTANCE, SOURCE):
        assert torch.equal(a.node_state[name], b.node_state[name])
    tensors, values = a.state_dict()
    c = path_sim()
    c.load_state_dict(tensors, values)
    assert torch.equal(c.node_state[HISTORY], a.node_state[HISTORY])


def test_sybilwall_in_dsgd_with_the_latest_model_history():
    data = federate("digits", num_nodes=4, seed=0)
    sim = Simulation(data, "logreg", "dsgd", "ring", seed=0,
                     algorithm_kwargs={"aggregator": {"name": "sybilwall",
                                                      "history": "latest_model"}})
    sim.run(rounds=1)
    assert sim.node_state[DISTANCE][0].tolist() == [INF, 1, INF, 1]
    bad = Simulation(data, "logreg", "dsgd", "ring", seed=0,
                     algorithm_kwargs={"aggregator": "sybilwall"})
    with pytest.raises(ValueError, match="only the algorithm sybilwall_dl sends"):
        bad.run(rounds=1)
    server = Simulation(data, "logreg", "fedavg", seed=0,
                        algorithm_kwargs={"aggregator": {"name": "sybilwall",
                                                         "history": "latest_model"}})
    with pytest.raises(ValueError, match="runs on a graph, not at a server"):
        server.run(rounds=1)


# ---------------------------------------------------------------------------------------------
# Sybil identities and the attached topology


def test_the_attached_topology_hangs_leaves_on_a_target():
    g = make_topology("attached", 9, base="ring", count=3, edges=1, target=2).graph_at(0)
    assert sorted(g.neighbors(2)) == [1, 3, 6, 7, 8] and g.graph["attached"] == [6, 7, 8]
    spread = make_topology("attached", 12, seed=3, base="ring", count=4, edges=2).graph_at(0)
    assert all(spread.degree(i) == 2 and max(spread.neighbors(i)) < 8 for i in range(8, 12))
    with pytest.raises(ValueError, match="target must be distinct node ids"):
        make_topology("attached", 9, base="ring", count=3, target=7)
    with pytest.raises(ValueError, match="only 1 target"):
        make_topology("attached", 9, base="ring", count=3, edges=2, target=0)
    with pytest.raises(ValueError, match="leaves no base graph"):
        make_topology("attached", 3, base="ring", count=3)


def test_attached_placement_takes_the_added_nodes():
    topology = make_topology("attached", 9, base="ring", count=3, edges=1, target=0)
    mask = Adversary("sign_flip", count=3, placement="attached").place(9, 0, topology)
    assert torch.nonzero(mask).flatten().tolist() == [6, 7, 8]
    with pytest.raises(ValueError, match="make them equal"):
        Adversary("sign_flip", count=2, placement="attached").place(9, 0, topology)
    with pytest.raises(ValueError, match="use topology 'attached'"):
        Adversary("sign_flip", count=2, placement="attached").place(
            9, 0, make_topology("ring", 9))


def test_sybil_identities_all_send_the_first_ones_message():
    data = federate("digits", num_nodes=6, seed=0)
    honest_noise = Adversary({"name": "gaussian", "std": 1.0}, nodes=(3, 5))
    sybil_noise = Adversary({"name": "gaussian", "std": 1.0}, nodes=(3, 5), sybils=True)
    for algorithm, topology in (("dsgd", "ring"), ("fedavg", None)):
        sent = {}
        for name, adversary in (("each", honest_noise), ("sybils", sybil_noise)):
            sim = Simulation(data, "logreg", algorithm, topology, seed=0, adversary=adversary)
            payload = {"params": sim.params.clone()}
            if topology is None:
                sent[name] = sim._attack_at_server(payload, torch.arange(6))["params"]
            else:
                sent[name] = sim._attack_on_graph(payload, sim.topology.mixing_at(0))["params"]
        assert not torch.equal(sent["each"][3], sent["each"][5])
        assert torch.equal(sent["sybils"][3], sent["each"][3])  # the first one's draw
        assert torch.equal(sent["sybils"][5], sent["sybils"][3])
        assert torch.equal(sent["sybils"][:3], sent["each"][:3])
    with pytest.raises(ValueError, match="sends a different one per link"):
        Adversary("dissensus", count=2, sybils=True)
    with pytest.raises(ValueError, match="sybils must be true or false"):
        Adversary("sign_flip", count=2, sybils="yes")


def test_the_experiment_runs_in_quick_mode(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "experiments/sybilwall/run.py"), "--quick",
                           "--workers", "1", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "results.json").is_file() and (tmp_path / "sybilwall.png").is_file()
    assert "sybilwall_attack_rate" in done.stdout


def test_the_library_mixes_by_foolsgold_weights_of_the_histories():
    from murmura.robust import aggregate

    vectors = torch.tensor([[3.0, 0.0], [0.0, 3.0], [0.0, 6.0], [6.0, 6.0]])
    # rows 1 and 2 point the same way (clones), row 3 apart: w = (0, 0, 1)
    assert aggregate("sybilwall", vectors).tolist() == [4.5, 3.0]
    histories = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    out = aggregate("sybilwall", vectors.numpy(), histories=histories.numpy())
    assert out.shape == (2,)
    with pytest.raises(ValueError, match="one per vector"):
        aggregate("sybilwall", vectors, histories=histories[:2])
    with pytest.raises(ValueError, match="takes histories only"):
        aggregate("sybilwall", vectors, f=1)


def test_attackers_that_do_not_receive_keep_their_own_model():
    data = federate("digits", num_nodes=6, seed=0)
    work = {"lr": 0.1, "local_steps": 2, "batch_size": 8}
    deaf = Simulation(data, "logreg", "dsgd", "ring", seed=0, algorithm_kwargs=work,
                      adversary=Adversary("sign_flip", nodes=(4,), receives=False))
    hearing = Simulation(data, "logreg", "dsgd", "ring", seed=0, algorithm_kwargs=work,
                         adversary=Adversary("sign_flip", nodes=(4,)))
    alone = Simulation(data, "logreg", "local_sgd", seed=0, algorithm_kwargs=work)
    for sim in (deaf, hearing, alone):
        sim.run(rounds=2)
    assert torch.allclose(deaf.params[4], alone.params[4], atol=1e-6)
    assert not torch.allclose(hearing.params[4], alone.params[4], atol=1e-3)
    assert torch.equal(deaf.params[:4], hearing.params[:4])  # honest nodes: the same either way


def test_a_label_flipping_receiver_reads_its_own_samples_flipped():
    data = federate("digits", num_nodes=4, seed=0)
    sim = Simulation(data, "logreg", "dsgd", "ring", seed=0,
                     adversary=Adversary({"name": "label_flip", "shift": 1}, nodes=(2,)))
    true = data.dataset.train_y
    for node, shift in ((1, 0), (2, 1)):
        batch = sim._own_samples(node, 6)
        original = true[data.index_table[node, : int(data.sizes[node])]]
        assert len(batch["y"]) == 6 and set(((batch["y"] - shift) % 10).tolist()) <= set(
            original.tolist())
    assert not torch.equal(sim._own_samples(2, 50)["y"],
                           Simulation(data, "logreg", "dsgd", "ring", seed=0)._own_samples(
                               2, 50)["y"])


def test_share_rows_refuses_state_that_is_not_a_per_peer_table():
    from murmura.algorithms.plans import ShareRows

    sim = path_sim()
    plan = ShareRows(sim.topology.mixing_at(0), HistoryGossip().pick, HistoryGossip().merge,
                     reads=("round_start",), sends=(HISTORY,), nbytes=lambda d: 4 * d)
    with pytest.raises(ValueError, match=r"'round_start' is shaped \('d',\)"):
        sim.communicate(plan)
    plan = ShareRows(sim.topology.mixing_at(0), HistoryGossip().pick, HistoryGossip().merge,
                     reads=("nowhere",), sends=(HISTORY,), nbytes=lambda d: 4 * d)
    with pytest.raises(ValueError, match="'nowhere' is not declared"):
        sim.communicate(plan)
