"""GBRL's two CPU pilots (spec federated.md section 13 (e)): a gradient-boosted-trees policy
against an MLP policy on a categorical contextual bandit, and PPO-GBRL against NN-PPO on
CartPole-v1. 3 seeds.

Protocol, fixed before any result was seen (murmura.learners.gbrl / ppo / rl_envs):

Pilot 2, contextual bandit (the spec's, run first). 6 categorical features of 8 categories,
4 actions; reward 1 for the rewarded action ``table_a[x0, x1]`` if ``x2 < 4`` else
``table_b[x3, x4]`` (tables drawn from the seed, x5 noise), else 0. 20k samples each:
PPO with 64 contexts x 4 steps a rollout, minibatch 64, 4 epochs, clip 0.2, no entropy bonus,
advantages normalized, gamma = lambda = 0 (one-step episodes). Arms: ``gbt`` = the spec's GBT
policy gradient, one depth-4 sklearn DecisionTreeRegressor per minibatch on the per-sample
logit (and value) gradients, lr 0.1 (policy and value), on the integer codes; ``gbt_gbrl`` =
the same with the gbrl library's trees (its defaults: oblivious, cosine score, 250 quantile
bins); ``mlp`` = 64-64 tanh actor and critic on the one-hot codes (48 inputs), Adam lr 1e-3,
global gradient clip 0.5. Measures: the average reward over the 20k training samples (the
criterion's "average reward") and the final policy's expected reward on 4096 fresh contexts.

Pilot 1, CartPole-v1: gbrl_sb3's CartPole settings (8 envs, n_steps 128, batch 64, 1 epoch,
gamma 0.98, lambda 0.8, clip 0.2, ent 0, vf_coef 0.87, reward normalization on, per-sample
gradient clip 100 / 10, policy lr 0.029, value lr 0.015, depth 4) at 100k steps (the spec's
number: it fits the budget with the sklearn arm's vectorized predict). Arms: ``gbrl`` (the
library: oblivious, cosine, 250 bins), ``trees_sklearn`` (native backend: greedy, L2, exact
thresholds), ``nn_ppo`` (the same rollout settings, 64-64 tanh MLPs, Adam lr 1e-3, SB3's 0.5
gradient clip, vf_coef 1.0 = SB3's 0.5 on an un-halved MSE). Measure: the mean return of the
last 100 training episodes at 100k steps (SB3's ep_rew_mean).

Criteria (the spec's): pilot 2 confirms if the GBT policy's average reward exceeds the MLP's;
pilot 1 confirms if GBRL's final mean return is >= 400 and in the same range as NN-PPO's.

    .venv/bin/python experiments/gbrl/run.py            # about 4 minutes on 2 cores
    .venv/bin/python experiments/gbrl/run.py --quick --out /tmp/gq
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # gbrl's OpenMP threads only contend here

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # the arms both GBRL scripts share (also when loaded by path)
    sys.path.insert(0, str(HERE))
from gbrl_arms import ARMS, GBRL_TREES, mean_std, ppo_arm  # noqa: E402

BANDIT_ARMS = ("gbt", "gbt_gbrl", "mlp")
CARTPOLE_ARMS = ARMS


def bandit_run(arm: str, seed: int, samples: int) -> dict[str, Any]:
    import torch

    from murmura.learners.gbrl import TreeActorCritic
    from murmura.learners.ppo import MLPActorCritic, PPOConfig, train_ppo
    from murmura.learners.rl_envs import ContextualBandit

    env = ContextualBandit(n_envs=64, encoding="onehot" if arm == "mlp" else "codes",
                           task_seed=seed)
    if arm == "mlp":
        learner: Any = MLPActorCritic(env.n_features, env.n_actions, lr=1e-3, seed=seed)
        vf_coef = 1.0
    else:
        learner = TreeActorCritic(env.n_features, env.n_actions, policy_lr=0.1, value_lr=0.1,
                                  backend="gbrl" if arm == "gbt_gbrl" else "sklearn", seed=seed,
                                  **(GBRL_TREES if arm == "gbt_gbrl" else {}))
        vf_coef = 0.87
    config = PPOConfig(n_steps=4, batch_size=64, n_epochs=4, gamma=0.0, gae_lambda=0.0,
                       vf_coef=vf_coef, normalize_reward=False)
    start = time.perf_counter()
    records = list(train_ppo(env, learner, config, samples, seed=seed))
    test = env.sample_contexts(4096, np.random.default_rng(10_000 + seed))
    with torch.no_grad():
        probs = torch.softmax(learner.forward(env.encode(test))[:, :-1], 1).numpy()
    best = env.optimal_action(test)
    return {"steps": [r["env_steps"] for r in records],
            "reward": [r["rollout_return"] for r in records],
            "average_reward": float(np.average([r["rollout_return"] for r in records],
                                               weights=[r["episodes"] for r in records])),
            "final_expected_reward": float(probs[np.arange(len(best)), best].mean()),
            "final_greedy_accuracy": float((probs.argmax(1) == best).mean()),
            "seconds": time.perf_counter() - start}


def cartpole_run(arm: str, seed: int, steps: int) -> dict[str, Any]:
    from murmura.learners.ppo import train_ppo
    from murmura.learners.rl_envs import GymVectorEnv

    env = GymVectorEnv("CartPole-v1", 8)
    learner, config = ppo_arm(arm, env.n_features, env.n_actions, seed)
    start = time.perf_counter()
    records = list(train_ppo(env, learner, config, steps, seed=seed))
    env.close()
    return {"steps": [r["env_steps"] for r in records],
            "mean_return": [r["mean_return"] for r in records],
            "final_mean_return": records[-1]["mean_return"], "model_size": learner.size,
            "seconds": time.perf_counter() - start}


def summarise(bandit: dict[str, list], cartpole: dict[str, list]) -> dict[str, Any]:
    table: dict[str, Any] = {"bandit": {}, "cartpole": {}}
    for arm, runs in bandit.items():
        table["bandit"][arm] = {key: mean_std([r[key] for r in runs]) for key in
                                ("average_reward", "final_expected_reward",
                                 "final_greedy_accuracy", "seconds")}
    for arm, runs in cartpole.items():
        table["cartpole"][arm] = {key: mean_std([r[key] for r in runs])
                                  for key in ("final_mean_return", "seconds")}
    b, c = table["bandit"], table["cartpole"]
    verdict = {"bandit_gbt_beats_mlp": b["gbt"]["average_reward"]["mean"]
               > b["mlp"]["average_reward"]["mean"]}
    if "gbt_gbrl" in b:
        verdict["bandit_gbt_gbrl_beats_mlp"] = (b["gbt_gbrl"]["average_reward"]["mean"]
                                                > b["mlp"]["average_reward"]["mean"])
    if c:
        trees = "gbrl" if "gbrl" in c else "trees_sklearn"
        verdict["cartpole_trees_arm"] = trees
        verdict["cartpole_trees_at_least_400"] = c[trees]["final_mean_return"]["mean"] >= 400
    return {"table": table, "verdict": verdict}


def plot(bandit: dict[str, list], cartpole: dict[str, list], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, runs_by_arm, key, title, ylabel in (
            (axes[0], bandit, "reward", "contextual bandit (6 x 8 categories)",
             "reward per rollout"),
            (axes[1], cartpole, "mean_return", "CartPole-v1", "mean return (last 100 ep.)")):
        for arm, runs in runs_by_arm.items():
            steps = np.asarray(runs[0]["steps"])
            curves = np.asarray([r[key] for r in runs], dtype=float)
            mean, std = np.nanmean(curves, 0), np.nanstd(curves, 0)
            ax.plot(steps, mean, label=arm)
            ax.fill_between(steps, mean - std, mean + std, alpha=0.2)
        ax.set(title=title, xlabel="samples / env steps", ylabel=ylabel)
        ax.grid(alpha=0.3)
        if runs_by_arm:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    import torch

    from murmura.learners.gbrl import gbrl_available

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 seed, short runs")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    out = args.out or (HERE if not args.quick else HERE / "quick")
    out.mkdir(parents=True, exist_ok=True)
    seeds = [0] if args.quick else [0, 1, 2]
    samples, steps = (512, 1024) if args.quick else (20_000, 100_000)
    have_gbrl = gbrl_available()
    start = time.perf_counter()
    bandit = {arm: [bandit_run(arm, s, samples) for s in seeds] for arm in BANDIT_ARMS
              if have_gbrl or arm != "gbt_gbrl"}
    cartpole: dict[str, list] = {}
    try:
        import gymnasium  # noqa: F401
    except ImportError:
        print("gymnasium missing (pip install murmura[rl]): CartPole pilot skipped")
    else:
        cartpole = {arm: [cartpole_run(arm, s, steps) for s in seeds] for arm in CARTPOLE_ARMS
                    if have_gbrl or arm != "gbrl"}
    summary = summarise(bandit, cartpole)
    stem = "gbrl_quick" if args.quick else "gbrl"
    (out / "results").mkdir(exist_ok=True)
    (out / "results" / f"{stem}.json").write_text(json.dumps(
        {"seeds": seeds, "bandit_samples": samples, "cartpole_steps": steps,
         "gbrl_library": have_gbrl, **summary, "runs": {"bandit": bandit, "cartpole": cartpole},
         "seconds": time.perf_counter() - start}, indent=1))
    plot(bandit, cartpole, out / f"{stem}.png")
    for pilot, arms in summary["table"].items():
        for arm, row in arms.items():
            print(f"{pilot:9s} {arm:14s} " + "  ".join(
                f"{key} {v['mean']:.3f} ± {v['std']:.3f}" for key, v in row.items()))
    print("verdict", summary["verdict"])
    print(f"total {time.perf_counter() - start:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
