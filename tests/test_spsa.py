"""Just One Byte (spsa_shared): the one-byte code, the SPSA estimate against hand-computed
losses, one round of the swarm against the update written out, bit-identical replicas, the
byte ledger, refused parameters, and the experiment's quick mode."""

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

import murmura.algorithms.spsa  # noqa: F401  (registers spsa_shared)
from murmura.algorithms import make_algorithm
from murmura.algorithms.spsa import (
    SharedSeedSPSA,
    decode_byte,
    encode_byte,
    perturbation,
    quantize,
)
from murmura.data import federate
from murmura.swarm import Evaluation, Simulation
from murmura.swarm.random import node_keys

ROOT = Path(__file__).resolve().parents[1]


def simulation(nodes=4, seed=0, chunk_size=None, **kwargs):
    data = federate("digits", num_nodes=nodes, partition="iid", seed=0)
    return Simulation(data, "mlp", "spsa_shared", model_kwargs={"hidden": [8]}, seed=seed,
                      algorithm_kwargs=kwargs, evaluation=Evaluation(every=0),
                      chunk_size=chunk_size)


# ---------------------------------------------------------------------------------------------
# the one-byte code


def test_the_byte_is_a_sign_bit_and_a_seven_bit_log_level():
    g = torch.tensor([1.0, -1.0, math.exp(0.5), -math.exp(-2.0), 0.0])
    # q = round(8 ln|g|) + 64 in the low 7 bits, the sign in bit 7, q = -64 (byte 0) for zero
    assert encode_byte(g).tolist() == [64, 192, 68, 128 + 48, 0]
    assert encode_byte(g).dtype == torch.uint8
    assert decode_byte(encode_byte(g)).tolist() == pytest.approx(
        [1.0, -1.0, math.exp(0.5), -math.exp(-2.0), 0.0])


def test_the_code_round_trips_within_a_sixteenth_nat_keeps_signs_and_clips():
    g = torch.logspace(-3, 3, 2001) * torch.where(torch.arange(2001) % 2 == 0, 1.0, -1.0)
    back = quantize(g, "int8")
    assert torch.equal(torch.sign(back), torch.sign(g))
    rel = ((back - g) / g).abs()
    assert rel.max() <= math.exp(1 / 16) - 1 + 1e-6  # half a level of 1/8 nat: 6.45 %
    assert rel.max() > 0.06  # the bound is attained, the code really is that coarse
    big, small = quantize(torch.tensor([1e6, -1e6]), "int8"), quantize(torch.tensor([1e-9]),
                                                                          "int8")
    assert big.tolist() == pytest.approx([math.exp(63 / 8), -math.exp(63 / 8)])
    assert small.tolist() == pytest.approx([math.exp(-63 / 8)])
    assert quantize(torch.tensor([0.0]), "int8").tolist() == [0.0]
    assert torch.equal(quantize(g, "fp32"), g)


# ---------------------------------------------------------------------------------------------
# the estimate, for losses where the central difference is exact


