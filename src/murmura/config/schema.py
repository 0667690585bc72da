"""An experiment as one typed object: the TOML file and the Python API are the same thing.

Every section is a pydantic model that refuses unknown keys. Named components (dataset,
partition, model, topology, algorithm) are a ``name`` plus that component's own parameters,
checked against the registered function's signature, so a user's registered algorithm gets the
same validation as a built-in one.

>>> exp = Experiment.from_dict({
...     "name": "ring", "rounds": 3,
...     "data": {"dataset": "digits", "nodes": 8, "partition": {"name": "dirichlet", "alpha": 0.5}},
...     "model": {"name": "mlp", "hidden": [16]},
...     "topology": {"name": "ring"},
...     "algorithm": {"name": "dsgd", "lr": 0.1, "local_steps": 2},
... })
>>> exp.algorithm.params
{'lr': 0.1, 'local_steps': 2}
>>> Experiment.from_toml_text(exp.to_toml()) == exp
True
"""

from __future__ import annotations

import copy
import difflib
import importlib
import inspect
import sys
import typing
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

import tomli_w

from murmura.config.errors import ConfigError, describe_validation_error
from murmura.registry import Registry, RegistryError

LOGGERS = ("tensorboard", "wandb", "mlflow")


class Section(BaseModel):
    """A fixed set of keys; anything else is a mistake the user should hear about."""

    # strict: "3" is not a number and true is not a count; ints are accepted where floats are
    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True)


class Component(BaseModel):
    """A registered name and the parameters of the function registered under it.

    Subclasses say which registry to look in and which arguments murmura itself supplies (the
    number of nodes, the seed, ...), which a config may therefore not set."""

    model_config = ConfigDict(extra="allow")

    kind: ClassVar[str] = "component"
    supplied: ClassVar[tuple[str, ...]] = ()

    name: str

    @classmethod
    def registry(cls) -> Registry:
        raise NotImplementedError

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        # `partition = "iid"` is short for `partition = { name = "iid" }`
        return {"name": value} if isinstance(value, str) else value

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    @model_validator(mode="after")
    def _check_against_signature(self) -> Component:
        registry = self.registry()
        try:
            factory = registry.get(self.name)
        except RegistryError as error:
            raise ValueError(str(error)) from None
        self.name = _canonical_name(registry, self.name)
        accepted, hints, takes_any = _signature(factory, self.supplied)
        for key, value in self.params.items():
            if key in self.supplied:
                raise ValueError(
                    f"{key!r} is set by murmura for every {self.kind}, not in the config"
                    + _supplied_hint(key)
                )
            if key not in accepted and not takes_any:
                options = accepted + list(type(self).model_fields.keys() - {"name"})
                raise ValueError(
                    f"{self.kind} {self.name!r} has no parameter {key!r}"
                    + _did_you_mean(key, options)
                    + f"; its parameters: {', '.join(options) or '(none)'}"
                )
            hint = hints.get(key)
            if hint is not None:
                try:
                    coerced = TypeAdapter(hint).validate_python(value, strict=True)
                except ValidationError:
                    raise ValueError(
                        f"{self.kind} {self.name!r}: {key} = {value!r} is not a valid "
                        f"{_type_name(hint)}"
                    ) from None
                # stored as the factory will see it (lr = 1 becomes 1.0); TOML has no tuples
                setattr(self, key, list(coerced) if isinstance(coerced, tuple) else coerced)
        missing = [key for key in _required(factory, self.supplied) if key not in self.params]
        if missing:
            example = ", ".join(f"{key} = ..." for key in missing)
            raise ValueError(
                f"{self.kind} {self.name!r} needs {', '.join(repr(k) for k in missing)}: "
                f"{{ name = \"{self.name}\", {example} }}"
            )
        return self


def _canonical_name(registry: Registry, name: str) -> str:
    for registered in registry.names():
        if registered.lower() == name.lower():
            return registered
    return name


def _supplied_hint(key: str) -> str:
    return {
        "num_nodes": " (set data.nodes)",
        "n": " (set data.nodes)",
        "seed": " (set the top-level seed)",
        "root": " (set data.root)",
    }.get(key, "")


def _did_you_mean(key: str, options: list[str]) -> str:
    close = difflib.get_close_matches(key, options, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _signature(
    factory: Any, supplied: tuple[str, ...]
) -> tuple[list[str], dict[str, Any], bool]:
    """Parameter names a config may set, their type hints where resolvable, and whether the
    factory takes arbitrary keywords."""
    signature = inspect.signature(factory)
    globals_ = getattr(inspect.unwrap(factory), "__globals__", {})
    names, hints, takes_any = [], {}, False
    for parameter in signature.parameters.values():
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            takes_any = True
            continue
        if parameter.kind is inspect.Parameter.VAR_POSITIONAL or parameter.name in supplied:
            continue
        names.append(parameter.name)
        annotation = parameter.annotation
        if isinstance(annotation, str):
            try:
                annotation = eval(annotation, {**vars(typing), **globals_})  # noqa: S307
            except Exception:  # an annotation we cannot resolve is left to the factory
                annotation = inspect.Parameter.empty
        if annotation is not inspect.Parameter.empty:
            try:
                TypeAdapter(annotation)
                hints[parameter.name] = annotation
            except Exception:  # not a type pydantic can check (a callable, a module, ...)
                pass
    return names, hints, takes_any


def _required(factory: Any, supplied: tuple[str, ...]) -> list[str]:
    return [
        p.name for p in inspect.signature(factory).parameters.values()
        if p.default is inspect.Parameter.empty and p.name not in supplied
        and p.kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)
    ]


