"""The experiment schema: round trips, clear errors for bad configs, overrides."""

from __future__ import annotations

import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from murmura.config import ConfigError, Experiment, apply_overrides, parse_value

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((REPO / "examples").glob("*.toml"))

GOSSIP = {
    "name": "t",
    "rounds": 3,
    "data": {"dataset": "digits", "nodes": 8,
             "partition": {"name": "dirichlet", "alpha": 0.5}},
    "model": {"name": "mlp", "hidden": [16]},
    "topology": {"name": "random_regular", "k": 4, "weights": "metropolis"},
    "algorithm": {"name": "dsgd", "lr": 0.1, "local_steps": 2},
    "schedule": {"communicate_every": 2, "final_merge": True},
}


def test_round_trip_toml_objects_toml():
    exp = Experiment.from_dict(GOSSIP)
    text = exp.to_toml()
    again = Experiment.from_toml_text(text)
    assert again == exp
    assert again.to_toml() == text
    assert again.topology.params == {"k": 4}
    assert again.topology.weights == "metropolis"
    assert again.algorithm_params() == {"lr": 0.1, "local_steps": 2, "communicate_every": 2,
                                        "final_merge": True}


def test_shorthand_names_equal_tables():
    a = Experiment.from_dict({"data": {"partition": "iid", "dataset": "digits"}})
    b = Experiment.from_dict({"data": {"partition": {"name": "iid"},
                                       "dataset": {"name": "digits"}}})
    assert a == b


def test_names_are_case_insensitive_and_canonical():
    exp = Experiment.from_dict({"algorithm": {"name": "FedAvg"}})
    assert exp.algorithm.name == "fedavg"


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_are_valid_and_round_trip(path):
    exp = Experiment.from_toml(path).check()
    assert Experiment.from_toml_text(exp.to_toml()) == exp
    assert exp.description or path.read_text().startswith("#")


def test_every_algorithm_has_an_example():
    from murmura.algorithms import ALGORITHMS

    used = {Experiment.from_toml(p).algorithm.name for p in EXAMPLES}
    built_in = {name for name, text in ALGORITHMS.describe().items()
                if not text.startswith("alias")
                and ALGORITHMS.get(name).__module__.startswith("murmura.")}
    assert built_in <= used


def test_file_name_is_the_default_name(tmp_path):
    path = tmp_path / "my_exp.toml"
    path.write_text("rounds = 2\n")
    assert Experiment.from_toml(path).name == "my_exp"


# (config, words the message must contain)
BAD_CONFIGS = [
    ({"rounds": 0}, ["rounds", ">= 1"]),
    ({"rounds": "ten"}, ["rounds", "integer"]),
    ({"seed": -1}, ["seed", ">= 0"]),
    ({"colour": "red"}, ["colour", "unknown key", "keys allowed"]),
    ({"data": {"nodse": 3}}, ["data.nodse", "did you mean 'nodes'"]),
    ({"data": {"nodes": 0}}, ["data.nodes", ">= 1"]),
    ({"data": 5}, ["data", "table"]),
    ({"data": {"dataset": "imagenet"}}, ["data.dataset", "unknown dataset", "digits"]),
    ({"data": {"partition": {"name": "dirichlet", "alpha": "x"}}},
     ["data.partition", "alpha", "float"]),
    ({"data": {"partition": {"name": "dirichlet", "num_nodes": 3}}},
     ["num_nodes", "data.nodes"]),
    ({"data": {"partition": {"name": "dirichlet"}}}, ["alpha"]),
    ({"model": {"name": "resnet"}}, ["model", "unknown model", "mlp"]),
    ({"model": {"name": "mlp", "hidden": "big"}}, ["model", "hidden", "list of int"]),
    ({"model": {"name": "mlp", "width": 3}}, ["model", "'width'", "hidden"]),
    ({"algorithm": {"name": "fedsgd"}}, ["algorithm", "Did you mean", "fedavg"]),
    ({"algorithm": {"name": "fedavg", "lrr": 0.1}}, ["algorithm", "did you mean 'lr'"]),
    ({"algorithm": {"name": "fedavg", "lr": "fast"}}, ["lr", "'fast'", "float"]),
    ({"algorithm": {"name": "fedavg", "lr": -1}}, ["lr", "positive"]),
    ({"algorithm": {"name": "fedavg", "clients_per_round": 50}}, ["50", "32"]),
    ({"algorithm": "dsgd"}, ["topology", "gossips", "ring"]),
    ({"topology": "ring"}, ["topology", "fedavg", "remove"]),
    ({"algorithm": "dsgd", "topology": {"name": "erdos_renyi"}}, ["erdos_renyi", "p"]),
    ({"algorithm": "dsgd", "topology": {"name": "ring", "weights": "metro"}},
     ["weights", "metropolis"]),
    ({"algorithm": "dsgd", "topology": {"name": "ring", "n": 5}}, ["'n'", "data.nodes"]),
    ({"algorithm": "dsgd", "topology": {"name": "random_regular", "k": 3},
      "data": {"nodes": 9}}, ["topology", "k"]),
    ({"schedule": {"final_merge": True}}, ["schedule.final_merge", "fedavg"]),
    ({"algorithm": {"name": "dsgd", "final_merge": True}, "topology": "ring",
      "schedule": {"final_merge": False}}, ["schedule.final_merge", "one place"]),
    ({"schedule": {"late_fraction": 2}}, ["schedule.late_fraction", "<= 1"]),
    ({"evaluation": {"every": -1}}, ["evaluation.every", ">= 0"]),
    ({"output": {"loggers": ["tb"]}}, ["output.loggers[0]", "tensorboard"]),
    ({"engine": {"chunk_size": 0}}, ["engine.chunk_size", ">= 1"]),
    ({"imports": ["no_such_module_xyz"]}, ["imports", "no_such_module_xyz"]),
    ({"imports": "x"}, ["imports", "list"]),
    ({"algorithm": {"name": "fedavg", "local_steps": 5, "local_epochs": 2.0}},
     ["local_steps", "local_epochs", "exactly one"]),
    ({"rounds": "3"}, ["rounds", "integer"]),
    ({"seed": True}, ["seed", "integer"]),
    ({"data": {"nodes": True}}, ["data.nodes", "integer"]),
    ({"data": {"nodes": 4.0}}, ["data.nodes", "integer"]),
    ({"output": {"plots": 0}}, ["output.plots", "boolean"]),
    ({"algorithm": {"name": "fedavg", "lr": "0.1"}}, ["lr", "float"]),
    ({"engine": {"device": "tpu"}}, ["engine", "device", "cpu"]),
    ({"engine": {"device": "banana"}}, ["engine", "not a torch device"]),
    ({"algorithm": "dsgd", "topology": {"name": "ring", "wieghts": "uniform"}},
     ["did you mean 'weights'"]),
]


