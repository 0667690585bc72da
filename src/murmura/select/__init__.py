"""Meta-learned selection of an inference-acceleration method: MetaInf (Du et al., arXiv
2508.09194, COLM 2025; spec ``federated.md`` section 15) and its baselines.

No method wins everywhere when serving a decoder: a KV cache, chunked prefill, a prefix cache
shared across the batch, or all of them. MetaInf learns, from past runs, one regression
``g(task features, method) -> log throughput`` and picks its argmax for a new task (under a
cost budget, among the methods whose predicted cost fits), without running the task.

* :mod:`murmura.select.timings`: the offline data, real timings of a small random-weight
  GPT-style decoder on this machine's CPU (a proxy for LLMs on GPUs), committed as
  ``data/decoder_timings.csv``.
* :mod:`murmura.select.table`: the task x method table, its loading and the held-out metrics
  (selection accuracy, regret, speed-up).
* :mod:`murmura.select.metainf`: :class:`MetaInf` and the ``metainf`` experiment kind.
* :mod:`murmura.select.baselines`: global-best, random, random-forest and gradient-boosting
  classifiers of the best method, ISAC and ALORS.

>>> from murmura.select import load_timings, make_selector, split_tasks, evaluate
>>> table = load_timings()
>>> train, test = (table.subset(i) for i in split_tasks(len(table), 0.25, seed=0))
>>> scores = evaluate(make_selector("global_best"), train, test)
>>> 0 <= scores["selection_accuracy"] <= 1
True
"""

from murmura.select.baselines import (
    ALORS,
    ISAC,
    BestMethodClassifier,
    GlobalBest,
    RandomChoice,
    Selector,
)
from murmura.select.metainf import SELECTORS, MetaInf, evaluate, make_selector
from murmura.select.table import (
    FEATURE_NAMES,
    TimingTable,
    budgeted_argmax,
    load_timings,
    mean_regret,
    selection_accuracy,
    speedup,
    split_tasks,
)
from murmura.select.timings import METHODS, measure

__all__ = [
    "ALORS", "FEATURE_NAMES", "ISAC", "METHODS", "SELECTORS", "BestMethodClassifier",
    "GlobalBest", "MetaInf", "RandomChoice", "Selector", "TimingTable", "budgeted_argmax",
    "evaluate", "load_timings", "make_selector", "mean_regret", "measure", "selection_accuracy",
    "speedup", "split_tasks",
]
