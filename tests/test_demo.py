"""`murmura demo` and the `python -m murmura` entry point."""

from rich.console import Console

import murmura.demo
from murmura.__main__ import main


def test_demo_falls_back_to_digits_and_prints_a_table(monkeypatch):
    monkeypatch.setattr(murmura.demo, "_fashion_mnist", lambda seed, nodes: None)
    console = Console(record=True, width=120)
    results = murmura.demo.run_demo(rounds=3, nodes=8, console=console)
    text = console.export_text()
    assert "digits" in text and "ring D-SGD + final merge" in text
    assert [r["arm"] for r in results] == ["FedAvg", "ring D-SGD", "ring D-SGD + final merge"]
    merged = results[2]
    assert merged["consensus_distance"] < 1e-10  # every node holds the merged model
    assert results[1]["consensus_distance"] > 0


def test_cli_rejects_unknown_commands(capsys):
    assert main(["nope"]) == 2
    assert "unknown command 'nope'" in capsys.readouterr().err
    assert main(["--help"]) == 0
