"""GBRL (spec federated.md §13): the tree step, GAE, the PPO output gradient, learning, the kind.

The tree tests, the bandit tests and the PPO pieces need neither gymnasium nor gbrl; tests that
do use ``pytest.importorskip``.
"""

from __future__ import annotations

import importlib.util
import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import murmura.learners.gbrl  # noqa: F401  (registers the gbrl kind)
from murmura.config import Experiment
from murmura.learners.gbrl import GradientBoostedTrees, TreeActorCritic, clip_per_sample
from murmura.learners.ppo import (
    MLPActorCritic,
    PPOConfig,
    RewardScaler,
    gae,
    output_gradients,
    ppo_loss,
    sample_actions,
    train_ppo,
)
from murmura.learners.rl_envs import ContextualBandit
from murmura.runner import run_experiment

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny networks: a second intra-op thread only adds synchronisation (8x slower here)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

X4 = np.array([[0.0], [1.0], [2.0], [3.0]])
G4 = np.array([[1.0, 0.0], [3.0, 0.0], [-2.0, 1.0], [-4.0, 1.0]])


# --- the tree step ------------------------------------------------------------------------------
def test_one_depth_one_tree_by_hand():
    trees = GradientBoostedTrees(n_features=1, output_dim=2, learning_rate=[0.5, 0.1],
                                 max_depth=1, bias=[1.0, -1.0])
    assert trees.predict(X4).tolist() == [[1.0, -1.0]] * 4
    trees.step(X4, G4)
    # the best L2 split is x <= 1.5: leaves hold the mean gradients (2, 0) and (-3, 1)
    expected = np.array([[1 - 0.5 * 2, -1 - 0.1 * 0]] * 2 + [[1 + 0.5 * 3, -1 - 0.1 * 1]] * 2)
    np.testing.assert_allclose(trees.predict(X4), expected)
    trees.step(X4, G4)  # the same tree again: the prediction moves by -lr * leaf once more
    np.testing.assert_allclose(trees.predict(X4) - expected, expected - [1.0, -1.0])
    assert trees.n_trees == 2
    # between the training points the split threshold decides
    np.testing.assert_allclose(trees.predict([[1.4], [1.6]])[:, 0], [-1.0, 4.0])


def test_sklearn_backend_predicts_the_sum_of_its_regressors():
    from sklearn.tree import DecisionTreeRegressor

    rng = np.random.default_rng(0)
    lrs = np.array([0.1, 0.2, 0.3])
    trees = GradientBoostedTrees(n_features=4, output_dim=3, learning_rate=lrs, max_depth=3)
    X_test, reference = rng.normal(size=(50, 4)), np.zeros((50, 3))
    for k in range(40):  # past the initial capacity of 16 trees
        X, g = rng.normal(size=(32, 4)), rng.normal(size=(32, 3))
        trees.step(X, g)
        reference -= lrs * DecisionTreeRegressor(max_depth=3, random_state=k).fit(X, g).predict(
            X_test)
    np.testing.assert_allclose(trees.predict(X_test), reference, atol=1e-12)


def test_gbrl_backend_fits_the_same_depth_one_tree():
    pytest.importorskip("gbrl")
    trees = GradientBoostedTrees(n_features=1, output_dim=2, learning_rate=[0.5, 0.1],
                                 max_depth=1, backend="gbrl", bias=[1.0, -1.0])
    trees.step(X4, G4)  # the same split and leaves as the sklearn backend's
    np.testing.assert_allclose(trees.predict(X4), [[0.0, -1.0]] * 2 + [[2.5, -1.1]] * 2,
                               atol=1e-6)
    cosine = GradientBoostedTrees(n_features=1, output_dim=2, learning_rate=0.5, max_depth=2,
                                  backend="gbrl", split_score="cosine", grow_policy="oblivious")
    cosine.step(X4, G4)
    assert cosine.n_trees == 1 and np.isfinite(cosine.predict(X4)).all()


def test_per_sample_clipping_rescales_long_rows_only():
    grads = np.array([[3.0, 4.0], [0.3, 0.4]])
    np.testing.assert_allclose(clip_per_sample(grads, 1.0), [[0.6, 0.8], [0.3, 0.4]])
    assert clip_per_sample(grads, None) is grads
    ac = TreeActorCritic(n_features=1, n_actions=2, policy_lr=1.0, value_lr=1.0, max_depth=1,
                         max_policy_grad_norm=1.0, max_value_grad_norm=0.5)
    X = np.zeros((2, 1))
    ac.apply(X, ac.forward(X), torch.tensor([[3.0, 4.0, -2.0], [3.0, 4.0, -2.0]]))
    np.testing.assert_allclose(ac.forward(X).detach().numpy()[0], [-0.6, -0.8, 0.5], rtol=1e-6)


