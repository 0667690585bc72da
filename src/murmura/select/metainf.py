"""MetaInf: a meta-learned selector of inference-acceleration methods (Du, Wang, Farhan et al.,
"MetaInf: Meta-Learning for Speeding Up Large Model Inference in Decentralized Environments",
arXiv 2508.09194, COLM 2025; spec ``federated.md`` section 15).

Offline, one regression is fitted on historical runs,

    g([e_task, onehot(m)]) -> performance of method m on the task       (log throughput here)

and online, for a new task, the method with the best predicted performance is chosen, or, under
a cost budget ``B``, the best among those whose predicted cost (predicted runtime x hardware
price) fits: ``m* = argmax_{m : c_m <= B} g(task, m)``. Zero-shot: the new task is never run.

**Deviation**: the paper's ``e_task`` are LLM text embeddings of the model card, the hardware
and the dataset; offline there is no such encoder, so the task is its numeric architecture,
hardware and workload features (:data:`murmura.select.table.FEATURE_NAMES`), standardised. The
regression is a ReLU MLP in torch (two hidden layers of 64, full-batch Adam, L2 ``alpha``) on
standardised targets.

>>> import numpy as np
>>> X = np.array([[0.0], [1.0], [2.0], [3.0]] * 5)
>>> perf = np.where(X < 1.5, [[2.0, 1.0]], [[1.0, 2.0]])   # method 0 below 1.5, 1 above
>>> MetaInf(seed=0).fit(X, ["a", "b"], perf).select(X[:4]).tolist()
[0, 0, 1, 1]
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from murmura.select.baselines import (
    ALORS,
    ISAC,
    BestMethodClassifier,
    GlobalBest,
    RandomChoice,
    Selector,
    _standardise,
)
from murmura.select.table import (
    TimingTable,
    budgeted_argmax,
    check_table,
    mean_regret,
    regrets,
    selection_accuracy,
    speedup,
)


def fit_regression(inputs: torch.Tensor, target: torch.Tensor, hidden: Sequence[int],
                   alpha: float, steps: int, lr: float,
                   seed: int) -> tuple[torch.nn.Sequential, list[float]]:
    """The meta-learner g: a ReLU MLP fitted to ``target`` by full-batch Adam on the squared
    error plus ``alpha/2 * |W|^2`` (sklearn's ``MLPRegressor`` objective); returns the network
    and the loss every 100 steps."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        widths = [inputs.shape[1], *hidden]
        layers: list[torch.nn.Module] = []
        for a, b in zip(widths, widths[1:]):
            layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
        net = torch.nn.Sequential(*layers, torch.nn.Linear(widths[-1], 1)).double()
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    weights = [p for name, p in net.named_parameters() if name.endswith("weight")]
    losses = []
    threads = torch.get_num_threads()
    # matrices this small run 5x slower on 2 threads of a busy machine than on one
    torch.set_num_threads(1)
    try:
        for step in range(steps):
            optimizer.zero_grad()
            error = ((net(inputs)[:, 0] - target) ** 2).mean() / 2
            loss = error + alpha / 2 * sum((w ** 2).sum() for w in weights) / len(target)
            loss.backward()
            optimizer.step()
            if step % 100 == 0 or step == steps - 1:
                losses.append(float(error.detach()))
    finally:
        torch.set_num_threads(threads)
    return net, losses


class MetaInf(Selector):
    """The regression ``g(task, method) -> performance`` and its (budgeted) argmax.

    ``performance`` may hold NaN for runs never made: they are left out of the regression
    (the table need not be complete, unlike the classifiers')."""

    name = "metainf"

    def __init__(self, hidden: Sequence[int] = (64, 64), alpha: float = 1e-4,
                 steps: int = 2000, lr: float = 3e-3, seed: int = 0):
        if not hidden or min(hidden) < 1:
            raise ValueError(f"hidden={hidden} must be a non-empty list of layer widths >= 1")
        if alpha < 0 or steps < 1 or not lr > 0:
            raise ValueError(f"alpha={alpha} must be >= 0, steps={steps} >= 1 and lr={lr} > 0")
        self.hidden, self.alpha, self.steps, self.lr = tuple(hidden), alpha, steps, lr
        self.seed = seed

    def _pairs(self, X: np.ndarray) -> torch.Tensor:
        """Rows ``[standardised task, onehot(m)]`` for every (task, method), task-major."""
        Z = (X - self.center_) / self.scale_
        m = len(self.methods_)
        pairs = np.concatenate([np.repeat(Z, m, 0), np.tile(np.eye(m), (len(Z), 1))], 1)
        return torch.as_tensor(pairs, dtype=torch.float64)

    def fit(self, tasks: Any, methods: Any, performance: Any) -> MetaInf:
        X, self.methods_, P = check_table(tasks, methods, performance, allow_missing=True)
        self.features_ = X
        seen = ~np.isnan(P.ravel())
        if not seen.any():
            raise ValueError("performance is all NaN: nothing to learn from")
        self.center_, self.scale_ = _standardise(X)
        y = P.ravel()[seen]
        self.y_mean_, self.y_scale_ = float(y.mean()), float(y.std() or 1.0)
        inputs = self._pairs(X)[torch.as_tensor(seen)]
        target = torch.as_tensor((y - self.y_mean_) / self.y_scale_)
        self.net_, self.train_loss_ = fit_regression(inputs, target, self.hidden, self.alpha,
                                                     self.steps, self.lr, self.seed)
        return self

    def predict(self, tasks: Any) -> np.ndarray:
        """Predicted performance ``[n_tasks, n_methods]``."""
        X = self._check(tasks)
        with torch.no_grad():
            g = self.net_(self._pairs(X))[:, 0].numpy().reshape(len(X), len(self.methods_))
        return self.y_mean_ + self.y_scale_ * g

    def select(self, tasks: Any, budget: float | None = None, work: Any = None,
               price: Any = 1.0) -> np.ndarray:
        """The chosen method per task. With ``budget``, performance is read as log
        throughput: a method's predicted cost is ``work / exp(predicted) * price`` (``work``:
        tokens per task; ``price``: per second, per task or per (task, method))."""
        predicted = self.predict(tasks)
        if budget is None:
            return predicted.argmax(1)
        if work is None:
            raise ValueError("a budget needs work (the tokens of each task) to turn predicted "
                             "throughput into a runtime")
        work = np.broadcast_to(np.asarray(work, float).reshape(-1, 1), predicted.shape)
        price = np.asarray(price, float)
        price = np.broadcast_to(price.reshape(-1, 1) if price.ndim == 1 else price,
                                predicted.shape)
        return budgeted_argmax(predicted, work / np.exp(predicted) * price, budget)


SELECTORS = ("metainf", "global_best", "random", "random_forest", "gradient_boosting", "isac",
             "alors")


_FACTORIES = {
    "metainf": lambda seed: MetaInf(seed=seed),
    "global_best": lambda seed: GlobalBest("mean"),
    "random": lambda seed: RandomChoice(seed),
    "random_forest": lambda seed: BestMethodClassifier("random_forest", seed),
    "gradient_boosting": lambda seed: BestMethodClassifier("gradient_boosting", seed),
    "isac": lambda seed: ISAC(8, seed),
    "alors": lambda seed: ALORS(3, seed),
}


def make_selector(name: str, seed: int = 0) -> Selector:
    """A selector of :data:`SELECTORS` by name, with its default settings and ``seed``."""
    if name not in _FACTORIES:
        raise ValueError(f"selector {name!r}: choose one of {', '.join(SELECTORS)}")
    return _FACTORIES[name](seed)


def evaluate(selector: Selector, train: TimingTable, test: TimingTable,
             budget: float | None = None, near: float = 0.05) -> dict[str, float]:
    """Fit on ``train``, choose on ``test``'s tasks, score the choices against the measured
    best: selection accuracy, mean regret (log throughput), the share within ``near`` (5%) of
    the best, the geometric-mean speed-up over ``none`` (and the oracle's), and with a budget
    (core-seconds) the share of choices whose measured cost fits."""
    start = time.perf_counter()
    selector.fit(train.features, train.methods, train.log_tps)
    if budget is not None and isinstance(selector, MetaInf):
        chosen = selector.select(test.features, budget, test.tokens, test.price)
    else:
        chosen = selector.select(test.features)
    none = test.methods.index("none") if "none" in test.methods else 0
    P = test.log_tps
    out = {"selection_accuracy": selection_accuracy(P, chosen),
           "mean_regret": mean_regret(P, chosen),
           "near_best_accuracy": float(np.mean(regrets(P, chosen) <= np.log1p(near))),
           "speedup_over_none": speedup(P, chosen, none),
           "oracle_speedup_over_none": speedup(P, P.argmax(1), none),
           "seconds": time.perf_counter() - start}
    if budget is not None:
        cost = test.seconds * test.price[:, None]
        out["within_budget"] = float(np.mean(cost[np.arange(len(P)), chosen] <= budget))
    return out


def _register_kind() -> None:
    from murmura.runner.kinds import KINDS

    @KINDS.register("metainf", "MetaInf and its baselines selecting an inference-acceleration "
                    "method on held-out decoder timings: accuracy and regret per selector",
                    overwrite=True)
    def metainf_kind(context, selectors: Sequence[str] = SELECTORS, test_fraction: float = 0.25,
                     budget: float | None = None, data: str | None = None):
        """Split the committed decoder timings (or the CSV ``data``) into train and test tasks
        by the experiment's seed, fit each selector (seeded alike) and record its held-out
        scores: one record per selector, ``round`` = its index in ``selectors``. ``budget``
        (core-seconds per task) filters MetaInf's choices and adds ``within_budget`` (the share
        of choices whose measured cost fits) to every record; with one hardware price per task
        it never changes a choice (there the fastest method is also the cheapest)."""
        from murmura.select.table import load_timings, split_tasks

        names = [selectors] if isinstance(selectors, str) else list(selectors)
        for name in names:
            if name not in SELECTORS:
                raise ValueError(f"selector {name!r}: choose from {', '.join(SELECTORS)}")
        table = load_timings(data)
        train_index, test_index = split_tasks(len(table), test_fraction, context.seed)
        train, test = table.subset(train_index), table.subset(test_index)
        summary: dict[str, Any] = {}
        for i, name in enumerate(names):
            scores = evaluate(make_selector(name, context.seed), train, test, budget)
            summary[name] = scores
            yield {"round": i, **scores}
        return {"selectors": names, "train_tasks": len(train), "test_tasks": len(test),
                "methods": list(table.methods), "scores": summary}


_register_kind()