def _type_name(hint: Any) -> str:
    """``Sequence[int]`` -> "list of int", ``float | None`` -> "float or None"."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return " or ".join("None" if a is type(None) else _type_name(a) for a in args)
    if origin is not None and args:
        return f"list of {_type_name(args[0])}"
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


class DatasetChoice(Component):
    """``dataset = "digits"`` or ``dataset = { name = "synthetic", heterogeneity = 0.5 }``."""

    kind: ClassVar[str] = "dataset"
    supplied: ClassVar[tuple[str, ...]] = ("root", "num_nodes", "seed")

    @classmethod
    def registry(cls) -> Registry:
        from murmura.data import DATASETS

        return DATASETS


class PartitionChoice(Component):
    """``partition = "iid"`` or ``partition = { name = "dirichlet", alpha = 0.1 }``; the
    special name ``natural`` uses the dataset's own per-node split."""

    kind: ClassVar[str] = "partition"
    supplied: ClassVar[tuple[str, ...]] = ("labels", "num_nodes", "seed")

    @classmethod
    def registry(cls) -> Registry:
        from murmura.data import PARTITIONERS

        return _with_natural(PARTITIONERS)


def _with_natural(partitioners: Registry) -> Registry:
    if "natural" in partitioners:
        return partitioners
    extended = Registry("partition")
    for name, description in partitioners.describe().items():
        extended.add(name, partitioners.get(name), description)

    def natural() -> None:
        """the dataset's own per-node split (synthetic has one)"""

    extended.add("natural", natural)
    return extended


class TaskChoice(Component):
    """``task = "rastrigin"`` or ``task = { name = "rastrigin", amplitude = 5.0 }``."""

    kind: ClassVar[str] = "task"

    @classmethod
    def registry(cls) -> Registry:
        from murmura.tasks import TASKS

        return TASKS

    def build(self) -> Any:
        """The task object the engine runs (``murmura.tasks.Task``)."""
        return self.registry().get(self.name)(**self.params)


class ModelChoice(Component):
    """``[model]`` with ``name = "mlp"`` and the model's parameters (``hidden = [200]``)."""

    kind: ClassVar[str] = "model"
    supplied: ClassVar[tuple[str, ...]] = ("input_shape", "num_classes")

    @classmethod
    def registry(cls) -> Registry:
        from murmura.models import MODELS

        return MODELS


class TopologyChoice(Component):
    """``[topology]`` with ``name``, the graph's parameters, and ``weights`` (the mixing rule
    for static graphs: metropolis, uniform, max_degree)."""

    kind: ClassVar[str] = "topology"
    supplied: ClassVar[tuple[str, ...]] = ("n", "seed")

    weights: str | None = None

    @classmethod
    def registry(cls) -> Registry:
        from murmura.topology import TOPOLOGIES

        return TOPOLOGIES

    @model_validator(mode="after")
    def _check_weights(self) -> TopologyChoice:
        if self.weights is not None:
            from murmura.topology import MIXING

            try:
                MIXING.get(self.weights)
            except RegistryError as error:
                raise ValueError(f"weights: {error}") from None
        return self

    @property
    def params(self) -> dict[str, Any]:
        return {k: v for k, v in (self.model_extra or {}).items()}


class AlgorithmChoice(Component):
    """``[algorithm]`` with ``name = "fedavg"`` and the algorithm's parameters (``lr``, ...)."""

    kind: ClassVar[str] = "algorithm"

    @classmethod
    def registry(cls) -> Registry:
        from murmura.algorithms import ALGORITHMS

        return ALGORITHMS


class KindChoice(Component):
    """``kind = "swarm"`` (the default) or ``[kind]`` with ``name`` and the kind's parameters:
    what the experiment runs (murmura list kinds)."""

    kind: ClassVar[str] = "kind"
    supplied: ClassVar[tuple[str, ...]] = ("context",)

    @classmethod
    def registry(cls) -> Registry:
        from murmura.runner.kinds import KINDS

        return KINDS


# the sections only a swarm reads: set under another kind, they would be silently ignored
SWARM_ONLY = ("topology", "algorithm", "schedule", "participation", "adversary", "clock")


class DataConfig(Section):
    """Which dataset, split how, over how many nodes."""

    dataset: DatasetChoice = Field(
        default_factory=lambda: DatasetChoice(name="digits"),
        description="registered dataset name, or a table with name and its parameters",
    )
    nodes: int = Field(32, ge=1, description="number of nodes the training set is split over")
    partition: PartitionChoice = Field(
        default_factory=lambda: PartitionChoice(name="iid"),
        description="how samples are split: a partitioner name, or a table with name and its "
        "parameters (e.g. { name = 'dirichlet', alpha = 0.1 })",
    )
    root: str | None = Field(
        None, description="folder holding the dataset's files (else the loader's default places)"
    )
    local_test_fraction: float | None = Field(
        None, gt=0, lt=1, description="hold this fraction of each node's samples out as its own "
        "test set; evaluation then reports personal_accuracy (each node's model on its own)"
    )