# --- GAE and the PPO loss -----------------------------------------------------------------------
def test_gae_on_a_three_step_rollout_by_hand():
    # one env; the episode ends after step 1, so step 1 bootstraps nothing and step 0 stops there
    rewards, values = [[1.0], [1.0], [1.0]], [[0.5], [0.4], [0.3]]
    adv, ret = gae(np.array(rewards), np.array(values), np.array([[0.0], [1.0], [0.0]]),
                   np.array([0.2]), gamma=0.9, lam=0.8)
    a2 = 1 + 0.9 * 0.2 - 0.3          # 0.88
    a1 = 1 - 0.4                      # 0.6
    a0 = (1 + 0.9 * 0.4 - 0.5) + 0.9 * 0.8 * a1
    np.testing.assert_allclose(adv[:, 0], [a0, a1, a2])
    np.testing.assert_allclose(ret[:, 0], [a0 + 0.5, a1 + 0.4, a2 + 0.3])


def test_clipped_loss_output_gradient_by_hand():
    outputs = torch.zeros(2, 3, requires_grad=True)  # logits (0, 0): p = (1/2, 1/2); V = 0
    actions = torch.tensor([0, 0])
    # sample 0 at ratio 1 (unclipped); sample 1 at ratio e^0.5 > 1 + 0.2 with A > 0 (clipped)
    old = torch.log(torch.tensor([0.5, 0.5])) - torch.tensor([0.0, 0.5])
    loss, stats = ppo_loss(outputs, actions, old, torch.tensor([2.0, 1.0]),
                           torch.tensor([1.0, 3.0]), clip_range=0.2, ent_coef=0.0, vf_coef=0.5,
                           normalize_advantage=False)
    G = output_gradients(loss, outputs)
    # -A dρ/dlogits = -A ρ (onehot(a) - p) = -2 (1/2, -1/2); the clipped sample has none;
    # value: vf_coef * (V - R) per sample (the ½ MSE's 2 cancels)
    np.testing.assert_allclose(G.numpy(), [[-1.0, 1.0, -0.5], [0.0, 0.0, -1.5]], atol=1e-6)
    assert stats["clip_fraction"] == 0.5
    assert loss.item() == pytest.approx(-(2 + 1.2) / 2 + 0.5 * 0.5 * (1 + 9) / 2)


def test_entropy_bonus_gradient_and_advantage_normalization():
    outputs = torch.tensor([[math.log(3.0), 0.0, 0.0]], requires_grad=True)  # p = (3/4, 1/4)
    loss, _ = ppo_loss(outputs, torch.tensor([0]), torch.log(torch.tensor([0.75])),
                       torch.tensor([0.0]), torch.tensor([0.0]), ent_coef=1.0, vf_coef=0.0)
    # dH/dz_i = -p_i (log p_i + H); the loss carries -H
    p = np.array([0.75, 0.25])
    H = -(p * np.log(p)).sum()
    np.testing.assert_allclose(output_gradients(loss, outputs).numpy()[0, :2],
                               p * (np.log(p) + H), rtol=1e-5)
    # normalized advantages (2, 0) -> (+0.707, -0.707): scaling A changes nothing
    out = torch.zeros(2, 3, requires_grad=True)
    args = (torch.tensor([0, 1]), torch.log(torch.tensor([0.5, 0.5])))
    g1 = output_gradients(ppo_loss(out, *args, torch.tensor([2.0, 0.0]), torch.zeros(2))[0], out)
    g2 = output_gradients(ppo_loss(out, *args, torch.tensor([20.0, 10.0]), torch.zeros(2))[0],
                          out)
    np.testing.assert_allclose(g1.numpy(), g2.numpy(), atol=1e-5)


def test_reward_scaler_divides_by_the_return_std():
    scaler = RewardScaler(n_envs=2, gamma=0.0)
    for _ in range(200):
        scaled = scaler(np.array([1.0, 3.0]), np.array([False, False]))
    np.testing.assert_allclose(scaled, [1.0, 3.0], rtol=1e-2)  # std of {1, 3} is 1


