"""A small model zoo that works with ``torch.func.functional_call`` and ``vmap``.

Any user ``nn.Module`` works as long as ``functional_call`` can run it: its state is its
parameters (plus constant buffers shared by all nodes), kept in float32. BatchNorm's running
statistics are per-node mutable state that a functional call cannot carry, so BatchNorm with
``track_running_stats`` is refused: use GroupNorm or LayerNorm instead. Dropout is refused too: it
draws from torch's global generator, which cannot be keyed by node inside ``vmap``.

>>> from murmura.models import build_model
>>> model = build_model("mlp", input_shape=(64,), num_classes=10, hidden=(32,))
>>> sum(p.numel() for p in model.parameters())
2410
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence

from torch import nn

from murmura.registry import Registry

MODELS: Registry = Registry("model")


def _flat_features(input_shape: Sequence[int]) -> int:
    return int(math.prod(input_shape))


@MODELS.register("logreg", "multinomial logistic regression (one linear layer)")
def logreg(input_shape: Sequence[int], num_classes: int) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(_flat_features(input_shape), num_classes))


@MODELS.register("mlp", "multilayer perceptron with ReLU (hidden=(200,) by default)")
def mlp(input_shape: Sequence[int], num_classes: int, hidden: Sequence[int] = (200,)) -> nn.Module:
    if isinstance(hidden, int):
        hidden = (hidden,)
    if not hidden or any(int(h) < 1 for h in hidden):
        raise ValueError(f"mlp: hidden must be a list of positive layer widths, got {hidden!r}")
    layers: list[nn.Module] = [nn.Flatten()]
    width = _flat_features(input_shape)
    for h in hidden:
        layers += [nn.Linear(width, int(h)), nn.ReLU()]
        width = int(h)
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


@MODELS.register("cnn", "small CNN: two 5x5 conv + GroupNorm + max-pool blocks, then a linear head")
def cnn(
    input_shape: Sequence[int], num_classes: int, channels: Sequence[int] = (16, 32)
) -> nn.Module:
    if len(input_shape) != 3:
        raise ValueError(
            f"cnn needs image inputs shaped (channels, height, width), got {tuple(input_shape)}; "
            "use 'mlp' or 'logreg' for flat features"
        )
    c_in, h, w = (int(s) for s in input_shape)
    c1, c2 = (int(c) for c in channels)
    body = nn.Sequential(
        nn.Conv2d(c_in, c1, 5, padding=2),
        nn.GroupNorm(min(4, c1), c1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, 5, padding=2),
        nn.GroupNorm(min(4, c2), c2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
    )
    return nn.Sequential(body, nn.Linear(c2 * (h // 4) * (w // 4), num_classes))


class CausalConvLM(nn.Module):
    """Symbols ``[B, T]`` -> next-symbol scores ``[B, T, V]``: an embedding, causal 1-D
    convolutions (each position sees only itself and the ``kernel - 1`` before it, per layer)
    with ReLU, and a linear head shared by all positions."""

    def __init__(self, vocab: int, embed: int, channels: int, kernel: int, layers: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, embed)
        widths = [embed] + [channels] * layers
        self.convs = nn.ModuleList(nn.Conv1d(a, b, kernel) for a, b in zip(widths, widths[1:]))
        self.head = nn.Linear(widths[-1], vocab)
        self.kernel = kernel

    def forward(self, x):
        import torch.nn.functional as F

        if x.is_floating_point():
            raise TypeError(
                "char_cnn reads integer symbols (a next_token dataset such as python_docs), not "
                "float features"
            )
        h = self.embed(x).transpose(1, 2)
        for conv in self.convs:
            h = F.relu(conv(F.pad(h, (self.kernel - 1, 0))))
        return self.head(h.transpose(1, 2))


@MODELS.register("char_cnn", "character-level causal CNN: embedding, causal convolutions, "
                 "next-symbol scores at every position")
def char_cnn(input_shape: Sequence[int], num_classes: int, embed: int = 32, channels: int = 64,
             kernel: int = 4, layers: int = 2) -> nn.Module:
    if len(input_shape) != 1:
        raise ValueError(
            f"char_cnn reads sequences of symbols [positions], got samples shaped "
            f"{tuple(input_shape)}; use it with a next_token dataset such as python_docs"
        )
    for name, value in (("embed", embed), ("channels", channels), ("kernel", kernel),
                        ("layers", layers)):
        if int(value) != value or value < 1:
            raise ValueError(f"char_cnn: {name} must be a positive integer, got {value!r}")
    return CausalConvLM(num_classes, int(embed), int(channels), int(kernel), int(layers))


def build_model(
    name: str | nn.Module, input_shape: Sequence[int], num_classes: int, **kwargs
) -> nn.Module:
    """A model by registry name (or a user module passed through), checked for vmap-ability."""
    if isinstance(name, nn.Module):
        model = name
    else:
        factory = MODELS.get(name)
        accepted = list(inspect.signature(factory).parameters)[2:]
        unknown = sorted(set(kwargs) - set(accepted))
        if unknown:
            raise ValueError(
                f"model {name!r} has no parameter(s) {', '.join(unknown)}; accepted: "
                f"{', '.join(accepted) or '(none)'}"
            )
        model = factory(tuple(input_shape), int(num_classes), **kwargs)
    check_functional(model)
    return model


def check_functional(model: nn.Module) -> None:
    """Refuse modules whose state a per-node functional call cannot carry."""
    for mod_name, mod in model.named_modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm) and mod.track_running_stats:
            raise ValueError(
                f"module {mod_name or type(mod).__name__!r} is BatchNorm with running statistics, "
                "which are per-node mutable state that murmura's vectorized step cannot carry; "
                "replace it with nn.GroupNorm or nn.LayerNorm (or BatchNorm with "
                "track_running_stats=False)"
            )
        if isinstance(mod, nn.modules.dropout._DropoutNd) and mod.p > 0:
            raise ValueError(
                f"module {mod_name or type(mod).__name__!r} is Dropout, which draws from torch's "
                "global generator: murmura keys every random draw by (seed, node, round, step) "
                "and cannot do so inside a vmapped model; remove it or set p=0"
            )
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError("the model has no trainable parameters")


__all__ = ["MODELS", "build_model", "check_functional", "logreg", "mlp", "cnn"]

from murmura.models import etf as _etf  # noqa: E402, F401  (registers "etf_mlp")
from murmura.models import vector as _vector  # noqa: E402, F401  (registers "vector")
