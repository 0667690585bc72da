"""PPO (clipped) whose update is written on the model's outputs, for trees and networks alike.

Spec ``federated.md`` section 13 (GBRL, Fuhrer, Tessler and Dalal, ICML 2025, arXiv
2407.08250), update rules of ``gbrl_sb3/algos/ppo.py`` (``train``): collect ``n_steps`` from
each of ``n_envs`` copies, GAE(γ, λ) advantages, then for each epoch and minibatch of ``B``
states ``θ = [logits | V]`` are the learner's outputs and

    L = -mean(min(ρA, clip(ρ, 1 ± ε)A)) - c_ent·mean(H) + c_v·½·mean((V - R)²),
    G = ∂L/∂θ(s_i) · B                        (per-sample output gradients, computed once)

:class:`~murmura.learners.gbrl.TreeActorCritic` fits one tree to ``G`` (functional gradient
descent); :class:`MLPActorCritic` backpropagates ``G / B`` through its network (the chain rule
gives the usual parameter gradient) and takes an Adam step. Advantages are normalized per
minibatch; rewards optionally scaled by the running standard deviation of the discounted return
(SB3's ``VecNormalize(norm_reward=True)``, on in gbrl's defaults); a truncated episode's reward
gets ``γ V(final observation)`` added (SB3's timeout bootstrap).

>>> adv, ret = gae(np.array([[1.0], [1.0]]), np.array([[0.5], [0.5]]), np.array([[0.0], [1.0]]),
...                np.array([9.0]), gamma=0.5, lam=1.0)
>>> adv[:, 0].tolist(), ret[:, 0].tolist()   # the episode ends at step 1: 9.0 is unused
([1.0, 0.5], [1.5, 1.0])
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch


@dataclass(frozen=True)
class PPOConfig:
    """PPO's knobs; the defaults are ``gbrl_sb3``'s CartPole-v1 settings (spec §13 (b)) with
    gbrl's default ``vf_coef`` 0.87."""

    n_steps: int = 128
    batch_size: int = 64
    n_epochs: int = 1
    gamma: float = 0.98
    gae_lambda: float = 0.8
    clip_range: float = 0.2
    ent_coef: float = 0.0
    vf_coef: float = 0.87
    normalize_advantage: bool = True
    normalize_reward: bool = True
    return_window: int = 100

    def __post_init__(self) -> None:
        for name in ("n_steps", "batch_size", "n_epochs", "return_window"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not (0 <= self.gamma <= 1 and 0 <= self.gae_lambda <= 1):
            raise ValueError(f"gamma and gae_lambda must lie in [0, 1], got {self.gamma}, "
                             f"{self.gae_lambda}")
        if not self.clip_range > 0 or self.ent_coef < 0 or self.vf_coef < 0:
            raise ValueError("clip_range must be > 0, ent_coef and vf_coef >= 0")


def gae(rewards: np.ndarray, values: np.ndarray, dones: np.ndarray, last_values: np.ndarray,
        gamma: float, lam: float) -> tuple[np.ndarray, np.ndarray]:
    """Generalized advantage estimation over a ``[T, n_envs]`` rollout.

    ``dones[t]`` marks an episode that ended at step ``t`` (nothing is bootstrapped past it);
    ``last_values`` is ``V`` of the observation after the last step. Returns ``(A, A + V)``:
    ``δ_t = r_t + γ V_{t+1} (1 - d_t) - V_t``, ``A_t = δ_t + γ λ (1 - d_t) A_{t+1}``.
    """
    rewards, values, dones = (np.asarray(a, np.float64) for a in (rewards, values, dones))
    if not rewards.shape == values.shape == dones.shape or rewards.ndim != 2:
        raise ValueError(f"rewards, values and dones must share one [T, n_envs] shape, got "
                         f"{rewards.shape}, {values.shape}, {dones.shape}")
    next_value = np.asarray(last_values, np.float64)
    if next_value.shape != rewards.shape[1:]:
        raise ValueError(f"last_values must have shape {rewards.shape[1:]}, got "
                         f"{next_value.shape}")
    advantages = np.zeros_like(rewards)
    running = np.zeros(rewards.shape[1])
    for t in reversed(range(len(rewards))):
        alive = 1.0 - dones[t]
        delta = rewards[t] + gamma * next_value * alive - values[t]
        running = delta + gamma * lam * alive * running
        advantages[t] = running
        next_value = values[t]
    return advantages, advantages + values


def ppo_loss(outputs: torch.Tensor, actions: torch.Tensor, old_log_prob: torch.Tensor,
             advantages: torch.Tensor, returns: torch.Tensor, clip_range: float = 0.2,
             ent_coef: float = 0.0, vf_coef: float = 0.87,
             normalize_advantage: bool = True) -> tuple[torch.Tensor, dict[str, float]]:
    """The clipped surrogate plus entropy and value terms on ``outputs = [logits | V]``."""
    logits, values = outputs[:, :-1], outputs[:, -1]
    log_probs = torch.log_softmax(logits, 1)
    log_prob = log_probs.gather(1, actions.long()[:, None])[:, 0]
    entropy = -(log_probs.exp() * log_probs).sum(1)
    if normalize_advantage and len(advantages) > 1:
        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    log_ratio = log_prob - old_log_prob
    ratio = log_ratio.exp()
    policy_loss = -torch.min(ratio * advantages,
                             ratio.clamp(1 - clip_range, 1 + clip_range) * advantages).mean()
    value_loss = 0.5 * ((values - returns) ** 2).mean()
    loss = policy_loss - ent_coef * entropy.mean() + vf_coef * value_loss
    with torch.no_grad():
        stats = {"policy_loss": float(policy_loss), "value_loss": float(value_loss),
                 "entropy": float(entropy.mean()),
                 "approx_kl": float(((ratio - 1) - log_ratio).mean()),
                 "clip_fraction": float(((ratio - 1).abs() > clip_range).float().mean())}
    return loss, stats


def output_gradients(loss: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
    """``G_i = ∂L/∂θ(s_i) · B``: the per-sample gradient of a batch-mean loss (gbrl's scale)."""
    (grad,) = torch.autograd.grad(loss, outputs, retain_graph=True)
    return grad * outputs.shape[0]


class RewardScaler:
    """Divide rewards by the running standard deviation of each copy's discounted return and
    clip to ±10 (SB3 ``VecNormalize``'s reward half)."""

    def __init__(self, n_envs: int, gamma: float, clip: float = 10.0) -> None:
        self.gamma, self.clip = gamma, clip
        self.discounted = np.zeros(n_envs)
        self.mean, self.var, self.count = 0.0, 1.0, 1e-4

    def __call__(self, reward: np.ndarray, done: np.ndarray) -> np.ndarray:
        self.discounted = self.discounted * self.gamma + reward
        batch_mean, batch_var, n = self.discounted.mean(), self.discounted.var(), len(reward)
        total = self.count + n
        delta = batch_mean - self.mean
        self.var = (self.var * self.count + batch_var * n
                    + delta ** 2 * self.count * n / total) / total
        self.mean, self.count = self.mean + delta * n / total, total
        self.discounted[done] = 0.0
        return np.clip(reward / math.sqrt(self.var + 1e-8), -self.clip, self.clip)


class ActorCriticLearner(Protocol):
    """What :func:`train_ppo` drives: outputs ``[n, n_actions + 1]`` and an update from the
    per-sample output gradients."""

    def forward(self, X: np.ndarray) -> torch.Tensor: ...

    def apply(self, X: np.ndarray, outputs: torch.Tensor,
              output_grads: torch.Tensor) -> None: ...

    @property
    def size(self) -> int: ...


def _mlp(sizes: Sequence[int], last_gain: float) -> torch.nn.Sequential:
    layers: list[torch.nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        linear = torch.nn.Linear(fan_in, fan_out)
        last = i == len(sizes) - 2
        # SB3's orthogonal initialisation: sqrt(2) hidden, 0.01 policy head, 1 value head
        torch.nn.init.orthogonal_(linear.weight, last_gain if last else math.sqrt(2))
        torch.nn.init.zeros_(linear.bias)
        layers += [linear] if last else [linear, torch.nn.Tanh()]
    return torch.nn.Sequential(*layers)


class MLPActorCritic:
    """NN-PPO's actor-critic: separate tanh MLPs for the logits and the value (SB3's
    ``MlpPolicy``, 64-64), Adam (eps 1e-5) and global gradient-norm clipping.

    >>> ac = MLPActorCritic(n_features=3, n_actions=2, seed=0)
    >>> tuple(ac.forward(np.zeros((5, 3), np.float32)).shape)
    (5, 3)
    """

    def __init__(self, n_features: int, n_actions: int, hidden: Sequence[int] = (64, 64),
                 lr: float = 3e-4, max_grad_norm: float | None = 0.5, seed: int = 0) -> None:
        if n_features < 1 or n_actions < 2 or not lr > 0:
            raise ValueError(f"need n_features >= 1, n_actions >= 2, lr > 0, got {n_features}, "
                             f"{n_actions}, {lr}")
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.actor = _mlp([n_features, *hidden, n_actions], 0.01)
            self.critic = _mlp([n_features, *hidden, 1], 1.0)
        self.parameters = [*self.actor.parameters(), *self.critic.parameters()]
        self.optimizer = torch.optim.Adam(self.parameters, lr=lr, eps=1e-5)
        self.max_grad_norm = max_grad_norm

    def forward(self, X: np.ndarray) -> torch.Tensor:
        x = torch.as_tensor(X, dtype=torch.float32)
        return torch.cat([self.actor(x), self.critic(x)], 1)

    def apply(self, X: np.ndarray, outputs: torch.Tensor, output_grads: torch.Tensor) -> None:
        self.optimizer.zero_grad()
        outputs.backward(output_grads / outputs.shape[0])
        if self.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(self.parameters, self.max_grad_norm)
        self.optimizer.step()

    @property
    def size(self) -> int:
        return sum(p.numel() for p in self.parameters)


def sample_actions(logits: torch.Tensor,
                   rng: np.random.Generator) -> tuple[np.ndarray, torch.Tensor]:
    """A categorical draw per row from ``rng`` (inverse CDF) and its log-probability."""
    log_probs = torch.log_softmax(logits.detach(), 1)
    cdf = np.cumsum(log_probs.double().exp().numpy(), 1)
    actions = np.minimum((cdf < rng.random(len(cdf))[:, None]).sum(1), cdf.shape[1] - 1)
    return actions, log_probs[torch.arange(len(actions)), torch.as_tensor(actions)]


def train_ppo(envs: Any, learner: ActorCriticLearner, config: PPOConfig, total_steps: int,
              seed: int = 0) -> Generator[dict[str, float], None, dict[str, Any]]:
    """Run PPO for ``total_steps`` environment steps (whole rollouts of ``n_steps × n_envs``),
    yielding one record per rollout; returns a summary.

    ``envs`` follows :mod:`murmura.learners.rl_envs`'s protocol. A record's ``mean_return`` is
    the mean undiscounted return of the last ``return_window`` finished episodes (SB3's
    ``ep_rew_mean``), ``rollout_return`` that of the episodes finished in this rollout.
    """
    if not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(f"total_steps must be a positive integer, got {total_steps!r}")
    n, T = envs.num_envs, config.n_steps
    per_rollout = n * T
    rng = np.random.default_rng(seed)
    scaler = RewardScaler(n, config.gamma) if config.normalize_reward else None
    X = envs.reset(seed=seed)
    episode_return = np.zeros(n)
    window: deque[float] = deque(maxlen=config.return_window)
    updates, start = 0, time.perf_counter()
    record: dict[str, float] = {}
    for rollout in range(math.ceil(total_steps / per_rollout)):
        obs = np.zeros((T, n, X.shape[1]), np.float32)
        actions, log_prob = np.zeros((T, n), np.int64), np.zeros((T, n), np.float32)
        values, rewards, dones = np.zeros((T, n)), np.zeros((T, n)), np.zeros((T, n))
        finished: list[float] = []
        for t in range(T):
            with torch.no_grad():
                out = learner.forward(X).detach()
            action, logp = sample_actions(out[:, :-1], rng)
            X_next, reward, terminated, truncated, final = envs.step(action)
            done = np.asarray(terminated) | np.asarray(truncated)
            episode_return += reward
            finished += episode_return[done].tolist()
            episode_return[done] = 0.0
            if scaler is not None:
                reward = scaler(reward, done)
            timeout = np.flatnonzero(np.asarray(truncated) & ~np.asarray(terminated))
            if len(timeout):
                with torch.no_grad():
                    reward = reward.copy()
                    reward[timeout] += config.gamma * learner.forward(final[timeout])[:, -1]\
                        .double().numpy()
            obs[t], actions[t], log_prob[t] = X, action, logp.numpy()
            values[t], rewards[t], dones[t] = out[:, -1].double().numpy(), reward, done
            X = X_next
        window.extend(finished)
        with torch.no_grad():
            last_values = learner.forward(X)[:, -1].double().numpy()
        advantages, returns = gae(rewards, values, dones, last_values, config.gamma,
                                  config.gae_lambda)
        flat = (obs.reshape(per_rollout, -1), torch.as_tensor(actions.reshape(-1)),
                torch.as_tensor(log_prob.reshape(-1)),
                torch.as_tensor(advantages.reshape(-1), dtype=torch.float32),
                torch.as_tensor(returns.reshape(-1), dtype=torch.float32))
        stats: dict[str, list[float]] = {}
        for _ in range(config.n_epochs):
            order = rng.permutation(per_rollout)
            for begin in range(0, per_rollout, config.batch_size):
                idx = order[begin:begin + config.batch_size]
                Xb = flat[0][idx]
                outputs = learner.forward(Xb)
                loss, batch_stats = ppo_loss(
                    outputs, *(a[torch.as_tensor(idx)] for a in flat[1:]),
                    clip_range=config.clip_range, ent_coef=config.ent_coef,
                    vf_coef=config.vf_coef, normalize_advantage=config.normalize_advantage)
                learner.apply(Xb, outputs, output_gradients(loss, outputs))
                updates += 1
                for key, value in batch_stats.items():
                    stats.setdefault(key, []).append(value)
        record = {"round": rollout, "env_steps": (rollout + 1) * per_rollout,
                  "mean_return": float(np.mean(window)) if window else math.nan,
                  "rollout_return": float(np.mean(finished)) if finished else math.nan,
                  "episodes": len(finished), "updates": updates, "model_size": learner.size,
                  **{key: float(np.mean(v)) for key, v in stats.items()},
                  "seconds": time.perf_counter() - start}
        yield record
    return {"env_steps": record.get("env_steps", 0), "rollouts": record.get("round", -1) + 1,
            "final_mean_return": record.get("mean_return", math.nan),
            "updates": updates, "seconds": time.perf_counter() - start}
