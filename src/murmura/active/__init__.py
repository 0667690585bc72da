"""Federated active learning: KAFAL (Cao, Shi, Yu, Wang and Tao, "Knowledge-Aware Federated
Active Learning with Non-IID Data", ICCV 2023, arXiv 2211.13579; code github.com/ycao5602/KAFAL;
specification ``specs/federated.md`` section 8).

* :mod:`murmura.active.kcfu`: KCFU, the client loss, as the tasks ``kcfu`` (balanced softmax +
  distillation from the received model on mixed-up unlabelled samples) and
  ``balanced_softmax``;
* :mod:`murmura.active.acquisition`: per-client acquisition functions, KSAS (symmetric KL of
  the logit-adjusted local and global predictions), entropy and random, and the top-``b`` pick;
* :mod:`murmura.active.kafal`: the registered algorithm ``kafal`` (FedAvg by labelled pool
  sizes, each client's local model kept for KSAS);
* :func:`run_active_learning`: the loop of training cycles and acquisitions over
  labelled/unlabelled pools.
"""

from murmura.active.acquisition import ACQUISITIONS, KSAS, Entropy, Random, top_b
from murmura.active.kafal import FinalRoundAll, KeepLocal
from murmura.active.kcfu import KCFU, BalancedSoftmax
from murmura.active.loop import ActiveLearningResult, initial_pools, run_active_learning

__all__ = ["ACQUISITIONS", "KCFU", "KSAS", "ActiveLearningResult", "BalancedSoftmax", "Entropy",
           "FinalRoundAll", "KeepLocal", "Random", "initial_pools", "run_active_learning",
           "top_b"]
