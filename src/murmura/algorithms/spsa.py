"""Just One Byte: distributed zeroth-order training with shared randomness (spec section 7).

Zelikman, Huang, Liang, Haber and Goodman, "Just One Byte (per gradient): A Note on
Low-Bandwidth Decentralized Language Model Finetuning Using Shared Randomness", arXiv 2306.10015
(2023); official code github.com/ezelikman/justonebyte, ``app.py``.

A distributed MeZO/SPSA. Every machine ``m`` holds the same model ``θ``; for each of its ``G``
samples ``s`` it draws ``z ~ N(0, I)`` from a seed every machine can reproduce, evaluates two
losses on a fresh minibatch and keeps one scalar, the projected gradient::

    g_{m,s} = (L(θ + ε z_{m,s}) - L(θ - ε z_{m,s})) / (2ε)

Machines broadcast only their scalars. Each one regenerates every peer's ``z`` from the shared
seed and applies the same update, so the replicas stay bit-identical::

    θ <- θ - lr / sqrt(n) · Σ_{m,s} ĝ_{m,s} z_{m,s},     n = M·G, the number of scalars

(the code's normalization ``lr/√n``, not ``lr/n``). ``ĝ = g`` as fp32 (4 bytes), or the true
one-byte code of the spec: a sign bit and a 7-bit ``q = round(8 ln|g|)``, decoded ``±e^{q/8}``
(at most 6.45 % relative rounding, range clipped to ``e^{±63/8}``; the spec's 7-bit range is
-64..63, here -64 is kept for an exact zero, which a pure log code cannot send). The released
code computes a 9-bit log code (255 levels and a sign) and then sends the raw float anyway (the
spec's caveat); here the byte is what the receivers apply.

How it maps onto murmura:

* **the seed.** ``z_{m,s}`` comes from node ``m``'s key for (round, step), which is a hash of
  (seed, node, round, step) that any peer can compute, and from the sample index ``s``
  (:func:`perturbation`): the official ``seed(it, m, s)`` without the join timestamps.
* **local rule** (:class:`SharedSeedSPSA`): one local step per round reads ``samples``
  minibatches of ``batch_size`` at once (one per sample, as the code's loop draws a batch per
  sample) and writes ``Σ_s ĝ_s z_s`` to the node state ``estimate`` (reset every round); the
  parameters do not move. More local steps would only add samples at the same point, which
  ``samples`` already does: ``local_steps`` other than 1 is refused.
* **exchange** (:class:`ScalarBroadcast`): an :class:`~murmura.algorithms.plans.Exchange` on the
  complete graph with weight 1 on every pair (the node's own entry too), so each node receives
  ``Σ_m estimate_m``. The payload handed to receivers is the dense ``estimate`` vector, which a
  real receiver rebuilds from the scalars and the shared seed (the Encoder contract allows a
  payload decoded densely); what is *counted* is the message as sent, ``G`` scalars of 1 or 4
  bytes (the seed is derived, nothing to send).
* **byte accounting.** murmura counts every directed link, so one machine's ``G`` bytes are
  counted once per peer: ``(M-1)·G`` sent per node and ``M(M-1)·G`` in all per round. The
  paper's "G bytes per machine per iteration" is the same message seen as one broadcast.

Not modelled: machines joining or leaving (every node takes part every round), the periodic
weight backup/replay and the md5 check with a random peer (the simulation's replicas are
bit-identical by construction; the test checks it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import torch
from torch.func import vmap

from murmura.algorithms.base import ALGORITHMS, Algorithm, GradFn, LocalWork, LossFn, Tensor
from murmura.algorithms.plans import Exchange, NodeState, Vectors
from murmura.algorithms.rules import Every, FullParticipation
from murmura.swarm.random import key_normal
from murmura.topology import MixingMatrix

CODECS = {"fp32": 4, "int8": 1}
ESTIMATE = {"estimate": NodeState("zeros", "round")}
_ZERO = -64  # the 7-bit level kept for an exact zero (the magnitudes use -63..63)


# ---------------------------------------------------------------------------------------------
# the one-byte code


def encode_byte(g: Tensor) -> Tensor:
    """One byte per scalar: bit 7 the sign, bits 0-6 ``q + 64`` with ``q = clamp(round(8 ln|g|),
    -63, 63)``; ``q = -64`` encodes an exact zero (``uint8``, same shape as ``g``)."""
    q = torch.round(8.0 * torch.log(g.abs())).clamp(-63, 63).to(torch.int64)
    q = torch.where(g == 0, torch.full_like(q, _ZERO), q)
    return ((g < 0).to(torch.int64) * 128 + q - _ZERO).to(torch.uint8)


def decode_byte(code: Tensor) -> Tensor:
    """The scalar a byte stands for: ``±exp(q / 8)``, or 0 (float32)."""
    code = code.to(torch.int64)
    q = (code % 128 + _ZERO).to(torch.float32)
    sign = 1.0 - 2.0 * (code >= 128).to(torch.float32)
    return torch.where(q == _ZERO, torch.zeros_like(q), sign * torch.exp(q / 8.0))


def quantize(g: Tensor, codec: str) -> Tensor:
    """What a receiver decodes from a scalar ``g`` sent with ``codec`` ("fp32" or "int8")."""
    return g if codec == "fp32" else decode_byte(encode_byte(g))


def perturbation(key: Tensor, params: Mapping[str, Tensor], sample: Tensor | int
                 ) -> dict[str, Tensor]:
    """``z_s ~ N(0, I)`` laid out like ``params`` (one flat draw of every entry, in parameter
    order), from a node's key and the sample index ``s``: the draw every peer repeats to rebuild
    the sender's update."""
    sizes = [p.numel() for p in params.values()]
    flat = key_normal(key, (sum(sizes),), salt=sample)
    return {name: part.view(p.shape) for (name, p), part
            in zip(params.items(), torch.split(flat, sizes))}


