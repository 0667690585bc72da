"""Federated black-box (zeroth-order) optimization: clients can only query their own ``f_i``.

A separate tool from the swarm engine (spec ``federated.md`` section 9 (f)): a client's state
here is a history of queries and surrogate models, not a ``[d]`` vector laid out like model
parameters. Problems (:mod:`~murmura.blackbox.problems`), surrogates
(:mod:`~murmura.blackbox.surrogates`), methods registered in ``BLACKBOX``
(:mod:`~murmura.blackbox.fzoos`: ``fzoos``; :mod:`~murmura.blackbox.rgf`: ``fedzo``,
``scaffold_zo``, ``fedprox_zo``) and
the driver :func:`fed_minimize` (:func:`fed_rounds`, one round at a time; the
``fed_blackbox`` kind runs it from a TOML file, :mod:`~murmura.blackbox.kind`).

>>> from murmura.blackbox import BLACKBOX
>>> BLACKBOX.names()
['fedprox_zo', 'fedzo', 'fzoos', 'scaffold_zo']
"""

import murmura.blackbox.kind  # noqa: F401  (registers the fed_blackbox kind)
from murmura.blackbox.driver import Result, fed_minimize, fed_rounds
from murmura.blackbox.fzoos import FZooS
from murmura.blackbox.methods import BLACKBOX, Method, Oracle, Run
from murmura.blackbox.problems import FederatedProblem, Quadratic
from murmura.blackbox.rgf import FedProxZO, FedZO, ScaffoldZO

__all__ = [
    "BLACKBOX", "FZooS", "FedProxZO", "FedZO", "FederatedProblem", "Method", "Oracle",
    "Quadratic", "Result", "Run", "ScaffoldZO", "fed_minimize", "fed_rounds",
]