@pytest.mark.parametrize("values,words", BAD_CONFIGS, ids=lambda v: str(v)[:40])
def test_bad_config_gives_a_clear_error(values, words):
    with pytest.raises(ConfigError) as info:
        Experiment.from_dict(values).check()
    message = str(info.value)
    for word in words:
        assert word in message, f"{word!r} missing from: {message}"
    assert "Traceback" not in message and "pydantic" not in message.lower()


def test_several_problems_are_listed_together():
    with pytest.raises(ConfigError) as info:
        Experiment.from_dict({"rounds": 0, "seed": -2, "data": {"nodes": 0}})
    assert len(info.value.problems) == 3


def test_toml_syntax_error_names_the_file(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("rounds = = 3\n")
    with pytest.raises(ConfigError, match="broken.toml is not valid TOML"):
        Experiment.from_toml(path)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(ConfigError, match="no config file"):
        Experiment.from_toml(tmp_path / "absent.toml")
    with pytest.raises(ConfigError, match="it is a folder"):
        Experiment.from_toml(tmp_path)


def test_overrides():
    exp = Experiment.from_dict(GOSSIP)
    changed = exp.with_overrides(["algorithm.lr=0.5", "data.partition.alpha=2",
                                  "data.dataset=synthetic", "model.hidden=[8, 8]"])
    assert changed.algorithm.params["lr"] == 0.5
    assert changed.data.partition.params["alpha"] == 2.0
    assert changed.data.dataset.name == "synthetic"
    assert changed.model.params["hidden"] == [8, 8]
    # a component given as a bare name takes parameters through --set
    shorthand = apply_overrides({"data": {"partition": "iid"}}, ["data.partition.alpha=1"])
    assert shorthand == {"data": {"partition": {"name": "iid", "alpha": 1}}}


@pytest.mark.parametrize("item", ["algorithm.lr", "=3", "a..b=1", "rounds.x=1"])
def test_bad_overrides(item):
    with pytest.raises(ConfigError):
        Experiment.from_dict(GOSSIP).with_overrides([item])


def test_parse_value():
    assert parse_value("0.1") == 0.1
    assert parse_value("true") is True
    assert parse_value("[1, 2]") == [1, 2]
    assert parse_value("digits") == "digits"
    assert parse_value('"3"') == "3"


# Random configs, mostly wrong: validation answers with ConfigError or an experiment, never
# with another exception.
keys = st.sampled_from(["rounds", "seed", "data", "model", "topology", "algorithm", "schedule",
                        "evaluation", "engine", "output", "name", "nodes", "lr", "alpha",
                        "dataset", "partition", "hidden", "k", "weights", "every", "loggers",
                        "final_merge", "device", "imports"])
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 100), st.floats(allow_nan=True),
    st.text(string.ascii_lowercase + "_-", max_size=12),
    st.sampled_from(["digits", "mlp", "ring", "dsgd", "fedavg", "iid", "dirichlet", "cnn",
                     "random_regular", "metropolis", "tensorboard", "local_sgd", "synthetic"]),
)
values = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=3),
                               st.dictionaries(keys, children, max_size=4)),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(keys, values, max_size=6))
def test_random_configs_never_traceback(config):
    config.pop("imports", None)  # importing arbitrary module names is not this test's subject
    try:
        Experiment.from_dict(config).check()
    except ConfigError as error:
        assert str(error)


def test_reference_pages_are_generated_from_the_code():
    from murmura.config.reference import cli_markdown, configuration_markdown

    fix = "regenerate them: python -m murmura.config.reference docs"
    assert (REPO / "docs" / "configuration.md").read_text() == configuration_markdown(), fix
    assert (REPO / "docs" / "cli.md").read_text() == cli_markdown(), fix


def test_cuda_without_a_gpu_is_refused():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ConfigError, match="no usable CUDA device"):
        Experiment.from_dict({"engine": {"device": "cuda"}})


def test_ints_are_accepted_where_floats_are():
    exp = Experiment.from_dict({"algorithm": {"name": "fedavg", "lr": 1, "local_epochs": 2}})
    assert exp.algorithm.params["lr"] == 1.0
