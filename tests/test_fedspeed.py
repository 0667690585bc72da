"""FedSpeed (murmura.algorithms.fedspeed): hand-computed steps, server rules and reductions."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import murmura.algorithms.fedspeed  # noqa: F401  (registers "fedspeed")
from murmura.algorithms.base import RoundContext, make_algorithm
from murmura.algorithms.fedspeed import (
    CorrectedSGD,
    CorrectionUpdate,
    PerturbedCorrectedSGD,
    SendCorrected,
    ServerDual,
)
from murmura.data import federate
from murmura.swarm import Evaluation, Simulation

NO_EVAL = Evaluation(every=0)
ROOT = Path(__file__).resolve().parents[1]


def test_one_local_step_by_hand():
    rule = PerturbedCorrectedSGD(lr=0.5, weight_decay=0.1, lamb=0.2, rho=0.5, alpha=0.5)

    def loss(params, x, y):  # f(w) = ||w - x||² / 2: gradient w - x
        return 0.5 * (params["w"] - x).square().sum()

    w, x = torch.tensor([1.0, 2.0]), torch.tensor([0.0, 0.0])
    g = rule.gradient(loss)({"w": w}, x, None)["w"]
    # g1 = [1, 2]; g2 = w + 0.5 g1/sqrt(5) - x; g~ = (g1 + g2) / 2 = [1, 2] (1 + 0.25/sqrt(5))
    s = 1 + 0.25 / math.sqrt(5)
    torch.testing.assert_close(g, torch.tensor([s, 2 * s]))
    state = {"anchor": torch.tensor([0.0, 1.0]), "correction": torch.tensor([0.5, -0.5])}
    param = w.clone()
    rule.update(param, g.clone(), state, None)
    # y - lr (g~ - ĝ + lamb (y - x) + wd y)
    expected = [1 - 0.5 * (s - 0.5 + 0.2 * 1 + 0.1 * 1),
                2 - 0.5 * (2 * s + 0.5 + 0.2 * 1 + 0.1 * 2)]
    torch.testing.assert_close(param, torch.tensor(expected))
    # alpha = 1 uses the perturbed gradient alone; rho = 0 is the fused plain-gradient rule
    g2 = PerturbedCorrectedSGD(lamb=0.2, rho=0.5)
    torch.testing.assert_close(g2.gradient(loss)({"w": w}, x, None)["w"],
                               w * (1 + 0.5 / math.sqrt(5)))
    plain = CorrectedSGD(lr=0.5, weight_decay=0.1, lamb=0.2)
    assert plain.fused_terms() == (0.2, (("anchor", -0.2), ("correction", -1.0)))
    assert not hasattr(rule, "fused_terms")  # the two-pass step never takes the fused path


def test_correction_update_and_upload_by_hand():
    y = torch.tensor([3.0, -1.0])
    state = {"anchor": torch.tensor([1.0, 1.0]), "correction": torch.tensor([0.2, 0.0])}
    out = CorrectionUpdate(lamb=0.1)(y, state, torch.tensor(0), torch.tensor(5))
    # ĝ - lamb (y_K - x) = [0.2 - 0.2, 0 + 0.2]
    torch.testing.assert_close(out["correction"], torch.tensor([0.0, 0.2]))
    payload, updates = SendCorrected(lamb=0.1).encode(y, {"correction": out["correction"]},
                                                      torch.tensor(0))
    # x̂ = y_K - λ ĝ = [3 - 0, -1 - 10 * 0.2]
    torch.testing.assert_close(payload["params"], torch.tensor([3.0, -3.0]))
    assert updates == {} and SendCorrected(0.1).nbytes(10) == 40


def test_code_server_by_hand():
    server = ServerDual()
    state = server.init(torch.tensor([1.0, 1.0]))
    ctx = RoundContext(0, 3, 0, 4, torch.device("cpu"), uploaders=2)
    broadcast, state = server.update(state, {"params": torch.tensor([2.0, 0.0])}, ctx)
    # H = 2 ([2, 0] - [1, 1]) = [2, -2]; x = [2, 0] + H / 4
    torch.testing.assert_close(state["dual_sum"], torch.tensor([2.0, -2.0]))
    torch.testing.assert_close(broadcast["params"], torch.tensor([2.5, -0.5]))
    broadcast, state = server.update(state, {"params": torch.tensor([3.0, 0.0])}, ctx)
    # H = [2, -2] + 2 ([3, 0] - [2.5, -0.5]) = [3, -1]; x = [3, 0] + [3, -1] / 4
    torch.testing.assert_close(broadcast["params"], torch.tensor([3.75, -0.25]))


def sim(algorithm: str, nodes: int = 6, rounds: int = 1, **kwargs) -> Simulation:
    data = federate("digits", num_nodes=nodes, partition="dirichlet", alpha=0.5, seed=0)
    s = Simulation(data, "logreg", algorithm, seed=0, evaluation=NO_EVAL,
                   algorithm_kwargs=dict(lr=0.1, local_steps=3, batch_size=8, **kwargs))
    for _ in range(rounds):
        s.step(rounds)
    return s


def test_rho_zero_tiny_lamb_first_round_is_fedavg_extrapolated():
    # lamb -> 0: the local steps are FedAvg's; the upload is y_K + h_i with h_i = y_K - x, so the
    # first server model is x + 2 (mean y_K - x), FedAvg's step doubled (the paper's x̂)
    x0 = sim("fedavg", rounds=0).params[0].clone()
    fedavg = sim("fedavg", weighting="uniform").params[0]
    fs = sim("fedspeed", rho=0.0, lamb=1e-6, weight_decay=0.0).params[0]
    torch.testing.assert_close(fs, 2 * fedavg - x0, atol=1e-4, rtol=1e-4)


def test_rho_zero_fused_step_matches_the_generic_step():
    fused = sim("fedspeed", rounds=2, rho=0.0, clients_per_round=3).params
    generic = sim("fedspeed", rounds=2, rho=1e-9, clients_per_round=3).params
    torch.testing.assert_close(fused, generic, atol=1e-5, rtol=1e-5)


def test_forms_agree_under_full_participation_and_differ_under_sampling():
    paper = sim("fedspeed", rounds=3, rho=0.05)
    code = sim("fedspeed", rounds=3, rho=0.05, form="code")
    torch.testing.assert_close(paper.params, code.params, atol=1e-5, rtol=1e-5)
    paper = sim("fedspeed", rounds=3, rho=0.05, clients_per_round=2)
    code = sim("fedspeed", rounds=3, rho=0.05, clients_per_round=2, form="code")
    assert float((paper.params - code.params).abs().max()) > 1e-3
    assert torch.isfinite(code.params).all()


@pytest.mark.parametrize("kwargs, word", [
    ({"lamb": 0.0}, "lamb"), ({"lamb": -1.0}, "lamb"), ({"lamb": float("nan")}, "lamb"),
    ({"rho": -0.1}, "rho"), ({"rho": True}, "rho"), ({"alpha": 1.5}, "alpha"),
    ({"alpha": -0.1}, "alpha"), ({"form": "feddyn"}, "form"), ({"lr": 0.0}, "lr"),
])
def test_bad_parameters_are_refused(kwargs, word):
    with pytest.raises(ValueError, match=word):
        make_algorithm("fedspeed", **kwargs)


def test_experiment_quick_mode(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "experiments" / "fedspeed" / "run.py"),
                          "--quick", "--out", str(tmp_path)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert (tmp_path / "results.json").exists() and (tmp_path / "fedspeed.png").exists()
