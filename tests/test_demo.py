"""`murmura demo` and the `python -m murmura` entry point."""

from rich.console import Console

import murmura.demo
from murmura.__main__ import main


def test_demo_falls_back_to_digits_and_prints_a_table(monkeypatch, tmp_path):
    monkeypatch.setattr(murmura.demo, "fashion_mnist_root", lambda: False)
    console = Console(record=True, width=120)
    results = murmura.demo.run_demo(rounds=3, nodes=8, console=console, out=tmp_path / "demo")
    text = console.export_text()
    assert "digits" in text and "ring D-SGD + final merge" in text
    assert [r["arm"] for r in results] == ["FedAvg", "ring D-SGD", "ring D-SGD + final merge"]
    merged = results[2]
    assert merged["consensus_distance"] < 1e-10  # every node holds the merged model
    assert results[1]["consensus_distance"] > 0
    assert (tmp_path / "demo" / "ring-dsgd" / "metrics.csv").is_file()


def test_demo_rerun_replaces_its_own_folders(monkeypatch, tmp_path):
    monkeypatch.setattr(murmura.demo, "fashion_mnist_root", lambda: False)
    console = Console(record=True, width=120)
    first = murmura.demo.run_demo(rounds=2, nodes=4, console=console, out=tmp_path)
    again = murmura.demo.run_demo(rounds=2, nodes=4, console=console, out=tmp_path)
    assert [r["test_accuracy"] for r in first] == [r["test_accuracy"] for r in again]


def test_cli_rejects_unknown_commands(capsys):
    assert main(["nope"]) == 2
    assert "nope" in capsys.readouterr().err
    assert main(["--help"]) == 0