def test_sampling_follows_the_softmax():
    logits = torch.log(torch.tensor([[0.2, 0.8]])).repeat(4000, 1)
    actions, logp = sample_actions(logits, np.random.default_rng(0))
    assert abs(actions.mean() - 0.8) < 0.03
    np.testing.assert_allclose(logp.numpy(), np.log(np.where(actions == 1, 0.8, 0.2)),
                               rtol=1e-5)


# --- learning ---------------------------------------------------------------------------------
class SignBandit:
    """One feature ±1; action 1 is rewarded when it is positive."""

    num_envs, n_features, n_actions = 16, 1, 2

    def reset(self, seed):
        self.rng = np.random.default_rng(seed)
        self.x = self.rng.choice([-1.0, 1.0], size=(16, 1))
        return self.x

    def step(self, actions):
        reward = (actions == (self.x[:, 0] > 0)).astype(float)
        final, self.x = self.x, self.rng.choice([-1.0, 1.0], size=(16, 1))
        return self.x, reward, np.ones(16, bool), np.zeros(16, bool), final


BANDIT_PPO = PPOConfig(n_steps=2, batch_size=16, n_epochs=2, gamma=0.0, gae_lambda=0.0,
                       normalize_reward=False)


@pytest.mark.parametrize("learner", ["trees", "mlp"])
def test_both_learners_learn_a_trivial_bandit(learner):
    model = (TreeActorCritic(1, 2, policy_lr=0.3, value_lr=0.1, seed=0) if learner == "trees"
             else MLPActorCritic(1, 2, lr=3e-3, seed=0))
    records = list(train_ppo(SignBandit(), model, BANDIT_PPO, 640, seed=0))
    first, last = records[0]["rollout_return"], np.mean([r["rollout_return"]
                                                         for r in records[-3:]])
    assert first < 0.7 and last > 0.9, (first, last)


def test_same_seed_same_run_other_seed_other_run():
    def run(seed):
        env = ContextualBandit(n_envs=32, task_seed=1)
        model = TreeActorCritic(env.n_features, env.n_actions, policy_lr=0.1, value_lr=0.1,
                                seed=seed)
        return [{k: v for k, v in r.items() if k != "seconds"}
                for r in train_ppo(env, model, BANDIT_PPO, 640, seed=seed)]

    assert run(3) == run(3)
    assert run(3) != run(4)
    mlp = [[r["policy_loss"] for r in train_ppo(SignBandit(), MLPActorCritic(1, 2, seed=5),
                                                BANDIT_PPO, 128, seed=5)] for _ in range(2)]
    assert mlp[0] == mlp[1]


def test_contextual_bandit_rule_and_encodings():
    bandit = ContextualBandit(n_envs=2, n_categories=8, task_seed=0, encoding="onehot")
    contexts = np.array([[1, 2, 3, 4, 5, 0], [1, 2, 4, 4, 5, 0]])
    best = bandit.optimal_action(contexts)
    assert best.tolist() == [bandit.table_a[1, 2], bandit.table_b[4, 5]]
    onehot = bandit.encode(contexts)
    assert onehot.shape == (2, 48) and onehot.sum(1).tolist() == [6.0, 6.0]
    assert onehot[0, 8 * 2 + 3] == 1.0  # feature 2, category 3
    X = bandit.reset(seed=0)
    _, reward, *_ = bandit.step(1 - (bandit.optimal_action(bandit.contexts) > 0))
    assert X.shape == (2, 48) and reward.shape == (2,)


# --- bad input --------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, match", [
    ({"learning_rate": 0.0}, "learning_rate must be > 0"),
    ({"learning_rate": [0.1, 0.2, 0.3]}, "one float or 2"),
    ({"backend": "xgboost"}, "choose one of sklearn, gbrl"),
    ({"split_score": "cosine"}, "use backend='gbrl'"),
    ({"max_depth": 0}, "max_depth must be a positive integer"),
    ({"bias": [0.0]}, "bias must have 2 values"),
])
def test_bad_tree_settings_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GradientBoostedTrees(**{"n_features": 1, "output_dim": 2, "learning_rate": 0.1,
                                **kwargs})