class ScheduleConfig(Section):
    """When nodes communicate. Each key is passed to the algorithm, which must accept it."""

    communicate_every: int | None = Field(
        None, ge=1, description="communicate every k rounds (local training in between)"
    )
    late_fraction: float | None = Field(
        None, gt=0, le=1, description="communicate only during the last fraction of rounds"
    )
    final_merge: bool | None = Field(
        None, description="replace the last round's communication by one exact global average"
    )

    def as_params(self) -> dict[str, Any]:
        return {k: v for k, v in self.model_dump().items() if v is not None}


class ParticipationConfig(Section):
    """Who is available each round (federated algorithms): a pattern with a probability per
    client, keyed by (seed, client, round); passed to the algorithm as ``participation``."""

    name: Literal["bernoulli", "cyclic", "markov"] = Field(
        description="bernoulli (independent rounds), cyclic (active round(cycle p) consecutive "
        "rounds of each cycle) or markov (an on/off chain with stationary probability p)"
    )
    p: float | list[float] | dict[str, Any] = Field(
        0.1, description="each client's probability: one number, a list of one per client, or "
        "{ name = 'uniform', low, high } / { name = 'beta', a, b } drawn per client"
    )
    cycle: int | None = Field(None, ge=2, description="cyclic: rounds per cycle (default 100)")
    to_active: float | None = Field(
        None, gt=0, le=1, description="markov: probability of becoming available (default 0.05)"
    )

    def as_params(self) -> dict[str, Any]:
        return {"participation": {k: v for k, v in self.model_dump().items() if v is not None}}


class EvaluationConfig(Section):
    """What is measured, and how often."""

    every: int = Field(1, ge=0, description="evaluate every k rounds and on the last (0: off; "
                       "a clocked run: clock.eval_every)")
    node_samples: int = Field(
        500, ge=0, description="test samples each node's own model is scored on (0: skip)"
    )
    test_batch_size: int = Field(4096, ge=1, description="batch size of the evaluation")
    fewshot_shots: int = Field(
        0, ge=0, description="each node labels this many of its own held-out samples per class "
        "and infers the rest on its model's features, reporting fewshot_accuracy (needs "
        "data.local_test_fraction; 0: off)"
    )
    fewshot_method: Literal["simpleshot", "kmeans", "slk"] = Field(
        "slk", description="the transductive inference of the few-shot evaluation"
    )


class EngineConfig(Section):
    """How the simulation is executed (never what it computes)."""

    device: str = Field("cpu", description="torch device: cpu, cuda, cuda:1, ...")
    backend: Literal["local", "dist"] = Field(
        "local", description="local: one process; dist: nodes sharded over the processes of a "
        "torchrun launch (see docs/scaling.md)",
    )
    chunk_size: int | None = Field(
        None, ge=1, description="nodes per vectorized block (default: sized by memory)"
    )
    same_init: bool = Field(True, description="every node starts from the same initial model")
    fused: bool = Field(
        True, description="SGD (not Nesterov) on a Linear/activation stack (mlp, logreg) takes "
        "the fused step that accumulates gradients straight into the state; false: always "
        "vmap(grad)",
    )
    threads: int | None = Field(None, ge=1, description="torch CPU threads (default: torch's)")

    @model_validator(mode="after")
    def _check_device(self) -> EngineConfig:
        import torch

        try:
            device = torch.device(self.device)
        except (RuntimeError, ValueError):
            raise ValueError(
                f"device: {self.device!r} is not a torch device; use cpu, cuda or cuda:N"
            ) from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(
                f"device: {self.device!r} but this torch has no usable CUDA device "
                f"(torch {torch.__version__}); use device = \"cpu\""
            )
        if device.type not in ("cpu", "cuda"):
            raise ValueError(f"device: {self.device!r}: murmura runs on cpu or cuda devices")
        return self


class AdversaryConfig(Section):
    """Malicious nodes: how many, where, and what they send instead of their messages."""

    attack: str | dict[str, Any] = Field(
        description="the attack: a name or { name = ..., params } (murmura list attacks)"
    )
    fraction: float | None = Field(None, gt=0, lt=1, description="fraction of nodes malicious")
    count: int | None = Field(None, ge=1, description="number of malicious nodes")
    nodes: list[int] | None = Field(None, description="the malicious nodes' ids")
    placement: Literal["random", "degree", "betweenness", "attached"] = Field(
        "random", description="how malicious nodes are chosen: random (drawn by seed), degree "
        "(best connected), betweenness (bridges), attached (the nodes the 'attached' topology "
        "added)"
    )
    sybils: bool = Field(False, description="the malicious nodes are Sybil identities of one "
                         "attacker: all send the first one's message")
    receives: bool = Field(True, description="false: on a graph the malicious nodes ignore what "
                           "they receive and keep their own model")

    def build(self) -> Any:
        from murmura.robust import Adversary

        return Adversary(self.attack, fraction=self.fraction, count=self.count,
                         nodes=None if self.nodes is None else tuple(self.nodes),
                         placement=self.placement, sybils=self.sybils,
                         receives=self.receives)


# settings a clocked run has no use for: the clock decides who trains and when they communicate
_ROUND_PARAMS = ("fraction", "clients_per_round", "participation", "communicate_every",
                 "late_fraction", "final_merge")


