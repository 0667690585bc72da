"""A fused local step for the commonest case: SGD on a stack of linear layers.

The generic step (``vmap(grad(loss))`` then the rule's update) writes every node's gradient to
memory, reads it back and reads and writes the parameters again: three passes over a ``[n, d]``
tensor beyond the one the update needs. For models made only of ``nn.Linear`` layers and
elementwise activations (``mlp``, ``logreg``, and any user ``nn.Sequential`` of the same parts)
trained with SGD, backpropagation is short enough to write out, and each weight gradient can be
accumulated straight into the parameters (or the momentum buffer) by one batched GEMM:

    W <- (1 - lr * wd) W - lr * dZ^T H        (torch.baddbmm, in place on the node's row)

so the step reads and writes the state once and allocates no gradient. The engine uses this path
when :func:`fused_step_for` accepts the model and the rule, and the generic one otherwise; the two
agree to float32 rounding (``tests/test_fused.py``). ``Simulation(..., fused=False)`` turns it off.
The same models also evaluate every node on shared test samples with one GEMM for the first
layer (:func:`node_accuracy_shared_input`).

>>> import torch
>>> from torch import nn
>>> from murmura.algorithms.rules import SGD
>>> from murmura.swarm.params import ParamSpec
>>> model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
>>> spec = ParamSpec.from_module(model)
>>> step = fused_step_for(model, spec, SGD(lr=0.1))
>>> X = torch.zeros(5, spec.dim)                       # five nodes, one row each
>>> x, y = torch.randn(5, 8, 4), torch.randint(0, 2, (5, 8))
>>> step(spec.views(X), x, y, None)                    # one SGD step for every node, in place
>>> bool(X[:, -2:].abs().sum() > 0)                    # the output biases moved
True
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from murmura.algorithms.rules import SGD

Tensor = torch.Tensor

# activation -> derivative expressed through the activation's output (what the step keeps)
_ACTIVATIONS: dict[type, tuple[Callable[[Tensor], Tensor], Callable[[Tensor, Tensor], None]]] = {
    nn.ReLU: (torch.relu, lambda grad, out: grad.mul_(out > 0)),
    nn.Tanh: (torch.tanh, lambda grad, out: grad.mul_(1 - out * out)),
    nn.Sigmoid: (torch.sigmoid, lambda grad, out: grad.mul_(out * (1 - out))),
}


@dataclass(frozen=True)
class _Layer:
    weight: str
    bias: str | None
    activation: type | None  # one of _ACTIVATIONS, applied after the layer


class FusedLinearSGD:
    """One SGD step of cross-entropy on a linear stack, for a block of nodes, in place:

    g = grad + wd * x;  b <- mu * b + g;  x <- x - lr * b      (b and mu only with momentum)

    as :class:`~murmura.algorithms.rules.SGD` (without Nesterov) computes it."""

    def __init__(
        self, layers: tuple[_Layer, ...], lr: float, weight_decay: float, momentum: float = 0.0
    ) -> None:
        self.layers = layers
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.momentum = float(momentum)
        self._scratch: Tensor | None = None

    scratch_bytes = 8 << 20  # a weight-gradient block that stays in a CPU's last-level cache

    def __call__(
        self,
        views: dict[str, Tensor],
        x: Tensor,
        y: Tensor,
        weight: Tensor | None,
        momentum: dict[str, Tensor] | None = None,
        shared: bool = False,
        correction: dict[str, Tensor] | None = None,
    ) -> None:
        """``views``: the block's named parameter views ``[m, ...]`` (updated in place); ``x``
        ``[m, B, *features]``; ``y`` ``[m, B]``; ``weight`` ``None`` (every sample counts, the
        loss is the batch mean) or 0/1 ``[m, B]`` (the weighted mean; a node whose weights are
        all zero is left unchanged, momentum included); ``momentum``: the momentum buffers'
        views, laid out like ``views`` (needed when the rule has momentum); ``shared``: every
        node's parameters are equal (as just after a server average), so the forward pass and
        the input gradients run as single GEMMs over all the block's samples, which a BLAS runs
        faster than ``m`` per-node products (the weight gradients stay per node);
        ``correction``: views of a per-node vector added to every gradient (SCAFFOLD's
        ``c - c_i``, gradient tracking's ``c_i``, FedProx's ``-mu x_start``; see
        :func:`fused_step_for`)."""
        if self.momentum and momentum is None:
            raise ValueError("this SGD has momentum: pass the momentum buffers' views")
        m, batch = y.shape
        h = x.reshape(m, batch, -1)
        inputs, outputs = [], []
        for layer in self.layers:
            w = views[layer.weight]
            inputs.append(h)
            if shared:
                flat = h.reshape(m * batch, -1)
                if layer.bias is None:
                    h = (flat @ w[0].T).view(m, batch, -1)
                else:
                    h = torch.addmm(views[layer.bias][0], flat, w[0].T).view(m, batch, -1)
                if layer.activation is not None:
                    h = _ACTIVATIONS[layer.activation][0](h)
            else:
                h = _per_node_layer(layer, views, h)
            outputs.append(h)

        # d(loss)/d(logits) = (softmax - onehot) / batch, or weighted per sample; softmax
        # written out: torch's kernel is several times slower over a last axis of ~10 classes
        grad = (h - h.amax(dim=2, keepdim=True)).exp_()
        grad.div_(grad.sum(dim=2, keepdim=True))
        grad.scatter_add_(2, y.unsqueeze(2), torch.full_like(grad[:, :, :1], -1.0))
        active: Tensor | None = None  # 1 for the nodes that take this step, 0 for idle ones
        if weight is None:
            grad.mul_(1.0 / batch)
        else:
            total = weight.sum(dim=1, keepdim=True)
            grad.mul_((weight / total.clamp_min(1.0)).unsqueeze(2))
            active = (total > 0).to(grad.dtype).view(-1)

        for i in reversed(range(len(self.layers))):
            layer = self.layers[i]
            w = views[layer.weight]
            below = None  # d(loss)/d(input), with W before its update
            if i > 0:
                below = ((grad.reshape(m * batch, -1) @ w[0]).view(m, batch, -1) if shared
                         else torch.bmm(grad, w))
            buffers = momentum or {}
            extra = correction or {}
            self._step(w, active, buffers.get(layer.weight), (grad.transpose(1, 2), inputs[i]),
                       extra.get(layer.weight))
            if layer.bias is not None:
                self._step(views[layer.bias], active, buffers.get(layer.bias), grad.sum(dim=1),
                           extra.get(layer.bias))
            if below is not None:
                activation = self.layers[i - 1].activation
                if activation is not None:
                    _ACTIVATIONS[activation][1](below, outputs[i - 1])
                grad = below

    def _step(
        self,
        param: Tensor,
        active: Tensor | None,
        buffer: Tensor | None,
        gradient: Tensor | tuple[Tensor, Tensor],
        correction: Tensor | None = None,
    ) -> None:
        """One parameter's update from its loss gradient (zero for idle nodes): a tensor, or a
        pair ``(a, b)`` whose per-node product ``a @ b`` is the gradient, accumulated by GEMM;
        plus ``correction`` (for the nodes that take the step) when there is one."""

        def add_gradient(target: Tensor, alpha: float) -> None:
            if isinstance(gradient, tuple):
                self._accumulate(target, *gradient, alpha)
            else:
                target.add_(gradient, alpha=alpha)
            if correction is not None:
                if active is None:
                    target.add_(correction, alpha=alpha)
                else:
                    target.addcmul_(correction, _per_node(active, target), value=alpha)

        lr, wd, mu = self.lr, self.weight_decay, self.momentum
        if buffer is None:  # x <- (1 - lr wd) x - lr grad, idle nodes untouched
            if wd:
                param.mul_(1.0 - lr * wd if active is None else _per_node(1.0 - lr * wd * active,
                                                                          param))
            add_gradient(param, -lr)
            return
        # b <- mu b + grad + wd x (idle nodes keep b); x <- x - lr b (idle nodes keep x)
        buffer.mul_(mu if active is None else _per_node(1.0 - active * (1.0 - mu), buffer))
        add_gradient(buffer, 1.0)
        if wd:
            if active is None:
                buffer.add_(param, alpha=wd)
            else:
                buffer.addcmul_(param, _per_node(active, param), value=wd)
        if active is None:
            param.add_(buffer, alpha=-lr)
        else:
            param.addcmul_(buffer, _per_node(active, param), value=-lr)

    def _accumulate(self, w: Tensor, a: Tensor, b: Tensor, alpha: float) -> None:
        """``w += alpha * a @ b`` per node. On the CPU a batched GEMM accumulates in place only
        into a contiguous ``w`` (a strided one sends torch down a per-node loop): rows of the
        state take the product into a cache-sized scratch block, then one add."""
        if w.is_contiguous() or w.device.type != "cpu":
            w.baddbmm_(a, b, alpha=alpha)
            return
        per_node = w[0].numel()
        span = max(1, self.scratch_bytes // (4 * per_node))
        if self._scratch is None or self._scratch.numel() < span * per_node:
            self._scratch = torch.empty(span * per_node, dtype=w.dtype, device=w.device)
        for start in range(0, w.shape[0], span):
            stop = min(start + span, w.shape[0])
            product = self._scratch[: (stop - start) * per_node].view(stop - start, *w.shape[1:])
            torch.bmm(a[start:stop], b[start:stop], out=product)
            w[start:stop].add_(product, alpha=alpha)


def _per_node_layer(layer: _Layer, views: dict[str, Tensor], h: Tensor) -> Tensor:
    """One layer (and its activation) for every node on its own inputs: ``[m, B, in]`` ->
    ``[m, B, out]``."""
    w = views[layer.weight]
    if layer.bias is None:
        h = torch.bmm(h, w.transpose(1, 2))
    else:
        h = torch.baddbmm(views[layer.bias].unsqueeze(1), h, w.transpose(1, 2))
    if layer.activation is not None:
        h = _ACTIVATIONS[layer.activation][0](h)
    return h


def _per_node(values: Tensor, like: Tensor) -> Tensor:
    """A per-node vector ``[m]`` shaped to broadcast against ``like`` ``[m, ...]``."""
    return values.view(-1, *(1,) * (like.dim() - 1))


def linear_stack(model: nn.Module, spec) -> tuple[_Layer, ...] | None:
    """``model``'s layers when it is an ``nn.Sequential`` of ``Flatten``, ``Linear``, ``ReLU``,
    ``Tanh``, ``Sigmoid`` and ``Identity`` ending in a ``Linear`` (at most one activation after
    each layer, none before the first, ``Flatten`` only first), with no buffers and every
    parameter trainable; else ``None``."""
    if not isinstance(model, nn.Sequential) or any(True for _ in model.buffers()):
        return None
    layers: list[_Layer] = []
    pending: _Layer | None = None
    for name, module in model.named_children():
        if isinstance(module, nn.Identity):
            continue
        if type(module) is nn.Flatten:
            if module.start_dim != 1 or module.end_dim != -1 or layers or pending:
                return None
            continue
        if type(module) is nn.Linear:
            if pending is not None:
                layers.append(pending)
            pending = _Layer(f"{name}.weight", f"{name}.bias" if module.bias is not None
                             else None, None)
            continue
        if type(module) in _ACTIVATIONS and pending is not None and pending.activation is None:
            pending = _Layer(pending.weight, pending.bias, type(module))
            continue
        return None
    if pending is None or pending.activation is not None:
        return None  # no layer, or the logits pass through an activation
    layers.append(pending)
    expected = [n for layer in layers for n in (layer.weight, layer.bias) if n is not None]
    if list(spec.names) != expected:  # frozen parameters, or an order we do not expect
        return None
    return tuple(layers)


def fused_step_for(model: nn.Module, spec, rule) -> FusedLinearSGD | None:
    """The fused step for ``model`` trained by ``rule``, or ``None`` when either is outside what
    it covers: a :func:`linear_stack` trained by the built-in
    :class:`~murmura.algorithms.rules.SGD` without Nesterov momentum (momentum and weight decay
    allowed), or by an SGD variant that declares its gradient as ``g`` plus terms linear in the
    parameters and in constant node state (``fused_terms``: FedProx, SCAFFOLD, gradient
    tracking; see :func:`fused_correction`)."""
    plain = type(rule) is SGD
    if not (plain or isinstance(rule, SGD) and hasattr(rule, "fused_terms")) or rule.nesterov:
        return None
    layers = linear_stack(model, spec)
    if layers is None:
        return None
    decay = rule.weight_decay + (0.0 if plain else rule.fused_terms()[0])
    return FusedLinearSGD(layers, rule.lr, decay, rule.momentum)


def fused_correction(rule, state: dict[str, Tensor]) -> Tensor | None:
    """The per-node vector an SGD variant adds to every gradient of a round, from its node
    state rows (``[m, d]``), or ``None`` for plain SGD.

    A variant opts into the fused step with ``fused_terms() -> (extra_decay, ((name, coeff),
    ...))``, meaning its gradient is ``g + (wd + extra_decay) x + sum coeff * state[name]``,
    with those states constant during the round's local steps."""
    if type(rule) is SGD:
        return None
    terms = rule.fused_terms()[1]
    if not terms:
        return None
    total = torch.zeros_like(state[terms[0][0]])
    for name, coeff in terms:
        total.add_(state[name], alpha=coeff)
    return total