def test_bad_step_and_ppo_input_are_refused():
    trees = GradientBoostedTrees(n_features=1, output_dim=2, learning_rate=0.1)
    with pytest.raises(ValueError, match="grads has 3 columns, expected 2"):
        trees.step(X4, np.zeros((4, 3)))
    with pytest.raises(ValueError, match="grads has 3 rows"):
        trees.step(X4, np.zeros((3, 2)))
    with pytest.raises(ValueError, match="NaN"):
        trees.step(X4, np.full((4, 2), np.nan))
    with pytest.raises(ValueError, match="X has 2 columns, expected 1"):
        trees.predict(np.zeros((3, 2)))
    with pytest.raises(ValueError, match="n_actions must be an integer >= 2"):
        TreeActorCritic(n_features=1, n_actions=1)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        PPOConfig(batch_size=0)
    with pytest.raises(ValueError, match="gamma and gae_lambda"):
        PPOConfig(gamma=1.5)
    with pytest.raises(ValueError, match="share one"):
        gae(np.zeros((3, 2)), np.zeros((3, 1)), np.zeros((3, 2)), np.zeros(2), 0.9, 0.9)
    with pytest.raises(ValueError, match="total_steps must be a positive integer"):
        next(train_ppo(SignBandit(), MLPActorCritic(1, 2), BANDIT_PPO, 0))
    with pytest.raises(ValueError, match="encoding"):
        ContextualBandit(encoding="ordinal")


# --- gymnasium envs and the kind --------------------------------------------------------------
def test_gym_env_wrapper_and_its_errors():
    pytest.importorskip("gymnasium")
    from murmura.learners.rl_envs import GymVectorEnv

    frozen = GymVectorEnv("FrozenLake-v1", 2)
    X = frozen.reset(seed=0)
    assert X.shape == (2, 16) and X.sum(1).tolist() == [1.0, 1.0]  # one-hot states
    with pytest.raises(ValueError, match="needs a Discrete one"):
        GymVectorEnv("Pendulum-v1", 2)
    with pytest.raises(ValueError, match="not a gymnasium env"):
        GymVectorEnv("NoSuchEnv-v0", 2)


def _kind_run(tmp_path, name, **params):
    exp = Experiment.from_dict({"seed": 1, "rounds": 3, "kind": {
        "name": "gbrl", "env": "CartPole-v1", "total_steps": 3 * 8 * 32, "n_steps": 32,
        **params}, "output": {"plots": False, "report": False}})
    return run_experiment(exp, tmp_path / name, progress=False)


@pytest.mark.parametrize("learner, backend", [("trees", "sklearn"), ("mlp", "sklearn"),
                                              ("trees", "gbrl")])
def test_gbrl_kind_yields_one_record_per_rollout(tmp_path, learner, backend):
    pytest.importorskip("gymnasium")
    if backend == "gbrl":
        pytest.importorskip("gbrl")
    result = _kind_run(tmp_path, learner + backend, learner=learner, backend=backend)
    assert result.status == "completed", result.summary.get("message")
    assert [r["round"] for r in result.history] == [0, 1, 2]
    assert [r["env_steps"] for r in result.history] == [256, 512, 768]
    assert all(r["mean_return"] > 5 for r in result.history)  # CartPole's episodes last >= 8
    assert result.summary["simulation"]["learner"] == learner


def test_gbrl_kind_names_the_rl_extra_when_gymnasium_is_missing(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "gymnasium", None)  # import gymnasium now fails
    result = _kind_run(tmp_path, "nogym")
    assert result.status == "failed" and "pip install murmura[rl]" in result.summary["message"]
    monkeypatch.setitem(sys.modules, "gbrl", None)
    monkeypatch.setitem(sys.modules, "gbrl.models", None)
    result = _kind_run(tmp_path, "nogbrl", backend="gbrl")
    assert result.status == "failed" and "--no-deps gbrl==1.1.9" in result.summary["message"]
    with pytest.raises(ImportError, match="--no-deps gbrl"):
        GradientBoostedTrees(n_features=1, output_dim=2, learning_rate=0.1, backend="gbrl")
    result = _kind_run(tmp_path, "badlearner", learner="forest")
    assert result.status == "failed" and "choose trees or mlp" in result.summary["message"]


def test_example_toml_is_valid():
    exp = Experiment.from_toml(REPO / "examples" / "gbrl.toml").check()
    assert exp.kind.name == "gbrl"
    assert Experiment.from_toml_text(exp.to_toml()) == exp


# --- the experiment -------------------------------------------------------------------------------
def test_experiment_quick_mode_runs(tmp_path, monkeypatch):
    # run.py sets OMP_NUM_THREADS when loaded: put back whatever was there after the test
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    spec = importlib.util.spec_from_file_location("gbrl_run", REPO / "experiments/gbrl/run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--quick", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "gbrl_quick.png").exists()
    import json

    result = json.loads((tmp_path / "results" / "gbrl_quick.json").read_text())
    assert 0.0 <= result["table"]["bandit"]["gbt"]["average_reward"]["mean"] <= 1.0
    assert "bandit_gbt_beats_mlp" in result["verdict"]