def _batch(samples, per_sample, dim, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(samples * per_sample, dim, generator=gen)
    return x, torch.zeros(samples * per_sample, dtype=torch.int64)


def test_the_estimate_is_the_sum_of_projected_gradients_times_their_perturbations():
    # quadratic loss on sample s's own minibatch: L = 1/2 ||w - mean(x_s)||^2, whose central
    # difference is exactly <w - mean(x_s), z_s> (up to float rounding)
    samples, per_sample, dim = 3, 5, 6
    params = {"w": torch.linspace(-1, 1, dim), "b": torch.tensor([0.3, -0.2])}

    def loss(p, x, y):
        return 0.5 * ((p["w"] - x.mean(0)) ** 2).sum() + 0.5 * (p["b"] ** 2).sum()

    x, y = _batch(samples, per_sample, dim)
    key = torch.tensor(12345)
    rule = SharedSeedSPSA(eps=1e-2, samples=samples, codec="fp32")
    est = rule.gradient(loss)(params, x, y, key)
    want = {"w": torch.zeros(dim), "b": torch.zeros(2)}
    for s in range(samples):
        z = perturbation(key, params, s)
        centre = x[s * per_sample:(s + 1) * per_sample].mean(0)
        g = ((params["w"] - centre) * z["w"]).sum() + (params["b"] * z["b"]).sum()
        want = {k: want[k] + g * z[k] for k in want}
    for k in want:
        assert torch.allclose(est[k], want[k], rtol=1e-3, atol=1e-4), k
    # int8: the same with every scalar through the byte
    est8 = SharedSeedSPSA(eps=1e-2, samples=samples, codec="int8").gradient(loss)(
        params, x, y, key)
    want8 = {k: torch.zeros_like(v) for k, v in params.items()}
    for s in range(samples):
        z = perturbation(key, params, s)
        plus = loss({k: v + 1e-2 * z[k] for k, v in params.items()},
                    x[s * per_sample:(s + 1) * per_sample], None)
        minus = loss({k: v - 1e-2 * z[k] for k, v in params.items()},
                     x[s * per_sample:(s + 1) * per_sample], None)
        g = decode_byte(encode_byte((plus - minus) / 2e-2))
        want8 = {k: want8[k] + g * z[k] for k in want8}
    for k in want8:
        assert torch.allclose(est8[k], want8[k], rtol=1e-5, atol=1e-6), k


def test_the_perturbations_differ_by_sample_and_key_and_are_standard_normal():
    params = {"a": torch.zeros(50, 40), "b": torch.zeros(10)}
    z0, z1 = perturbation(torch.tensor(7), params, 0), perturbation(torch.tensor(7), params, 1)
    other = perturbation(torch.tensor(8), params, 0)
    assert not torch.equal(z0["a"], z1["a"]) and not torch.equal(z0["a"], other["a"])
    assert torch.equal(z0["a"], perturbation(torch.tensor(7), params, 0)["a"])  # reproducible
    assert abs(float(z0["a"].mean())) < 0.06 and abs(float(z0["a"].std()) - 1) < 0.05


def test_the_estimate_is_unbiased_for_a_linear_loss():
    # E[<a, z> z] = a: the mean over many samples approaches the gradient
    grad = torch.tensor([1.0, -2.0, 0.5, 0.0])
    params = {"w": torch.zeros(4)}

    def loss(p, x, y):
        return (p["w"] * grad).sum()

    samples = 4000
    x, y = _batch(samples, 1, 1)
    est = SharedSeedSPSA(eps=1e-3, samples=samples, codec="fp32").gradient(loss)(
        params, x, y, torch.tensor(3))
    mean = est["w"] / samples
    assert torch.linalg.vector_norm(mean - grad) < 0.15 * torch.linalg.vector_norm(grad)


# ---------------------------------------------------------------------------------------------
# the swarm


def test_one_round_is_the_update_written_out():
    """x1 = x0 - lr/sqrt(M G) sum_m sum_s g_{m,s} z_{m,s}, every g computed here from node m's
    minibatch for sample s (its s-th chunk of batch_size) and z from node m's key."""
    nodes, samples, lr, eps, per = 3, 2, 0.05, 1e-3, 32
    sim = simulation(nodes, lr=lr, eps=eps, samples=samples, codec="fp32")
    x0 = sim.params[0].clone()
    sim.run(rounds=1)
    dataset = sim.data.dataset
    views = sim.spec.views(x0)
    model = sim.model
    ids = torch.arange(nodes)
    index = sim.sampler.batches(ids, 0, 0, 1).index[:, 0]  # [M, G * batch]
    keys = node_keys(sim.seed, "local", ids, 0, 0)

    def loss(p, xb, yb):
        return F.cross_entropy(functional_call(model, p, (xb,)), yb)

    total = torch.zeros_like(x0)
    for m in range(nodes):
        for s in range(samples):
            rows = index[m, s * per:(s + 1) * per]
            xb, yb = dataset.train_x[rows], dataset.train_y[rows]
            z = perturbation(keys[m], views, s)
            plus = loss({k: v + eps * z[k] for k, v in views.items()}, xb, yb)
            minus = loss({k: v - eps * z[k] for k, v in views.items()}, xb, yb)
            g = (plus - minus) / (2 * eps)
            total += g * torch.cat([z[k].reshape(-1) for k in sim.spec.names])
    want = x0 - lr / math.sqrt(nodes * samples) * total
    # float32 central differences at eps = 1e-3 agree to ~1e-4 relative (cancellation), a wrong
    # batch, key or sample assignment would be off by the whole step
    step, want_step = sim.params[0] - x0, want - x0
    assert torch.linalg.vector_norm(step - want_step) < 1e-3 * torch.linalg.vector_norm(want_step)
    assert torch.linalg.vector_norm(want_step) > 0.01


def test_replicas_stay_bit_identical_and_bytes_are_scalars_per_link():
    nodes, samples, rounds = 5, 4, 3
    per_round = {}
    for codec, size in (("int8", 1), ("fp32", 4)):
        sim = simulation(nodes, lr=0.01, samples=samples, codec=codec)
        start = sim.params[0].clone()
        identical: list[bool] = []

        def check(record, sim=sim, identical=identical):
            identical.append(bool((sim.params == sim.params[0]).all()))

        history = sim.run(rounds=rounds, callback=check)
        assert all(identical) and len(identical) == rounds
        assert not torch.equal(sim.params[0], start)
        # each node's G scalars go to each of the M - 1 others, every round
        assert sim.bytes_sent.tolist() == [rounds * (nodes - 1) * samples * size] * nodes
        assert history.final["bytes_sent_total"] == rounds * nodes * (nodes - 1) * samples * size
        per_round[codec] = history.final["bytes_sent_total"] / rounds
    assert per_round["fp32"] == 4 * per_round["int8"]


def test_a_single_machine_sends_nothing_and_still_learns():
    data = federate("digits", num_nodes=1, seed=0)
    sim = Simulation(data, "logreg", "spsa_shared", seed=0, evaluation=Evaluation(every=10),
                     algorithm_kwargs={"lr": 0.01, "samples": 8})
    history = sim.run(rounds=20)
    assert history.final["bytes_sent_total"] == 0
    assert history.final["test_accuracy"] > 0.2  # chance is 0.1


def test_results_do_not_depend_on_node_blocks():
    a, b = simulation(4, chunk_size=4, lr=0.01), simulation(4, chunk_size=1, lr=0.01)
    a.run(rounds=2)
    b.run(rounds=2)
    assert torch.equal(a.params, b.params)


@pytest.mark.parametrize("kwargs, name", [
    ({"lr": 0.0}, "lr"), ({"lr": float("nan")}, "lr"), ({"eps": -1e-3}, "eps"),
    ({"samples": 0}, "samples"), ({"samples": 2.5}, "samples"), ({"batch_size": 0}, "batch_size"),
    ({"codec": "int4"}, "codec"), ({"local_steps": 2}, "local_steps"),
])
def test_bad_parameters_are_refused_by_name(kwargs, name):
    with pytest.raises(ValueError, match=name):
        make_algorithm("spsa_shared", **kwargs)


def test_a_topology_is_refused():
    data = federate("digits", num_nodes=4, partition="iid", seed=0)
    with pytest.raises(ValueError, match="topology"):
        Simulation(data, "logreg", "spsa_shared", "ring")


# ---------------------------------------------------------------------------------------------
# the experiment


def test_the_experiment_quick_mode_runs(tmp_path):
    spec = importlib.util.spec_from_file_location("spsa_run", ROOT / "experiments" /
                                                  "spsa_shared" / "run.py")
    run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run)
    assert run.main(["--quick", "--out", str(tmp_path), "--workers", "1"]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["runs"] and all(r["identical_every_round"] for r in results["runs"]
                                   if r["arm"] != "dsgd")
    assert (tmp_path / "accuracy.png").exists()