@torch.no_grad()
def node_accuracy_shared_input(
    layers: tuple[_Layer, ...],
    views: dict[str, Tensor],
    x: Tensor,
    y: Tensor,
    scratch: Tensor | None = None,
) -> Tensor:
    """Accuracy of every node's model (``views``: ``[m, ...]``) on the same samples ``x``: the
    first layer for all nodes as one GEMM (``x @ [W_1; ...; W_m]^T``) instead of ``m`` thin
    per-node products (a logistic regression's 10 outputs make those slow), the rest per node.
    ``scratch``: an optional flat buffer of at least ``S * m * out`` floats for the first
    layer's output (a fresh one costs page faults). ``[m]``."""
    first = layers[0]
    weight = views[first.weight]
    m, out_features = weight.shape[0], weight.shape[1]
    h = x.reshape(x.shape[0], -1)
    size = len(h) * m * out_features
    out = None if scratch is None or scratch.numel() < size else scratch[:size]
    z = torch.mm(h, weight.reshape(m * out_features, -1).T,
                 out=None if out is None else out.view(len(h), m * out_features))
    z = z.view(len(h), m, out_features)  # [S, m, out]
    if first.bias is not None:
        z.add_(views[first.bias])
    if first.activation is not None:
        z = _ACTIVATIONS[first.activation][0](z)
    if len(layers) == 1:
        return (z.argmax(dim=2) == y.unsqueeze(1)).to(torch.float32).mean(dim=0)
    z = z.transpose(0, 1)  # [m, S, out]
    for layer in layers[1:]:
        z = _per_node_layer(layer, views, z)
    return (z.argmax(dim=2) == y).to(torch.float32).mean(dim=1)


__all__ = ["FusedLinearSGD", "fused_step_for", "linear_stack", "node_accuracy_shared_input"]
