"""`murmura keygen`, `node` and `launch`: what they write, and clear errors for bad input."""

from __future__ import annotations

import numpy as np
import pytest

from murmura.cli import main
from murmura.net import Guard, Identity, Sealer, WireError, peers_from


def test_keygen_writes_a_loadable_identity_and_refuses_to_overwrite(tmp_path, capsys):
    assert main(["keygen", "3", "--out", str(tmp_path / "k")]) == 0
    printed = capsys.readouterr().out
    identity = Identity.load(tmp_path / "k")
    assert identity.node_id == "3" and identity.fingerprint in printed
    assert main(["keygen", "3", "--out", str(tmp_path / "k")]) == 2
    assert "refusing to replace keys" in capsys.readouterr().err.replace("\n", " ")
    assert main(["keygen", "bad id!", "--out", str(tmp_path / "j")]) == 2


def test_node_refuses_a_key_that_is_not_the_listed_one(tmp_path, capsys):
    config = tmp_path / "c.toml"
    config.write_text('name = "x"\nrounds = 1\n[data]\ndataset = "digits"\nnodes = 2\n'
                      '[algorithm]\nname = "fedavg"\nlocal_steps = 1\n')
    main(["keygen", "0", "--out", str(tmp_path / "k0")])
    main(["keygen", "1", "--out", str(tmp_path / "k1")])
    peers = tmp_path / "peers.toml"
    a, b = Identity.load(tmp_path / "k0"), Identity.load(tmp_path / "k1")
    from murmura.net import write_peers

    write_peers(peers, [(a, "127.0.0.1:1"), (b, "127.0.0.1:2")])
    args = ["node", "--config", str(config), "--listen", "127.0.0.1:0", "--peers", str(peers),
            "--out", str(tmp_path / "out")]
    assert main([*args, "--id", "0", "--key", str(tmp_path / "k1")]) == 2
    assert "not '0'" in capsys.readouterr().err
    assert main([*args, "--id", "7", "--key", str(tmp_path / "k0")]) == 2
    assert main([*args, "--id", "0", "--key", str(tmp_path / "k0"), "--quorum", "2"]) == 2
    assert "quorum" in capsys.readouterr().err


def test_launch_refuses_a_run_directory_in_use(tmp_path, capsys):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("x")
    assert main(["launch", "examples/fedavg.toml", "--out", str(tmp_path / "busy")]) == 2
    assert "not empty" in capsys.readouterr().err


def test_guard_checks_numbered_exchanges_against_their_family():
    a, b = Identity.create("a"), Identity.create("b")
    peers = peers_from({"peer": [a.entry("127.0.0.1:1"), b.entry("127.0.0.1:2")]})
    guard = Guard("b", "run", peers, insecure=True, ahead=5,
                  expected={"mix": {"x": ((3,), "float32")}, "agg": None})
    sealer = Sealer("a", "run", a.signing_key)
    assert guard.admit(sealer.seal("b", 0, "mix.4", {"x": np.ones(3, "f4")})).kind == "mix.4"
    assert guard.admit(sealer.seal("b", 0, "agg.0", {"anything": np.ones(7, "f4")}))
    with pytest.raises(WireError, match="wrong_shape"):
        guard.admit(sealer.seal("b", 0, "mix.5", {"x": np.ones(4, "f4")}))
    with pytest.raises(WireError, match="unexpected_kind"):
        guard.admit(sealer.seal("b", 0, "other.0", {"x": np.ones(3, "f4")}))
    with pytest.raises(WireError, match="future_round"):
        guard.admit(sealer.seal("b", 99, "mix.0", {"x": np.ones(3, "f4")}))
    assert guard.latest["a"] == 99  # a proven sender's claimed round, refused or not
