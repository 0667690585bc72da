"""GBRL on categorical observations: gymnasium's toy-text tasks and MiniGrid (spec federated.md
section 13; the paper's claim that trees beat NN actor-critics on categorical observations).
3 seeds, equal env steps per arm.

Protocol, fixed before any result was seen (murmura.learners.gbrl / ppo / rl_envs):

Tasks: FrozenLake-v1 (4x4, slippery, the default; 100-step limit), FrozenLake-v1 with
is_slippery=False, Taxi-v4 (200-step limit), MiniGrid-Empty-5x5-v0 (egocentric 7x7x3 view and
direction; restricted to its 3 movement actions left / right / forward, the only ones Empty
needs; 100-step limit). Observations: the trees see the integer codes (FrozenLake / Taxi: the
state id as one feature; MiniGrid: the 147 object / colour / state ids of the view and the
direction, 148 features), the MLP their one-hot (16, 500 and 984 inputs).

All arms, the existing CartPole arm's rollout settings (gbrl_sb3's CartPole-v1 ones, not tuned
here): 8 envs, n_steps 128, minibatch 64, 1 epoch, gamma 0.98, lambda 0.8, clip 0.2, no
entropy bonus, advantages normalized, reward normalization on. Arms: ``gbrl`` = the gbrl
library's shared tree actor-critic with the spec's defaults (oblivious, cosine score, 250
bins, depth 4) splitting the codes by equality (gbrl's categorical-feature path), policy lr
0.029, value lr 0.015, per-sample gradient clip 100 / 10, vf_coef 0.87; ``trees_sklearn`` =
the same with the native backend (greedy, L2 score, threshold splits on the codes);
``nn_ppo`` = 64-64 tanh actor and critic on the one-hot, Adam lr 1e-3, global gradient clip
0.5, vf_coef 1.0. Env steps per run, chosen from a speed measurement for the whole script to
take about 5 minutes on 2 cores (STEPS): 81,920 on slippery FrozenLake and Taxi, 20,480 on
deterministic FrozenLake and MiniGrid (whole rollouts of 1024). Measures: the mean return of
the last 100 training episodes at the end (SB3's ep_rew_mean) and, for FrozenLake and
MiniGrid, the success rate of those episodes (return > 0).

Criterion (the paper's claim): on a task, "trees beat the NN" if the gbrl arm's final mean
return exceeds nn_ppo's by more than the larger of the two standard deviations over seeds.

    .venv/bin/python experiments/gbrl/toytext.py
    .venv/bin/python experiments/gbrl/toytext.py --quick --out /tmp/tq
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # gbrl's OpenMP threads only contend here

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections import deque  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # the arms both GBRL scripts share (also when loaded by path)
    sys.path.insert(0, str(HERE))
from gbrl_arms import ARMS, mean_std, ppo_arm  # noqa: E402

# name: (env id, gym.make kwargs, actions kept (None: all), success is measured)
TASKS: dict[str, tuple[str, dict[str, Any], int | None, bool]] = {
    "FrozenLake-4x4-slippery": ("FrozenLake-v1", {}, None, True),
    "FrozenLake-4x4-deterministic": ("FrozenLake-v1", {"is_slippery": False}, None, True),
    "Taxi-v4": ("Taxi-v4", {}, None, False),
    "MiniGrid-Empty-5x5": ("MiniGrid-Empty-5x5-v0", {}, 3, True),
}
# from one timed seed per arm (2 shared cores): 10k steps took 0.6-0.9 s on FrozenLake, an 80k
# Taxi run 8-13 s, a 30k MiniGrid run 6-20 s (gbrl's string-feature path the slowest)
STEPS = {"FrozenLake-4x4-slippery": 81_920, "FrozenLake-4x4-deterministic": 20_480,
         "Taxi-v4": 81_920, "MiniGrid-Empty-5x5": 20_480}
QUICK_STEPS = 2048
WINDOW = 100


class EpisodeLog:
    """Wraps an env of rl_envs' protocol and keeps each finished episode's return."""

    def __init__(self, envs: Any) -> None:
        self.envs, self.num_envs, self.n_actions = envs, envs.num_envs, envs.n_actions
        self.returns: list[float] = []
        self._running = np.zeros(envs.num_envs)

    def reset(self, seed: int) -> np.ndarray:
        self._running[:] = 0.0
        return self.envs.reset(seed=seed)

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, ...]:
        out = self.envs.step(actions)
        self._running += out[1]
        done = np.asarray(out[2]) | np.asarray(out[3])
        self.returns += self._running[done].tolist()
        self._running[done] = 0.0
        return out

    def close(self) -> None:
        self.envs.close()


def task_run(task: str, arm: str, seed: int, steps: int) -> dict[str, Any]:
    from murmura.learners.ppo import train_ppo
    from murmura.learners.rl_envs import GymVectorEnv

    env_id, kwargs, n_actions, _ = TASKS[task]
    env = GymVectorEnv(env_id, 8, encoding="onehot" if arm == "nn_ppo" else "codes",
                       n_actions=n_actions, env_kwargs=kwargs)
    learner, config = ppo_arm(arm, env.n_features, env.n_actions, seed, categorical=True)
    log = EpisodeLog(env)
    start = time.perf_counter()
    records = list(train_ppo(log, learner, config, steps, seed=seed))
    log.close()
    last = np.asarray(log.returns[-WINDOW:]) if log.returns else np.full(1, np.nan)
    return {"steps": [r["env_steps"] for r in records],
            "mean_return": [r["mean_return"] for r in records],
            "success_rate": _success_curve(log.returns, records),
            "final_mean_return": float(last.mean()),
            "final_success_rate": float((last > 0).mean()), "episodes": len(log.returns),
            "model_size": learner.size, "seconds": time.perf_counter() - start}


def _success_curve(returns: list[float], records: list[dict[str, Any]]) -> list[float]:
    """The success rate of the last WINDOW episodes after each rollout."""
    curve, window, seen = [], deque(maxlen=WINDOW), 0
    for record in records:
        window.extend(returns[seen:seen + record["episodes"]])
        seen += record["episodes"]
        curve.append(float(np.mean(np.asarray(window) > 0)) if window else float("nan"))
    return curve


def summarise(runs: dict[str, dict[str, list]]) -> dict[str, Any]:
    table: dict[str, Any] = {}
    verdict: dict[str, str] = {}
    for task, by_arm in runs.items():
        keys = ["final_mean_return", "seconds"] + (["final_success_rate"] if TASKS[task][3]
                                                   else [])
        table[task] = {arm: {key: mean_std([r[key] for r in rs]) for key in keys}
                       for arm, rs in by_arm.items()}
        if "gbrl" in by_arm and "nn_ppo" in by_arm:
            tree, nn = (table[task][arm]["final_mean_return"] for arm in ("gbrl", "nn_ppo"))
            margin = max(tree["std"], nn["std"])
            verdict[task] = ("trees beat the NN" if tree["mean"] - nn["mean"] > margin else
                             "the NN beats the trees" if nn["mean"] - tree["mean"] > margin
                             else "within noise")
    return {"table": table, "verdict": verdict}


def plot(runs: dict[str, dict[str, list]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(runs), figsize=(4 * len(runs), 3.6), squeeze=False)
    for ax, (task, by_arm) in zip(axes[0], runs.items()):
        for arm, rs in by_arm.items():
            steps = np.asarray(rs[0]["steps"])
            curves = np.asarray([r["mean_return"] for r in rs], dtype=float)
            with warnings.catch_warnings():  # NaN before the first episode ends (Taxi: 200 steps)
                warnings.simplefilter("ignore", RuntimeWarning)
                mean, std = np.nanmean(curves, 0), np.nanstd(curves, 0)
            ax.plot(steps, mean, label=arm)
            ax.fill_between(steps, mean - std, mean + std, alpha=0.2)
        ax.set(title=task, xlabel="env steps", ylabel="mean return (last 100 ep.)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    import torch

    from murmura.learners.gbrl import gbrl_available

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 seed, 2048 steps")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--tasks", nargs="*", default=list(TASKS), choices=list(TASKS))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    out = args.out or (HERE if not args.quick else HERE / "quick")
    (out / "results").mkdir(parents=True, exist_ok=True)
    seeds = [0] if args.quick else [0, 1, 2]
    arms = [arm for arm in ARMS if gbrl_available() or arm != "gbrl"]
    tasks = list(args.tasks)
    try:
        import minigrid  # noqa: F401
    except ImportError:
        print("minigrid missing (pip install minigrid): MiniGrid skipped")
        tasks = [t for t in tasks if not TASKS[t][0].startswith("MiniGrid")]
    start = time.perf_counter()
    runs: dict[str, dict[str, list]] = {}
    for task in tasks:
        steps = QUICK_STEPS if args.quick else STEPS[task]
        runs[task] = {arm: [task_run(task, arm, s, steps) for s in seeds] for arm in arms}
        print(f"{task}: {time.perf_counter() - start:.0f}s", flush=True)
    summary = summarise(runs)
    stem = "toytext_quick" if args.quick else "toytext"
    (out / "results" / f"{stem}.json").write_text(json.dumps(
        {"seeds": seeds, "steps": {t: QUICK_STEPS if args.quick else STEPS[t] for t in tasks},
         "arms": arms, **summary, "runs": runs, "seconds": time.perf_counter() - start},
        indent=1))
    plot(runs, out / f"{stem}.png")
    for task, by_arm in summary["table"].items():
        for arm, row in by_arm.items():
            print(f"{task:28s} {arm:14s} " + "  ".join(
                f"{key} {v['mean']:.3f} ± {v['std']:.3f}" for key, v in row.items()))
    print("verdict", summary["verdict"])
    print(f"total {time.perf_counter() - start:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