# --- categorical observations: encodings, gbrl's categorical splits, the toy-text experiment ----
def test_state_id_encodings_by_hand():
    from murmura.learners.rl_envs import encode_states

    # FrozenLake 4x4: cell (row 1, col 2) is state 6
    assert encode_states([6, 0], 16, "codes").tolist() == [[6.0], [0.0]]
    onehot = encode_states([6, 0], 16, "onehot")
    assert onehot.shape == (2, 16) and np.flatnonzero(onehot[0]).tolist() == [6]
    with pytest.raises(ValueError, match=r"state ids must lie in \[0, 16\)"):
        encode_states([16], 16, "codes")
    with pytest.raises(ValueError, match="choose codes .* or onehot"):
        encode_states([1], 16, "ordinal")


def test_frozenlake_codes_follow_the_state_id():
    pytest.importorskip("gymnasium")
    from murmura.learners.rl_envs import GymVectorEnv

    codes = GymVectorEnv("FrozenLake-v1", 2, "codes", env_kwargs={"is_slippery": False})
    assert codes.reset(seed=0).tolist() == [[0.0], [0.0]] and codes.is_categorical
    X, *_ = codes.step(np.array([2, 1]))  # right -> state 1; down -> state 4
    assert X.tolist() == [[1.0], [4.0]]
    onehot = GymVectorEnv("FrozenLake-v1", 2, "onehot", env_kwargs={"is_slippery": False})
    onehot.reset(seed=0)
    X, *_ = onehot.step(np.array([2, 1]))
    assert [np.flatnonzero(row).tolist() for row in X] == [[1], [4]]
    assert not onehot.is_categorical
    with pytest.raises(ValueError, match=r"n_actions must be an integer in \[2, 4\]"):
        GymVectorEnv("FrozenLake-v1", 2, n_actions=5)
    with pytest.raises(ValueError, match="refuses env_kwargs"):
        GymVectorEnv("FrozenLake-v1", 2, env_kwargs={"slippery": False})


def test_minigrid_encoding_of_a_fake_observation_by_hand():
    from murmura.learners.rl_envs import encode_minigrid

    # a 1x2 view: a grey wall (object 2, colour 5, state 0), a closed yellow door (4, 4, 1)
    image = np.array([[[[2, 5, 0], [4, 4, 1]]]])
    assert encode_minigrid(image, [1], "codes").tolist() == [[2, 5, 0, 4, 4, 1, 1]]
    onehot = encode_minigrid(image, [1], "onehot")
    # blocks of 11 objects + 6 colours + 3 states per cell, then 4 directions
    assert onehot.shape == (1, 2 * 20 + 4)
    assert np.flatnonzero(onehot).tolist() == [2, 11 + 5, 17 + 0, 20 + 4, 20 + 11 + 4,
                                               20 + 17 + 1, 40 + 1]
    with pytest.raises(ValueError, match="out of range"):
        encode_minigrid(np.array([[[[11, 0, 0]]]]), [0], "codes")
    with pytest.raises(ValueError, match=r"need image \[n, W, H, 3\]"):
        encode_minigrid(np.zeros((1, 2, 2)), [0], "codes")


def test_minigrid_env_encodings():
    pytest.importorskip("gymnasium")
    pytest.importorskip("minigrid")
    from minigrid.core.constants import COLOR_TO_IDX, OBJECT_TO_IDX, STATE_TO_IDX

    from murmura.learners.rl_envs import MINIGRID_CHANNELS, GymVectorEnv

    assert MINIGRID_CHANNELS == (len(OBJECT_TO_IDX), len(COLOR_TO_IDX), len(STATE_TO_IDX))
    codes = GymVectorEnv("MiniGrid-Empty-5x5-v0", 2, "codes", n_actions=3)
    X = codes.reset(seed=0)
    assert X.shape == (2, 148) and codes.n_actions == 3 and codes.obs_type == "minigrid"
    assert X[0, 147] in (0, 1, 2, 3) and set(X[0, 0:147:3]) <= set(range(11))
    onehot = GymVectorEnv("MiniGrid-Empty-5x5-v0", 2, "onehot")
    assert onehot.reset(seed=0).sum(1).tolist() == [49 * 3 + 1] * 2 and onehot.n_actions == 7