# ---------------------------------------------------------------------------------------------
# the per-node rules


@dataclass(frozen=True)
class SharedSeedSPSA:
    """Local rule: per step, ``estimate += Σ_s ĝ_s z_s`` with ``g_s = (L(θ+εz_s) - L(θ-εz_s))/2ε``
    on the step's minibatch; ``θ`` stays where it is until the exchange applies every estimate."""

    eps: float = 1e-3
    samples: int = 4
    codec: str = "int8"
    needs_key: bool = True
    state_names: tuple[str, ...] = ()
    node_state: dict = field(default_factory=lambda: dict(ESTIMATE))

    def gradient(self, loss: LossFn) -> GradFn:
        eps, codec, count = self.eps, self.codec, self.samples

        def estimate(params: dict[str, Tensor], *batch_and_key: Tensor) -> dict[str, Tensor]:
            *batch, key = batch_and_key
            # the step's minibatch is `samples` minibatches, one per sample (as in the code)
            chunks = [t.reshape(count, t.shape[0] // count, *t.shape[1:]) for t in batch]

            def one(sample: Tensor, *chunk: Tensor) -> dict[str, Tensor]:
                z = perturbation(key, params, sample)
                plus = loss({k: p + eps * z[k] for k, p in params.items()}, *chunk)
                minus = loss({k: p - eps * z[k] for k, p in params.items()}, *chunk)
                g = quantize((plus - minus) / (2.0 * eps), codec)
                return {k: g * v for k, v in z.items()}

            per_sample = vmap(one)(torch.arange(count, device=key.device), *chunks)
            return {k: v.sum(dim=0) for k, v in per_sample.items()}

        return estimate

    def update(self, param: Tensor, grad: Tensor, state: Mapping[str, Tensor],
               active: Tensor | None) -> None:
        state["estimate"].add_(grad if active is None else grad * active)


@dataclass(frozen=True)
class SendScalars:
    """The message: ``scalars`` projected gradients of ``nbytes_each`` bytes; the receiver's
    decoded payload is the sender's ``estimate`` (its scalars times its regenerated ``z``)."""

    scalars: int
    nbytes_each: int
    node_state: dict = field(default_factory=lambda: dict(ESTIMATE))

    def encode(self, params: Tensor, state: Vectors, key: Tensor) -> tuple[Vectors, Vectors]:
        return {"estimate": state["estimate"]}, {}

    def nbytes(self, dim: int) -> int:
        return self.scalars * self.nbytes_each


@dataclass(frozen=True)
class ApplyAll:
    """``θ <- θ - scale · Σ_m estimate_m`` (``scale = lr/√n``), the same step on every node."""

    scale: float
    node_state: dict = field(default_factory=lambda: dict(ESTIMATE))

    def combine(self, params: Tensor, state: Vectors, received: Vectors) -> Vectors:
        return {"params": params - self.scale * received["estimate"]}


@lru_cache(maxsize=8)
def everyone(num_nodes: int, device: str = "cpu") -> MixingMatrix:
    """The complete graph with weight 1 on every pair, self included: ``r_i = Σ_m m_m``."""
    rows, cols = np.divmod(np.arange(num_nodes * num_nodes), num_nodes)
    return MixingMatrix.from_coo(rows, cols, np.ones(num_nodes * num_nodes), num_nodes, device)


@dataclass(frozen=True)
class ScalarBroadcast:
    """Every machine sends its ``scalars`` to every other and applies all ``n = M·scalars`` of
    them; all-to-all by definition, so it builds its own complete graph (no topology)."""

    lr: float
    scalars: int
    codec: str = "int8"
    needs_topology: bool = False

    @property
    def node_state(self) -> dict:
        return dict(ESTIMATE)

    def plan(self, ctx, participants, topology, sizes) -> Exchange:
        n = ctx.num_nodes * self.scalars
        return Exchange(everyone(ctx.num_nodes, str(ctx.device)),
                        SendScalars(self.scalars, CODECS[self.codec]),
                        ApplyAll(self.lr / math.sqrt(n)))


# ---------------------------------------------------------------------------------------------
# the named algorithm


def _positive(name: str, value: object, integer: bool = False) -> None:
    ok = (not isinstance(value, bool) and isinstance(value, (int, float))
          and math.isfinite(value) and value > 0 and (not integer or int(value) == value))
    if not ok:
        kind = "a positive integer" if integer else "a positive finite number"
        raise ValueError(f"spsa_shared: {name} must be {kind}, got {value!r}")


@ALGORITHMS.register("spsa_shared", "Just One Byte: shared-seed SPSA; machines exchange only "
                     "their projected-gradient scalars (1 byte each), replicas stay identical")
def spsa_shared(lr: float = 1e-2, eps: float = 1e-3, samples: int = 4, codec: str = "int8",
                batch_size: int = 32, local_steps: int = 1) -> Algorithm:
    """Just One Byte (Zelikman et al., 2023): ``θ <- θ - lr/√n Σ_{m,s} ĝ_{m,s} z_{m,s}`` over
    all ``M`` machines, ``n = M · samples`` scalars, ``z`` regenerated from the shared seed.
    One SPSA iteration per round (``local_steps`` must be 1: more samples per iteration is
    ``samples``); each of a machine's ``samples`` (G) perturbations is scored on its own
    minibatch of ``batch_size``. ``codec``: ``"int8"`` (1 byte: sign + 7-bit log level) or
    ``"fp32"`` (4 bytes). Defaults: the spec's CPU design (ε = 1e-3, G = 4, batch 32; lr from
    its grid {1e-3, 3e-3, 1e-2}); the code's GPT-2 defaults are lr 0.1, batch 64, G = 30."""
    _positive("lr", lr)
    _positive("eps", eps)
    _positive("samples", samples, integer=True)
    _positive("batch_size", batch_size, integer=True)
    if isinstance(local_steps, bool) or local_steps != 1:
        raise ValueError(
            f"spsa_shared: local_steps must be 1 (one SPSA iteration per round; the parameters "
            f"do not move between local steps), got {local_steps!r}: for more perturbations "
            "per iteration raise samples"
        )
    if codec not in CODECS:
        raise ValueError(f"spsa_shared: codec must be one of {sorted(CODECS)} (bytes per scalar "
                         f"1 or 4), got {codec!r}")
    return Algorithm(
        name="spsa_shared",
        local_rule=SharedSeedSPSA(eps=eps, samples=int(samples), codec=codec),
        # one step reads `samples` minibatches at once, one per perturbation
        local_work=LocalWork(batch_size=int(batch_size) * int(samples), steps=1),
        communication=ScalarBroadcast(lr, int(samples), codec),
        schedule=Every(1),
        participation=FullParticipation(),
        params=dict(lr=lr, eps=eps, samples=samples, codec=codec, batch_size=batch_size,
                    local_steps=local_steps),
    )