class ClockConfig(Section):
    """Simulated time instead of rounds: a federated clock mode or gossip on Poisson clocks."""

    until: float = Field(
        gt=0, allow_inf_nan=False, description="simulated seconds to run; the run's length "
        "(the top-level rounds is ignored by a clocked run)"
    )
    eval_every: float = Field(
        gt=0, allow_inf_nan=False, description="evaluate every this many simulated seconds "
        "(one row of metrics.csv each); at most until"
    )
    window: float = Field(
        0.0, ge=0, allow_inf_nan=False, description="events within this many simulated "
        "seconds are processed as one vectorized step (0: the exact event order)"
    )
    mode: str | dict[str, Any] | None = Field(
        None, description="federated: what the server does with what arrives, a name or a "
        "table (async, fedasync, fedbuff, fedfix, sync; e.g. { name = 'fedbuff', K = 10 }); "
        "the algorithm must have a server (fedavg, ...); set this or protocol"
    )
    protocol: Literal["pairwise", "push_pull", "push", "pull"] | None = Field(
        None, description="decentralized: gossip on each node's Poisson clock over the "
        "[topology] (pairwise = push_pull, push, pull); the algorithm must be a gossip one "
        "(dsgd, ...); set this or mode"
    )
    modest: dict[str, Any] | None = Field(
        None, description="MoDeST's protocol on the clock (pings, aggregators that wait or time "
        "out, restarts; the algorithm must be modest, whose sample_size, aggregators, "
        "success_fraction and min_models it runs): a table of ping_timeout, "
        "aggregation_timeout, ping_rtt (simulated seconds; defaults 5, 300, 0.01), {} for the "
        "defaults; with compute, links and availability; set this, mode or protocol"
    )
    concurrency: int | None = Field(
        None, ge=1, description="federated: clients training at once (FedBuff's maximum "
        "concurrency; default: every online client)"
    )
    weighting: Literal["samples", "uniform"] | None = Field(
        None, description="federated: each client's weight p_i, its data share (samples, the "
        "default) or 1/n (uniform)"
    )
    train_loss: bool | None = Field(
        None, description="federated: each evaluation also scores the server's model on the "
        "whole training set (train_loss, train_accuracy; default false)"
    )
    compute: str | dict[str, Any] | None = Field(
        None, description="federated: seconds per local step, a name or a table (constant, "
        "lognormal, pareto, trace; e.g. { name = 'lognormal', mu = -2.0, sigma = 0.5 }); "
        "default one second per step"
    )
    links: dict[str, Any] | None = Field(
        None, description="federated: a table of latency, up, down (or bandwidth), each a "
        "number or a link model table, and server_latency, server_up, server_down (seconds, "
        "bytes/s); default instant links"
    )
    rate: float | None = Field(
        None, gt=0, allow_inf_nan=False, description="gossip: wake-ups per node per simulated "
        "second (default 1)"
    )
    drop: float | None = Field(
        None, ge=0, lt=1, description="gossip: probability that a message is lost (default 0)"
    )
    availability: str | dict[str, Any] | None = Field(
        None, description="who is online, a name or a table (always, bernoulli, markov, "
        "diurnal, trace; e.g. { name = 'markov', mean_on = 60.0, mean_off = 30.0 }; "
        "fail_at with fail_fraction or fail_nodes: permanent failures); default always"
    )

    @field_validator("mode", "compute", "availability", mode="before")
    @classmethod
    def _name_or_table(cls, value: Any, info: ValidationInfo) -> Any:
        if value is not None and not isinstance(value, (str, dict)):
            raise ValueError(f"must be a name or a table {{ name = ..., ... }}, got {value!r}")
        if isinstance(value, dict) and not isinstance(value.get("name"), str):
            raise ValueError(f"a table needs name = \"...\", got {value!r}")
        return value

    @field_validator("eval_every")
    @classmethod
    def _evaluated_once(cls, value: float, info: ValidationInfo) -> float:
        until = info.data.get("until")
        if until is not None and value > until:
            raise ValueError(f"{value} > clock.until = {until}: the run would never be "
                             "evaluated; make it at most until")
        return value

    @field_validator("mode")
    @classmethod
    def _check_mode(cls, value: Any) -> Any:
        if value is None:
            return value
        from murmura.clock.modes import CLOCK_MODES, make_mode

        name = value if isinstance(value, str) else value["name"]
        if name not in CLOCK_MODES:
            raise ValueError(CLOCK_MODES._unknown_message(name))
        accepted = list(inspect.signature(CLOCK_MODES.get(name)).parameters)
        for key in value if isinstance(value, dict) else ():
            if key != "name" and key not in accepted:
                same = [a for a in accepted if a.lower() == key.lower()]
                raise ValueError(f"clock mode {name!r} has no parameter {key!r}"
                                 + (f" (did you mean {same[0]!r}?)" if same
                                    else _did_you_mean(key, accepted))
                                 + f"; its parameters: {', '.join(accepted) or '(none)'}")
        try:
            make_mode(value)
        except (ValueError, TypeError) as error:
            raise ValueError(str(error)) from None
        return value

    @field_validator("protocol")
    @classmethod
    def _one_kind(cls, value: Any, info: ValidationInfo) -> Any:
        if value is not None and info.data.get("mode") is not None:
            raise ValueError("clock.mode is set too: a clocked run is either federated (mode, "
                             "at a server) or gossip (protocol, over a graph); remove one")
        return value

    @field_validator("modest")
    @classmethod
    def _modest_alone(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None:
            return value
        if info.data.get("mode") is not None or info.data.get("protocol") is not None:
            raise ValueError("clock.mode or clock.protocol is set too: a clocked run is "
                             "federated (mode), gossip (protocol) or MoDeST (modest); keep one")
        accepted = ("ping_timeout", "aggregation_timeout", "ping_rtt")
        for key, number in value.items():
            if key not in accepted:
                raise ValueError(f"clock.modest has no parameter {key!r}"
                                 + _did_you_mean(key, list(accepted))
                                 + f"; its parameters: {', '.join(accepted)} (the sample size "
                                 "and aggregators are the modest algorithm's)")
            if isinstance(number, bool) or not isinstance(number, (int, float)) or not number > 0:
                raise ValueError(f"clock.modest.{key} must be > 0 simulated seconds, got "
                                 f"{number!r}")
        return value

    @field_validator("concurrency", "weighting", "train_loss", "compute", "links")
    @classmethod
    def _federated_only(cls, value: Any, info: ValidationInfo) -> Any:
        if value is not None and info.data.get("modest") is not None and info.field_name in (
                "concurrency", "weighting", "train_loss"):
            raise ValueError(f"a server's setting, but clock.modest has no server (MoDeST's "
                             f"sample and aggregators decide); remove {info.field_name}")
        if value is not None and info.data.get("protocol") is not None:
            raise ValueError(f"a federated setting (the server's clients), but clock.protocol "
                             f"makes this a gossip run; remove {info.field_name}"
                             + (" (a gossip wake-up's work takes no simulated time)"
                                if info.field_name in ("compute", "links") else ""))
        return value

    @field_validator("rate", "drop")
    @classmethod
    def _gossip_only(cls, value: Any, info: ValidationInfo) -> Any:
        if value is not None and info.data.get("modest") is not None:
            raise ValueError(f"a gossip setting, but clock.modest runs MoDeST's rounds; remove "
                             f"{info.field_name}")
        if value is not None and info.data.get("mode") is not None:
            raise ValueError(f"a gossip setting, but clock.mode makes this a federated run; "
                             f"remove {info.field_name}")
        return value

    @field_validator("compute", "availability")
    @classmethod
    def _known_model(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None:
            return value
        from murmura.clock import AVAILABILITY, COMPUTE

        registry = COMPUTE if info.field_name == "compute" else AVAILABILITY
        name = value if isinstance(value, str) else value.get("name")
        if name is not None and name not in registry:
            raise ValueError(registry._unknown_message(name))
        return value

    @model_validator(mode="after")
    def _kind_given(self) -> ClockConfig:
        if self.mode is None and self.protocol is None and self.modest is None:
            raise ValueError(
                "set mode (federated: a server, e.g. mode = { name = \"fedbuff\", K = 10 }), "
                "protocol (gossip over the [topology], e.g. protocol = \"pairwise\") or modest "
                "(MoDeST's protocol, e.g. modest = { ping_timeout = 5.0 })"
            )
        if self.modest is not None and self.window:
            raise ValueError("clock.window: MoDeST's clock runs its events in order (no "
                             "windows); remove window")
        return self

    @property
    def federated(self) -> bool:
        return self.mode is not None

    def evaluations(self) -> int:
        """How many evaluations the run makes (the clock's own loop: ``eval_every``, twice, ...
        up to ``until``)."""
        count, at = 0, self.eval_every
        while at <= self.until + 1e-12:
            count, at = count + 1, at + self.eval_every
        return count

    def runner_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of ``ClockedFederation``, ``ClockedGossip`` or (less the
        algorithm's sampling parameters) ``ClockedModest``, after the simulation, with the
        defaults of the unset ones."""
        if self.modest is not None:
            return {**self.modest, "compute": copy.deepcopy(self.compute),
                    "links": copy.deepcopy(self.links),
                    "availability": copy.deepcopy(self.availability)}
        shared = {"availability": copy.deepcopy(self.availability), "window": self.window}
        if self.federated:
            return {"mode": copy.deepcopy(self.mode), "compute": copy.deepcopy(self.compute),
                    "links": copy.deepcopy(self.links), "concurrency": self.concurrency,
                    "weighting": self.weighting or "samples",
                    "train_loss": bool(self.train_loss), **shared}
        return {"protocol": self.protocol, "rate": 1.0 if self.rate is None else self.rate,
                "drop": 0.0 if self.drop is None else self.drop, **shared}


class OutputConfig(Section):
    """What a run writes into its run directory."""

    dir: str = Field("runs", description="parent folder of run directories (murmura run --out "
                     "sets the run directory itself)")
    checkpoint_every: int = Field(
        10, ge=0, description="save the swarm state every k rounds (0: only at the end; a "
        "clocked run saves none: it cannot be resumed)"
    )
    keep_checkpoints: int = Field(2, ge=1, description="how many recent checkpoints to keep")
    plots: bool = Field(True, description="draw plots/*.png at the end (a clocked run: "
                        "plots/curves.png)")
    report: bool = Field(True, description="write the self-contained report.html at the end "
                         "(round-based runs; a clocked run writes none)")
    loggers: list[Literal["tensorboard", "wandb", "mlflow"]] = Field(
        default_factory=list,
        description="extra loggers (each needs its extra: pip install 'murmura[tensorboard]')",
    )


class Experiment(Section):
    """One experiment: everything a run needs, nothing else."""

    name: str = Field("experiment", min_length=1, description="label of the run")
    description: str = Field("", description="free text, shown in the report")
    seed: int = Field(0, ge=0, description="the one seed every random draw is keyed by")
    rounds: int = Field(
        20, ge=1, description="number of rounds (ignored by a clocked run: clock.until sets "
        "its length)"
    )
    kind: KindChoice | None = Field(
        None, description="what the experiment runs: 'swarm' (unset: the default, rounds of an "
        "algorithm over nodes) or another registered kind with its parameters (murmura list "
        "kinds)"
    )
    imports: list[str] = Field(
        default_factory=list,
        description="Python modules imported first, so that the models, datasets, topologies "
        "and algorithms they register can be named here",
    )
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelChoice = Field(
        default_factory=lambda: ModelChoice(name="mlp"),
        description="the model every node trains: a name and its parameters",
    )
    topology: TopologyChoice | None = Field(
        None, description="the communication graph (gossip algorithms only)"
    )
    algorithm: AlgorithmChoice = Field(
        default_factory=lambda: AlgorithmChoice(name="fedavg"),
        description="the learning algorithm: a name and its parameters (lr, local_steps, ...)",
    )
    schedule: ScheduleConfig | None = Field(
        None, description="when nodes communicate (passed to the algorithm)"
    )
    participation: ParticipationConfig | None = Field(
        None, description="who is available each round (passed to the algorithm)"
    )
    task: TaskChoice | None = Field(
        None, description="the per-node loss and the scores (murmura list tasks): a name, or a "
        "table with name and its parameters; default: the dataset's own (classification, or "
        "next_token for python_docs)"
    )
    adversary: AdversaryConfig | None = Field(
        None, description="malicious nodes and their attack (robustness experiments)"
    )
    clock: ClockConfig | None = Field(
        None, description="run on the virtual clock (simulated seconds, docs/clock.md) instead "
        "of rounds"
    )
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    provenance: dict[str, Any] | None = Field(
        None, description="written by murmura into a run's config.toml (version, git commit); "
        "ignored when read"
    )

    @model_validator(mode="before")
    @classmethod
    def _import_plugins(cls, value: Any) -> Any:
        # User modules register their components; import them before names are checked.
        if isinstance(value, dict):
            imports = value.get("imports") or []
            if isinstance(imports, list):
                for module in imports:
                    if isinstance(module, str):
                        try:
                            importlib.import_module(module)
                        except ImportError as error:
                            raise ValueError(
                                f"imports: cannot import {module!r} ({error}); is it installed "
                                "or on PYTHONPATH?"
                            ) from None
        return value

    # ------------------------------------------------------------------ io

    @classmethod
    def from_dict(cls, values: dict[str, Any], search: tuple[Path, ...] = ()) -> Experiment:
        """Validate a nested dict (what a TOML file parses to); ConfigError lists every problem.
        ``imports`` are looked for on ``sys.path``, in the current folder and in ``search``."""
        if not isinstance(values, dict):
            kind = type(values).__name__
            raise ConfigError([f"an experiment must be a table of keys, got {kind}"])
        imports = values.get("imports")
        if imports is not None and (
            not isinstance(imports, list) or not all(isinstance(m, str) for m in imports)
        ):
            raise ConfigError([f"imports: must be a list of module names, got {imports!r}"])
        import_modules(imports or [], [Path.cwd(), *search])
        try:
            return cls.model_validate(values)
        except ValidationError as error:
            raise ConfigError(describe_validation_error(error, cls)) from None

    @classmethod
    def from_toml_text(cls, text: str, source: str = "<config>") -> Experiment:
        try:
            values = tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            raise ConfigError([f"{source} is not valid TOML: {error}"]) from None
        return cls.from_dict(values)

    @classmethod
    def from_toml(cls, path: str | Path, overrides: list[str] | None = None) -> Experiment:
        """Read a TOML file, apply ``key.sub=value`` overrides, validate."""
        path = Path(path)
        if not path.is_file():
            hint = " (it is a folder: pass the config.toml inside it)" if path.is_dir() else ""
            raise ConfigError([f"no config file at {path}{hint}"])
        try:
            values = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as error:
            raise ConfigError([f"{path} is not valid TOML: {error}"]) from None
        except UnicodeDecodeError:
            raise ConfigError([f"{path} is not a text file"]) from None
        if overrides:
            values = apply_overrides(values, overrides)
        if "name" not in values:
            values["name"] = path.stem
        return cls.from_dict(values, search=(path.resolve().parent,))

    def to_dict(self) -> dict[str, Any]:
        """The nested dict of this experiment, without unset optional sections (nor, under a
        kind other than swarm, the sections only a swarm reads)."""
        values = _drop_none(self.model_dump(mode="json"))
        if self.kind is not None and self.kind.name != "swarm":
            for key in SWARM_ONLY:
                values.pop(key, None)
        return values

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())

    def with_overrides(self, overrides: list[str]) -> Experiment:
        """A copy with ``key.sub=value`` settings applied (values parsed as TOML)."""
        return Experiment.from_dict(apply_overrides(self.to_dict(), overrides))

    # ------------------------------------------------------------------ meaning

    def algorithm_params(self) -> dict[str, Any]:
        params = self.algorithm.params
        if self.schedule is not None:
            params.update(self.schedule.as_params())
        if self.participation is not None:
            params.update(self.participation.as_params())
        return params

    def check(self) -> Experiment:
        """Build what is cheap to build (the algorithm, the graph) so impossible combinations
        fail now with a ConfigError, not after the data has loaded."""
        from murmura.algorithms import make_algorithm

        problems: list[str] = []
        if self.kind is not None and self.kind.name != "swarm":
            unused = [f for f in SWARM_ONLY if f in self.model_fields_set]
            if unused:
                raise ConfigError([f"{f}: kind {self.kind.name!r} does not read it (only a "
                                   "swarm does); remove it" for f in unused])
            return self
        algorithm = None
        if self.evaluation.fewshot_shots and self.data.local_test_fraction is None:
            problems.append("evaluation.fewshot_shots: each node needs held-out samples of its "
                            "own to label and infer; set data.local_test_fraction (e.g. 0.3)")
        if self.schedule is not None:
            accepted, _, _ = _signature(self.algorithm.registry().get(self.algorithm.name), ())
            for key in self.schedule.as_params():
                if key not in accepted:
                    problems.append(
                        f"schedule.{key}: algorithm {self.algorithm.name!r} has no schedule "
                        f"parameter {key!r}; its parameters: {', '.join(accepted)}"
                    )
                elif key in self.algorithm.params:
                    problems.append(
                        f"schedule.{key}: also set as algorithm.{key}; set it in one place"
                    )
        if self.participation is not None:
            accepted, _, _ = _signature(self.algorithm.registry().get(self.algorithm.name), ())
            if "participation" not in accepted:
                problems.append(
                    f"participation: algorithm {self.algorithm.name!r} takes no participation "
                    "model (the federated ones do: fedavg, fedau, fedprox, scaffold, ...)"
                )
            elif "participation" in self.algorithm.params:
                problems.append(
                    "participation: also set as algorithm.participation; set it in one place")
        if not problems:
            try:
                algorithm = make_algorithm(self.algorithm.name, **self.algorithm_params())
            except (ValueError, TypeError) as error:
                problems.append(f"algorithm: {error}")
        if algorithm is not None:
            how_many = getattr(algorithm.participation, "how_many", None)
            if how_many is not None:
                try:
                    how_many(self.data.nodes)
                except ValueError as error:
                    problems.append(f"algorithm: {error}")
            if algorithm.needs_topology and self.topology is None:
                problems.append(
                    f"topology: algorithm {self.algorithm.name!r} gossips over a graph; add a "
                    "[topology] table, e.g. name = \"ring\" (murmura list topologies)"
                )
            if not algorithm.needs_topology and self.topology is not None:
                problems.append(
                    f"topology: algorithm {self.algorithm.name!r} does not communicate over a "
                    "graph (a server, or nothing), so [topology] would be ignored; remove it"
                )
        if algorithm is not None:
            from murmura.swarm.engine import check_same_init

            try:
                check_same_init(algorithm, self.engine.same_init)
            except ValueError as error:
                problems.append(f"engine.same_init: {error}")
        if self.adversary is not None:
            try:
                self.adversary.build().how_many(self.data.nodes)
            except (ValueError, TypeError, KeyError) as error:
                problems.append(f"adversary: {error}")
        if self.clock is not None and algorithm is not None:
            problems += self._clock_problems(algorithm)
        if self.topology is not None and not problems:
            try:
                topology = self.build_topology(
                    require_connected=bool(algorithm is not None and algorithm.needs_connected)
                )
            except (ValueError, TypeError) as error:
                problems.append(f"topology: {error}")
            else:
                problems += _aggregation_problems(algorithm, topology, self.data.nodes)
                if self.clock is not None and topology.time_varying:
                    problems.append(
                        f"clock.protocol: gossip on the clock draws neighbours from a static "
                        f"graph; topology {self.topology.name!r} changes every round (use ring, "
                        "random_regular, ...)"
                    )
        elif algorithm is not None and not problems:
            problems += _aggregation_problems(algorithm, None, self.data.nodes)
        if problems:
            raise ConfigError(problems)
        return self

    def _clock_problems(self, algorithm: Any) -> list[str]:
        """What a [clock] section cannot run with: the algorithm's kind, round-based settings,
        and the clock's models built for this experiment's nodes and seed."""
        from murmura.clock import make_availability, make_compute, make_links

        clock, name = self.clock, self.algorithm.name
        assert clock is not None
        problems = []
        server = bool(getattr(algorithm.communication, "uses_server", False))
        if clock.modest is not None:
            from murmura.algorithms.modest import ModestSampling

            if not isinstance(algorithm.communication, ModestSampling):
                problems.append(f"clock.modest: MoDeST's protocol samples with the modest "
                                f"algorithm's rule, and algorithm {name!r} is not modest; set "
                                "algorithm.name = \"modest\" (its sample_size, aggregators)")
            elif algorithm.communication.offline_fraction:
                problems.append("algorithm.offline_fraction: churn on the clock comes from "
                                "clock.availability; remove offline_fraction")
        elif clock.federated and not server:
            other = (" (it gossips over a graph: set clock.protocol instead)"
                     if algorithm.needs_topology else "")
            problems.append(
                f"clock.mode: a federated clock mode runs at a server, and algorithm {name!r} "
                f"has none{other}; use a server algorithm such as fedavg"
            )
        if not clock.federated and clock.modest is None and not algorithm.needs_topology:
            other = " (it has a server: set clock.mode instead)" if server else ""
            problems.append(
                f"clock.protocol: gossip on the clock needs a decentralized algorithm over a "
                f"[topology] (e.g. dsgd on a ring); algorithm {name!r} is not one{other}"
            )
        if clock.concurrency is not None and clock.concurrency > self.data.nodes:
            problems.append(f"clock.concurrency: {clock.concurrency} clients at once, but "
                            f"data.nodes = {self.data.nodes}")
        for key in _ROUND_PARAMS:
            if key in self.algorithm.params:
                problems.append(
                    f"algorithm.{key}: a per-round setting, meaningless on the clock (who "
                    "trains and when is clock.concurrency and clock.availability); remove it"
                )
        for section in ("schedule", "participation"):
            if getattr(self, section) is not None:
                problems.append(
                    f"{section}: a per-round setting, meaningless on the clock (who trains "
                    f"and when is clock.concurrency and clock.availability); remove [{section}]"
                )
        if self.adversary is not None:
            problems.append("adversary: attacks run in rounds; a clocked run has none "
                            "(remove [adversary] or [clock])")
        if self.engine.backend != "local":
            problems.append("engine.backend: a clocked run runs in one process; use "
                            "backend = \"local\"")
        for key, factory in (("compute", make_compute), ("links", make_links),
                             ("availability", make_availability)):
            spec = getattr(clock, key)
            if spec is None:
                continue
            try:
                factory(copy.deepcopy(spec), seed=self.seed, num_nodes=self.data.nodes)
            except TypeError as error:
                problems.append(f"clock.{key}: {_missing_clock_params(key, spec) or error}")
            except (ValueError, KeyError, OSError, IndexError, RuntimeError) as error:
                problems.append(f"clock.{key}: {error}")  # RuntimeError: torch's, on odd values
        return problems

    def build_topology(self, require_connected: bool = False) -> Any:
        from murmura.topology import make_topology

        assert self.topology is not None
        return make_topology(
            self.topology.name,
            self.data.nodes,
            seed=self.seed,
            weights=self.topology.weights,
            require_connected=require_connected,
            **self.topology.params,
        )


def _missing_clock_params(key: str, spec: Any) -> str | None:
    """``compute model 'lognormal' needs ...`` for a clock model missing a required parameter
    (the factory's own TypeError names a private function)."""
    from murmura.clock import AVAILABILITY, COMPUTE

    registry = {"compute": COMPUTE, "availability": AVAILABILITY}.get(key)
    if registry is None:
        return None
    name = spec if isinstance(spec, str) else spec.get("name")
    given = spec if isinstance(spec, dict) else {}
    missing = [k for k in _required(registry.get(name), ("seed", "num_nodes")) if k not in given]
    if not missing:
        return None
    example = ", ".join(f"{k} = ..." for k in missing)
    return (f"{registry.kind} {name!r} needs {', '.join(repr(k) for k in missing)}: "
            f"{{ name = \"{name}\", {example} }}")


def _aggregation_problems(algorithm: Any, topology: Any, nodes: int) -> list[str]:
    from murmura.robust.aggregators import check_messages, fewest_messages

    how_many = getattr(algorithm.participation, "how_many", None)
    fewest = fewest_messages(algorithm.communication, topology,
                             how_many(nodes) if how_many is not None else nodes)
    if fewest is None:
        return []
    try:
        check_messages(algorithm.communication.aggregator, fewest,
                       "the sparsest receiver gets")
    except ValueError as error:
        return [f"algorithm.aggregator: {error}"]
    return []


def import_modules(modules: list[str], folders: list[Path]) -> None:
    """Import modules that register components; ``folders`` (the current one, the config's)
    are searched too, as ``python -m`` would, so a console script finds a module beside the
    config."""
    for folder in folders:
        if str(folder) not in sys.path:
            sys.path.append(str(folder))
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise ConfigError([
                f"imports: cannot import {module!r} ({error}); is it installed, on PYTHONPATH, "
                "or beside the config file?"
            ]) from None


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value]
    return value


def parse_value(text: str) -> Any:
    """A command-line value: TOML syntax when it parses (1, 0.5, true, [1, 2], "x"), else the
    bare string (so ``data.dataset=digits`` needs no quotes)."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set ``key.sub=value`` paths in a nested dict (a copy)."""
    import copy

    result = copy.deepcopy(values)
    problems = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            problems.append(
                f"--set {item!r}: expected key.sub=value, e.g. algorithm.lr=0.1 or "
                "data.partition.alpha=0.5"
            )
            continue
        parts = key.split(".")
        node = result
        for depth, part in enumerate(parts[:-1]):  # noqa: B007 (depth names the bad prefix)
            child = node.get(part)
            if isinstance(child, str):
                child = {"name": child}  # a component given as a bare name
            if child is None:
                child = {}
            if not isinstance(child, dict):
                problems.append(
                    f"--set {item!r}: {'.'.join(parts[: depth + 1])} is a value, not a table"
                )
                break
            node[part] = child
            node = child
        else:
            node[parts[-1]] = parse_value(raw.strip())
    if problems:
        raise ConfigError(problems)
    return result


__all__ = [
    "LOGGERS",
    "AlgorithmChoice",
    "ClockConfig",
    "ConfigError",
    "DataConfig",
    "DatasetChoice",
    "EngineConfig",
    "EvaluationConfig",
    "Experiment",
    "ModelChoice",
    "OutputConfig",
    "ParticipationConfig",
    "PartitionChoice",
    "ScheduleConfig",
    "TopologyChoice",
    "apply_overrides",
    "parse_value",
]