def test_gbrl_categorical_split_isolates_one_code():
    pytest.importorskip("gbrl")
    X = np.array([[0.0], [1.0], [2.0], [3.0]])
    grads = np.array([[0.0], [0.0], [4.0], [0.0]])
    # equality splits: code 2 against the rest (no threshold split can do it at depth 1)
    trees = GradientBoostedTrees(n_features=1, output_dim=1, learning_rate=0.5, max_depth=1,
                                 backend="gbrl", categorical=True)
    trees.step(X, grads)
    np.testing.assert_allclose(trees.predict(X)[:, 0], [0.0, 0.0, -2.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(trees.predict([[7.0]]), [[0.0]], atol=1e-6)  # unseen code
    with pytest.raises(ValueError, match="non-negative integer codes"):
        trees.predict([[0.5]])
    with pytest.raises(ValueError, match="sklearn backend splits on thresholds only"):
        GradientBoostedTrees(n_features=1, output_dim=1, learning_rate=0.5, categorical=True)


def _frozenlake_run(tmp_path, name, **params):
    exp = Experiment.from_dict({"seed": 0, "rounds": 2, "kind": {
        "name": "gbrl", "env": "FrozenLake-v1", "total_steps": 2 * 8 * 16, "n_steps": 16,
        **params}, "output": {"plots": False, "report": False}})
    return run_experiment(exp, tmp_path / name, progress=False)


@pytest.mark.parametrize("learner, backend, obs_encoding, expected", [
    ("trees", "sklearn", "auto", "codes"), ("mlp", "sklearn", "auto", "onehot"),
    ("trees", "sklearn", "onehot", "onehot"), ("trees", "gbrl", "auto", "codes")])
def test_gbrl_kind_obs_encoding(tmp_path, learner, backend, obs_encoding, expected):
    pytest.importorskip("gymnasium")
    if backend == "gbrl":
        pytest.importorskip("gbrl")
    result = _frozenlake_run(tmp_path, learner + backend + obs_encoding, learner=learner,
                             backend=backend, obs_encoding=obs_encoding)
    assert result.status == "completed", result.summary.get("message")
    assert result.summary["simulation"]["obs_encoding"] == expected
    assert [r["env_steps"] for r in result.history] == [128, 256]


def test_gbrl_kind_refuses_bad_encodings(tmp_path):
    pytest.importorskip("gymnasium")
    result = _frozenlake_run(tmp_path, "ordinal", obs_encoding="ordinal")
    assert result.status == "failed" and "choose auto" in result.summary["message"]
    result = _kind_run(tmp_path, "boxcodes", obs_encoding="codes")  # CartPole: Box observations
    assert result.status == "failed" and "has Box ones: leave it auto" in result.summary["message"]
    result = _frozenlake_run(tmp_path, "actions", n_actions=9)
    assert result.status == "failed" and "n_actions must be an integer" in result.summary["message"]


def test_minigrid_names_its_install_when_missing(monkeypatch):
    pytest.importorskip("gymnasium")
    from murmura.learners.rl_envs import GymVectorEnv

    monkeypatch.setitem(sys.modules, "minigrid", None)
    with pytest.raises(ImportError, match="pip install minigrid"):
        GymVectorEnv("MiniGrid-Empty-5x5-v0", 1)


def _toytext_module():
    spec = importlib.util.spec_from_file_location("gbrl_toytext",
                                                  REPO / "experiments/gbrl/toytext.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("tasks", [["FrozenLake-4x4-slippery", "Taxi-v4"],
                                   ["MiniGrid-Empty-5x5"]])
def test_toytext_quick_mode_runs(tmp_path, monkeypatch, tasks):
    pytest.importorskip("gymnasium")
    if tasks[0].startswith("MiniGrid"):
        pytest.importorskip("minigrid")
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    import json

    assert _toytext_module().main(["--quick", "--out", str(tmp_path), "--tasks", *tasks]) == 0
    result = json.loads((tmp_path / "results" / "toytext_quick.json").read_text())
    assert (tmp_path / "toytext_quick.png").exists() and list(result["table"]) == tasks
    row = result["table"][tasks[0]]["trees_sklearn"]
    assert "final_success_rate" in row if tasks[0] != "Taxi-v4" else "final_success_rate" not in row
    assert all(arm in result["table"][tasks[-1]] for arm in ("trees_sklearn", "nn_ppo"))
