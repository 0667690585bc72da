"""``murmura launch``: N peers of one experiment as local processes on loopback.

:class:`Launch` writes a run directory laid out like ``murmura run``'s, with the peers'
own folders inside it::

    OUT/config.toml            the resolved experiment (every peer reads it)
    OUT/peers.toml             every peer's address, certificate fingerprint and key
    OUT/peers/<id>/key/        that peer's private keys (0600) and certificate
    OUT/peers/<id>/            its metrics.jsonl, checkpoints, rows/, summary.json, log.txt
    OUT/metrics.jsonl, metrics.csv, summary.json, topology.json   the swarm, gathered

It generates a key pair and certificate per peer, picks free loopback ports, starts one
``murmura node`` process per node (and one for the server of a star), shows one progress
display, and :meth:`Launch.gather` then builds the swarm's records: ledgers summed over the
peers (the busiest peer's for the ``_max`` columns), timings of the slowest peer, the
network's counters summed, and, on evaluation rounds where every peer saved its model, the
swarm evaluated exactly as the simulator evaluates it (the average model, the consensus
distance, node accuracies). On a round some peer did not reach, ``test_accuracy`` is the
mean of the reporting peers' own models' accuracies and ``peers_reporting`` says how many.

Tests drive a launch through :meth:`start`, :meth:`kill`, :meth:`restart` and
:meth:`wait` (SIGKILL of some peers in mid-run, a killed peer restarted).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from murmura.net.identity import Identity, generate, write_peers
from murmura.net.node import shape_of
from murmura.net.peer import DEFAULT_SETTINGS, SERVER, PeerSettings, peer_name


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` ports the OS has free now (held open together, so they are distinct)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind((host, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


_SUM = ("bytes_sent", "bytes_received", "bytes_sent_total", "bytes_received_total")
_MAX_OF = {"bytes_sent_per_node_max": "bytes_sent_total",
           "bytes_received_per_node_max": "bytes_received_total"}
_SLOWEST = ("train_seconds", "comm_seconds", "round_seconds", "wall_seconds",
            "server_bytes_sent_total")
_OWN = ("test_accuracy", "test_loss", "personal_accuracy")


class Launch:
    """N peers of ``experiment`` on loopback, writing into ``out`` (see the module
    docstring). ``settings`` are every peer's deadlines; ``insecure`` runs plain TCP (the
    messages are still signed)."""

    def __init__(self, experiment: Any, out: str | Path, *, insecure: bool = False,
                 settings: PeerSettings = DEFAULT_SETTINGS, checkpoint_every: int = 1,
                 command: list[str] | None = None, log_level: str = "WARNING",
                 relay_idle_s: float = 5.0, hosts: Mapping[str, str] | None = None,
                 prefix: Mapping[str, list[str]] | None = None,
                 extra_peers: Sequence[tuple[Identity, str]] = ()) -> None:
        from murmura.runner.rundir import RunDirectory

        self.experiment = experiment
        self.out = Path(out)
        RunDirectory.check_free(self.out)
        self.n = int(experiment.data.nodes)
        self.shape = shape_of(experiment)
        self.ids = [peer_name(i) for i in range(self.n)] + (
            [SERVER] if self.shape == "server" else [])
        self.insecure, self.settings = insecure, settings
        self.checkpoint_every, self.log_level = checkpoint_every, log_level
        self.relay_idle_s = relay_idle_s
        self._stopped = False  # stop() was called: nobody waits for the relay to finish
        self.command_line = command
        # where each peer listens and what its command runs under (a network namespace:
        # ["ip", "netns", "exec", NAME]); extra entries for the peers file (a test's
        # attacker, listed but not a node)
        self.hosts, self.prefix = dict(hosts or {}), dict(prefix or {})
        self.extra_peers = list(extra_peers)
        self.processes: dict[str, subprocess.Popen] = {}
        self.addresses: dict[str, str] = {}
        self.started = 0.0

    # ------------------------------------------------------------------ set-up

    def folder(self, peer: str) -> Path:
        return self.out / "peers" / peer

    def prepare(self) -> Path:
        """The run directory, every peer's keys and the peers file; returns its path."""
        from murmura.runner.rundir import RunDirectory

        RunDirectory.create(self.experiment, self.out, self.command_line)
        ports = free_ports(len(self.ids))
        entries = []
        for peer, port in zip(self.ids, ports):
            identity = generate(peer, self.folder(peer) / "key")
            self.addresses[peer] = f"{self.hosts.get(peer, '127.0.0.1')}:{port}"
            entries.append((identity, self.addresses[peer]))
        return write_peers(self.out / "peers.toml", entries + self.extra_peers)

    def command(self, peer: str) -> list[str]:
        """The ``murmura node`` command line of one peer."""
        s = self.settings
        line = [*self.prefix.get(peer, []), sys.executable, "-m", "murmura", "node",
                "--config", str(self.out / "config.toml"),
                "--id", peer, "--listen", self.addresses[peer],
                "--peers", str(self.out / "peers.toml"), "--key", str(self.folder(peer) / "key"),
                "--out", str(self.folder(peer)), "--deadline", f"{s.deadline_s:g}",
                "--quorum", f"{s.quorum:g}", "--hello-timeout", f"{s.hello_timeout_s:g}",
                "--pace", f"{s.pace_s:g}",
                "--checkpoint-every", str(self.checkpoint_every), "--log-level", self.log_level]
        if peer == SERVER:
            line += ["--idle-exit", f"{self.relay_idle_s:g}"]
        if self.insecure:
            line.append("--insecure")
        return line

    # ------------------------------------------------------------------ processes

    def _spawn(self, peer: str) -> None:
        folder = self.folder(peer)
        folder.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
               "PYTHONUNBUFFERED": "1"}
        log = (folder / "log.txt").open("ab")
        self.processes[peer] = subprocess.Popen(self.command(peer), stdout=log,
                                                stderr=subprocess.STDOUT, env=env,
                                                start_new_session=True)
        log.close()

    def start(self) -> None:
        if not self.addresses:
            self.prepare()
        self.started = time.perf_counter()
        for peer in self.ids:
            self._spawn(peer)

    def kill(self, peer: str, sig: int = signal.SIGKILL) -> None:
        process = self.processes[peer]
        if process.poll() is None:
            process.send_signal(sig)
            process.wait()

    def restart(self, peer: str) -> None:
        """Start a killed peer again on its folder: it resumes from its last checkpoint."""
        if self.processes[peer].poll() is None:
            raise RuntimeError(f"peer {peer} is still running")
        self._spawn(peer)

    def rounds_done(self) -> dict[str, int]:
        """Rounds each node peer has recorded so far."""
        from murmura.runner.rundir import RunDirectory

        out = {}
        for peer in self.ids:
            if peer == SERVER:
                continue
            records = RunDirectory(self.folder(peer)).records()
            out[peer] = records[-1]["round"] + 1 if records else 0
        return out

    def wait(self, timeout_s: float | None = None, display: Any = None) -> dict[str, int | None]:
        """Until every node peer has exited, at most ``timeout_s`` (then the remaining ones are
        killed); then the server: given its idle time to exit by itself when every node
        completed, else stopped; their exit codes."""
        end = None if timeout_s is None else time.monotonic() + timeout_s
        nodes = [p for p in self.ids if p != SERVER]
        timed_out = False
        while any(self.processes[p].poll() is None for p in nodes):
            if end is not None and time.monotonic() > end:
                timed_out = True
                break
            if display is not None:
                done = self.rounds_done()
                display(min(done.values()) if done else 0)
            time.sleep(0.25)
        relay = self.processes.get(SERVER)
        finished = not (self._stopped or timed_out) and all(
            self.processes[p].returncode == 0 for p in nodes)
        if relay is not None and relay.poll() is None and finished:
            # it exits by itself after relay_idle_s of silence; a SIGTERM that lands after its
            # loop ended (while it shuts down) would kill it with -15 though it completed
            try:
                relay.wait(self.relay_idle_s + 30.0)
            except subprocess.TimeoutExpired:
                pass
        if relay is not None and relay.poll() is None:
            relay.send_signal(signal.SIGTERM)
            try:
                relay.wait(10)
            except subprocess.TimeoutExpired:
                relay.kill()
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()
        return {p: self.processes[p].returncode for p in self.ids}

    def stop(self) -> None:
        """SIGTERM every peer (each finishes its round and checkpoints)."""
        self._stopped = True
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)

    # ------------------------------------------------------------------ the swarm's records

    def peer_records(self) -> dict[str, dict[int, dict[str, Any]]]:
        from murmura.runner.rundir import RunDirectory

        return {p: {r["round"]: r for r in RunDirectory(self.folder(p)).records()}
                for p in self.ids if p != SERVER}

    def peer_summaries(self) -> dict[str, dict[str, Any]]:
        out = {}
        for p in self.ids:
            path = self.folder(p) / "summary.json"
            try:
                out[p] = json.loads(path.read_text())
            except (OSError, ValueError):
                out[p] = {"status": "no summary (killed?)"}
        return out

    def gather(self) -> Any:
        """Write the swarm's metrics, summary and figures into the run directory; returns a
        :class:`~murmura.runner.run.RunResult`."""
        from murmura.metrics.history import History
        from murmura.runner.run import RunResult, build_simulation, write_figures
        from murmura.runner.rundir import RunDirectory

        experiment, total = self.experiment, self.experiment.rounds
        sim = build_simulation(experiment)
        records = self.peer_records()
        rows: list[dict[str, Any]] = []
        for r in range(total):
            present = {p: recs[r] for p, recs in records.items() if r in recs}
            if not present:
                continue
            rows.append(self._round(r, present, sim))
        # a refusal reason that never happened is not a column (net_refused_total stays)
        quiet = {k for row in rows for k in row if k.startswith("net_refused_")
                 and k != "net_refused_total"} - {k for row in rows for k, v in row.items()
                                                  if k.startswith("net_refused_") and v}
        rows = [{k: v for k, v in row.items() if k not in quiet} for row in rows]
        directory = RunDirectory(self.out)
        directory.rewrite_records(History(rows))
        history = History(rows)
        directory.write_metrics_csv(history)
        summaries = self.peer_summaries()
        nodes = [p for p in self.ids if p != SERVER]
        status = "completed" if all(summaries[p].get("status") == "completed"
                                    for p in nodes) else "incomplete"
        info = sim.summary()
        info.update(backend="peers", peers=len(self.ids), shape=self.shape,
                    rounds_done=max((len(r) for r in records.values()), default=0))
        seconds = max((row.get("wall_seconds", 0.0) for row in rows), default=0.0)
        summary = directory.write_summary(status, history, total, info, seconds)
        summary["network"] = {
            "launch_seconds": time.perf_counter() - self.started if self.started else None,
            "insecure": self.insecure, "deadline_s": self.settings.deadline_s,
            "quorum": self.settings.quorum,
            "peers": {p: {k: v for k, v in s.items() if k != "counters"}
                      for p, s in summaries.items()},
            "evidence": sum(int(s.get("evidence", 0)) for s in summaries.values()),
        }
        directory.save_summary(summary)
        directory.write_topology(sim.topology, sim.algorithm, sim.num_nodes)
        if experiment.output.plots or experiment.output.report:
            write_figures(self.out, report=experiment.output.report)
        return RunResult(self.out, status, history, summary)

    def _round(self, r: int, present: dict[str, dict[str, Any]], sim: Any) -> dict[str, Any]:
        first = next(iter(present.values()))
        row: dict[str, Any] = {"round": r, "communicated": first.get("communicated")}
        for key in _SUM:
            row[key] = sum(float(rec.get(key, 0.0)) for rec in present.values())
        row["bytes_sent_per_node_mean"] = row["bytes_sent_total"] / self.n
        row["bytes_received_per_node_mean"] = row["bytes_received_total"] / self.n
        for key, of in _MAX_OF.items():
            row[key] = max(float(rec.get(of, 0.0)) for rec in present.values())
        for key in _SLOWEST:
            row[key] = max(float(rec.get(key, 0.0)) for rec in present.values())
        net = sorted({k for rec in present.values() for k in rec if k.startswith("net_")})
        for key in net:
            row[key] = sum(int(rec.get(key, 0)) for rec in present.values())
        row["peers_reporting"] = len(present)
        own = [rec["test_accuracy"] for rec in present.values() if "test_accuracy" in rec]
        if own:
            row["peer_test_accuracy_mean"] = sum(own) / len(own)
            row["peer_test_accuracy_min"] = min(own)
            row.update(self._evaluate(r, sim) or {"test_accuracy": sum(own) / len(own)})
        return row

    def _evaluate(self, r: int, sim: Any) -> dict[str, Any] | None:
        """The simulator's evaluation of the peers' models after round ``r``, if every node
        saved its model then."""
        from safetensors.torch import load_file

        rows, served = [], None
        for i in range(self.n):
            path = self.folder(peer_name(i)) / "rows" / f"round_{r:06d}.safetensors"
            if not path.is_file():
                return None
            tensors = load_file(str(path))
            rows.append(tensors["params"])
            if served is None and "server_params" in tensors:
                served = tensors["server_params"]
        stacked = torch.stack(rows)
        with torch.no_grad():
            sim.params.copy_(stacked.to(sim.params))
        sim.server_state = {"params": served.to(sim.params)} if served is not None else {}
        sim.round, sim._identical = r, None
        if bool((stacked == stacked[:1]).all()):  # as the simulator marks a server's average
            sim._mark_identical()
        return sim.evaluate()


__all__ = ["Launch", "free_ports"]
