"""The network commands of ``murmura``: ``keygen``, ``node`` and ``launch``.

Registered on the main Typer app by :func:`register` (kept apart from ``murmura.cli`` so
that the simulator's commands never import gRPC).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

err_console = Console(stderr=True)

Deadline = Annotated[float, typer.Option(help="seconds to wait for one exchange")]
Quorum = Annotated[float, typer.Option(
    help="fraction of the expected messages worth one more deadline")]
Pace = Annotated[float, typer.Option(
    help="the least seconds a round takes (0: as fast as the messages come)")]
Overrides = Annotated[list[str] | None, typer.Option("--set", help="override a key")]


def _settings(deadline: float, quorum: float, hello_timeout: float, pace: float,
              fail: Any) -> Any:
    from murmura.net.peer import PeerSettings

    try:
        return PeerSettings(deadline, quorum, hello_timeout, pace)
    except ValueError as error:
        raise fail(str(error)) from None


def _logging(level: str, fail: Any) -> None:
    value = getattr(logging, level.upper(), None)
    if not isinstance(value, int):
        raise fail(f"--log-level {level!r}: choose DEBUG, INFO, WARNING or ERROR")
    logging.basicConfig(level=value, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def register(app: typer.Typer, guard: Any, user_error: type[Exception]) -> None:
    """Add ``keygen``, ``node`` and ``launch`` to ``app``; ``guard`` turns bad input into
    one message, ``user_error`` is the exception it prints."""

    @app.command()
    @guard
    def keygen(
        node_id: Annotated[str, typer.Argument(help="the node id: 0 to N-1, or 'server'")],
        out: Annotated[Path, typer.Option(help="folder for the keys (created; 0600 keys)")],
        force: Annotated[bool, typer.Option(help="replace existing keys")] = False,
    ) -> None:
        """Create a peer's Ed25519 signing key, TLS key and self-signed certificate.

        Prints the certificate's fingerprint; OUT/peer.toml is this peer's entry for the
        peers file (add its address). Keep the .key files on that machine only.
        """
        from murmura.net.identity import generate

        try:
            identity = generate(node_id, out, overwrite=force)
        except (ValueError, FileExistsError) as error:
            raise user_error(str(error)) from None
        typer.echo(f"node {identity.node_id}: keys in {out}")
        typer.echo(f"fingerprint {identity.fingerprint}")
        typer.echo(f"peers-file entry: {out / 'peer.toml'} (add address = \"HOST:PORT\")")

    @app.command()
    @guard
    def node(
        config: Annotated[Path, typer.Option(help="the experiment TOML (the same on every peer)")],
        id_: Annotated[str, typer.Option("--id", help="this peer's node id (0 to N-1, or "
                                                      "'server' for a star's server)")],
        listen: Annotated[str, typer.Option(help="HOST:PORT to listen on")],
        peers: Annotated[Path, typer.Option(help="the peers file (addresses, fingerprints)")],
        key: Annotated[Path, typer.Option(help="this peer's key folder (murmura keygen)")],
        out: Annotated[Path, typer.Option(help="this peer's folder (metrics, checkpoints); "
                                                "a folder with checkpoints resumes")],
        set_: Overrides = None,
        insecure: Annotated[bool, typer.Option(
            help="plain TCP without TLS, for local tests only (messages stay signed)")] = False,
        deadline: Deadline = 30.0,
        quorum: Quorum = 1.0,
        hello_timeout: Annotated[float, typer.Option(
            help="seconds to wait for the neighbours to come up")] = 120.0,
        pace: Pace = 0.0,
        checkpoint_every: Annotated[int, typer.Option(min=0, help="rounds between "
                                                      "checkpoints (0: never)")] = 1,
        idle_exit: Annotated[float, typer.Option(
            help="the server: seconds of silence after the last round before it exits")] = 30.0,
        log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR")] = "WARNING",
    ) -> None:
        """Run one peer of an experiment: its node's rules and data, over mutual TLS.

        Start one per machine, with the same experiment and peers file (docs/deploy.md)."""
        from murmura.config import Experiment
        from murmura.net.identity import Identity, load_peers
        from murmura.net.node import run_node, run_relay
        from murmura.net.peer import SERVER

        _logging(log_level, user_error)
        experiment = Experiment.from_toml(config, set_ or [])
        settings = _settings(deadline, quorum, hello_timeout, pace, user_error)
        try:
            peer_list = load_peers(peers)
            identity = Identity.load(key)
        except ValueError as error:
            raise user_error(str(error)) from None
        if identity.node_id != id_:
            raise user_error(f"the key in {key} is node {identity.node_id!r}'s, not {id_!r}'s")
        try:
            if id_ == SERVER:
                summary = run_relay(experiment, peer_list, identity, out, listen=listen,
                                    insecure=insecure, settings=settings, idle_exit_s=idle_exit)
            else:
                if not id_.isdigit():
                    raise user_error(f"--id {id_!r}: a node index 0 to "
                                     f"{experiment.data.nodes - 1}, or {SERVER!r}")
                summary = run_node(experiment, int(id_), peer_list, identity, out,
                                   listen=listen, insecure=insecure, settings=settings,
                                   checkpoint_every=checkpoint_every)
        except OSError as error:
            raise user_error(str(error)) from None
        except ValueError as error:
            raise user_error(str(error)) from None
        err_console.print(f"node {id_}: {summary['status']} after {summary['rounds_done']} "
                          f"rounds")
        if summary["status"] == "failed":
            raise typer.Exit(1)

    @app.command()
    @guard
    def launch(
        config: Annotated[Path, typer.Argument(help="experiment TOML file")],
        nodes: Annotated[int | None, typer.Option(
            min=1, help="number of peers (default: data.nodes)")] = None,
        out: Annotated[Path | None, typer.Option(
            help="the run directory (default: a new folder under output.dir)")] = None,
        set_: Overrides = None,
        insecure: Annotated[bool, typer.Option(
            help="plain TCP between the local peers (messages stay signed)")] = False,
        deadline: Deadline = 30.0,
        quorum: Quorum = 1.0,
        pace: Pace = 0.0,
        timeout: Annotated[float | None, typer.Option(
            help="stop the peers after this many seconds")] = None,
        quiet: Annotated[bool, typer.Option(help="no progress display")] = False,
    ) -> None:
        """Run an experiment as N real peer processes on loopback, gathered into one run.

        Each peer is a `murmura node` process (mutual TLS, signed messages); the run
        directory is laid out like `murmura run`'s, the peers' own folders in OUT/peers."""
        from datetime import datetime

        from murmura.config import Experiment
        from murmura.net.launch import Launch
        from murmura.runner.progress import RunProgress

        overrides = list(set_ or []) + ([f"data.nodes={nodes}"] if nodes is not None else [])
        experiment = Experiment.from_toml(config, overrides)
        if out is None:
            stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
            out = Path(experiment.output.dir) / f"{experiment.name}-peers-{stamp}"
        settings = _settings(deadline, quorum, 120.0, pace, user_error)
        try:
            run = Launch(experiment, out, insecure=insecure, settings=settings,
                         command=sys.argv)
        except (FileExistsError, ValueError) as error:
            raise user_error(str(error)) from None
        run.start()
        err_console.print(f"{len(run.ids)} peers on loopback, writing {out}")
        display = RunProgress(err_console, experiment.name, experiment.rounds, 0,
                              enabled=not quiet)
        try:
            with display:
                def show(done: int) -> None:
                    if done:
                        display.update({"round": done - 1})
                codes = run.wait(timeout, display=show)
        except KeyboardInterrupt:
            run.stop()
            codes = run.wait(30)
        result = run.gather()
        bad = {p: c for p, c in codes.items() if c not in (0, None) and p != "server"}
        final = result.summary.get("final", {})
        acc = final.get("test_accuracy")
        err_console.print(f"{result.status}: {result.summary.get('rounds_done', 0)} rounds, "
                          f"accuracy {'-' if acc is None else f'{100 * acc:.2f}%'}, "
                          f"run directory {out}")
        if bad:
            err_console.print(f"peers that failed: {bad} (their log.txt is in {out}/peers)")
            raise typer.Exit(1)


__all__ = ["register"]
