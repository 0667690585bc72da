"""A run directory's trained model, for the tools that use one (counterfactual search,
few-shot features): the last checkpoint's swarm state copied back into the experiment's
model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn


def load_run_model(run_dir: str | Path, node: int | None = None) -> tuple[nn.Module, Any, Any]:
    """The trained model of a murmura run directory, its experiment and its dataset.

    The last ``checkpoints/round_*.safetensors`` holds the swarm state ``params [n, d]``; the
    row used is the mean over the nodes (the consensus model: after a FedAvg round every row
    is the server's model), or node ``node``'s. It is copied into ``build_model(...)`` of the
    experiment's model through the engine's :class:`~murmura.swarm.params.ParamSpec` (the
    order of ``named_parameters``, as the engine flattens)."""
    from murmura.data import load_dataset
    from murmura.models import build_model
    from murmura.runner.rundir import RunDirectory
    from murmura.swarm.params import ParamSpec

    directory = RunDirectory.open(run_dir)
    experiment = directory.experiment()
    found = directory.checkpoints()
    if not found:
        raise ValueError(f"{run_dir} has no checkpoints/round_*.safetensors: run it with "
                         "output.checkpoint_every ≥ 0 (0 saves the last round)")
    tensors, _ = directory.load_checkpoint(found[-1][1])
    params = tensors["params"]
    if node is not None and not 0 <= node < params.shape[0]:
        raise ValueError(f"node {node!r}: the run has nodes 0..{params.shape[0] - 1}")
    row = params.mean(0) if node is None else params[node]
    data = experiment.data
    dataset = load_dataset(data.dataset.name, root=data.root, **data.dataset.params)
    with torch.random.fork_rng(devices=[]):
        model = build_model(experiment.model.name, dataset.feature_shape, dataset.num_classes,
                            **experiment.model.params).to(torch.float32)
    spec = ParamSpec.from_module(model)
    with torch.no_grad():
        for name, view in spec.views(row.to(torch.float32)).items():
            model.get_parameter(name).copy_(view)
    return model.requires_grad_(False).eval(), experiment, dataset


__all__ = ["load_run_model"]
