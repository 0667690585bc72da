"""One peer process: ``murmura node`` (a node of the swarm) and the server of a star.

:func:`run_node` builds the node's :class:`~murmura.net.peer.PeerSimulation` from the
experiment, listens, greets its neighbours (waiting for them to come up before round 0),
then runs the rounds, writing its own folder as it goes:

==========================  ==========================================================
``metrics.jsonl``           one record per round: this node's ledgers and timings, its
                            model's test accuracy on evaluation rounds, and the
                            network's counters (``net_accepted``, ``net_refused_<reason>``,
                            ``net_missing``, ``net_failed_deliveries``, ...)
``checkpoints/``            the node's state every ``checkpoint_every`` rounds
``rows/round_<r>.safetensors``  the node's model (and the server's, under a server) on
                            evaluation rounds, for ``murmura launch`` to evaluate the swarm
``summary.json``            status, rounds done, counters, equivocation evidence count
==========================  ==========================================================

A peer started on a folder with checkpoints resumes from the last one and rejoins: it skips
the greeting, and whenever at least half of its neighbours are two or more rounds ahead (their
messages say so) it jumps to the round they are in (the same rule re-aligns the two sides
of a partition once it heals); every draw is keyed by the round, so
it computes what it would have from there.

:func:`run_relay` is the peer that plays the server of a star (federated algorithms): it
adds the weighted parts the clients upload for each exchange, rescales the weights over the
clients it heard from by the deadline, and sends the sum back to every client.
"""

from __future__ import annotations

import json
import logging
import re
import signal
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.torch import save_file

from murmura.net.identity import Identity, Peers
from murmura.net.mesh import Mesh
from murmura.net.peer import DEFAULT_SETTINGS, SERVER, PeerSettings, PeerSimulation, peer_name

log = logging.getLogger("murmura.net")


def run_id(experiment: Any) -> str:
    """The run id every peer of an experiment signs its messages with."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", str(experiment.name)).strip("-.") or "run"
    return f"{slug[:48]}-s{int(experiment.seed)}"


def shape_of(experiment: Any) -> str:
    """``"graph"`` (gossip with topology neighbours), ``"server"`` (a star) or ``"none"``."""
    if experiment.topology is not None:
        return "graph"
    from murmura.algorithms import make_algorithm

    algorithm = make_algorithm(experiment.algorithm.name, **experiment.algorithm_params())
    return "server" if getattr(algorithm.communication, "uses_server", False) else "none"


class _Stop:
    """SIGTERM / SIGINT: finish the round, checkpoint, exit."""

    def __init__(self) -> None:
        self.requested = False

    def __enter__(self) -> _Stop:
        self._old = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True

    def __exit__(self, *exc: Any) -> None:
        for s, handler in self._old.items():
            signal.signal(s, handler)


def _neighbours(sim: PeerSimulation, shape: str) -> list[str]:
    if shape == "server":
        return [SERVER]
    if shape != "graph":
        return []
    if sim.topology.time_varying:  # anyone may be a neighbour in some round
        return [peer_name(j) for j in range(sim.num_nodes) if j != sim.node]
    ins, outs, _ = sim._links(sim.topology.mixing_at(0))
    return sorted({peer_name(j) for j, _ in ins} | {peer_name(j) for j in outs}, key=int)


def _save_rows(folder: Path, sim: PeerSimulation) -> None:
    folder.mkdir(exist_ok=True)
    tensors = {"params": sim.params[0].detach().cpu().contiguous()}
    if sim.server_state.get("params") is not None:
        tensors["server_params"] = sim.server_state["params"].detach().cpu().contiguous()
    path = folder / f"round_{sim.round - 1:06d}.safetensors"
    partial = path.with_suffix(".partial")
    save_file(tensors, str(partial))
    partial.replace(path)


def _catch_up(sim: PeerSimulation, mesh: Mesh, neighbours: list[str]) -> int | None:
    """The round at least half of the neighbours are in, when that is two or more ahead of
    this peer (half, not a majority: after a partition heals, one side must be able to
    rejoin the other across a single link)."""
    if not neighbours:
        return None
    latest = mesh.latest_rounds()
    ahead = sorted(latest[p] for p in neighbours if latest.get(p, -1) >= sim.round + 2)
    half = (len(neighbours) + 1) // 2
    return ahead[len(ahead) - half] if len(ahead) >= half else None


def run_node(experiment: Any, node: int, peers: Peers, identity: Identity, out_dir: str | Path,
             *, listen: str = "127.0.0.1:0", insecure: bool = False,
             settings: PeerSettings = DEFAULT_SETTINGS, checkpoint_every: int = 1,
             addresses: dict[str, str] | None = None) -> dict[str, Any]:
    """Run node ``node`` of ``experiment`` as a peer until its last round (or SIGTERM)."""
    from murmura.runner.run import build_simulation
    from murmura.runner.rundir import RunDirectory

    me = peer_name(node)
    if me not in peers:
        raise ValueError(f"node {me} is not in the peers file (it lists "
                         f"{', '.join(list(peers)[:8])}...)")
    if identity.fingerprint != peers[me].fingerprint:
        raise ValueError(f"the key given for node {me} is not the one the peers file lists "
                         "for it (fingerprints differ)")
    shape = shape_of(experiment)
    out = RunDirectory(out_dir)
    out.path.mkdir(parents=True, exist_ok=True)
    sim = build_simulation(experiment, engine_class=PeerSimulation, node=node,
                           settings=settings)
    total = experiment.rounds
    sim.total_rounds = total
    resumed = False
    checkpoints = out.checkpoints()
    for _, path in reversed(checkpoints):
        try:
            sim.load_state_dict(*out.load_checkpoint(path))
            resumed = True
            break
        except Exception as error:  # cut short by a kill: the one before
            log.warning("node %s: skipping unreadable checkpoint %s: %s", me, path, error)
    if not resumed:
        (out.path / "metrics.jsonl").write_text("")
    else:
        out.rewrite_records(sim.history)
    d = sim.spec.dim
    expected = {"hello": {}, "mix": {"x": ((d,), "float32")}, "agg": None,
                "sum": {"sum": ((None,), "float32")}}
    mesh = Mesh(me, run_id(experiment), peers, identity, listen=listen, insecure=insecure,
                addresses=addresses, expected=expected).start()
    sim.mesh = mesh
    neighbours = _neighbours(sim, shape)
    status, message = "running", None
    (out.path / "address").write_text(mesh.address + "\n")
    try:
        with _Stop() as stop:
            if not resumed:
                answered = mesh.hello(neighbours, settings.hello_timeout_s)
                if len(answered) < len(neighbours):
                    log.warning("node %s: %d of %d neighbours up after %.0f s; starting anyway",
                                me, len(answered), len(neighbours), settings.hello_timeout_s)
            while sim.round < total and not stop.requested:
                target = _catch_up(sim, mesh, neighbours)
                if target is not None and target < total:
                    log.warning("node %s: rejoining at round %d (was at %d)", me, target,
                                sim.round)
                    sim.round = target
                began = time.monotonic()
                record = sim.step(total)
                out.append_record(record)
                if settings.pace_s:
                    time.sleep(max(0.0, settings.pace_s - (time.monotonic() - began)))
                if "test_accuracy" in record:
                    _save_rows(out.path / "rows", sim)
                if checkpoint_every and (sim.round % checkpoint_every == 0 or sim.round == total):
                    out.save_checkpoint(sim, keep=2)
        status = "completed" if sim.round >= total else "interrupted"
    except Exception as error:  # the node's own failure: keep what it wrote, say why
        status, message = "failed", f"{type(error).__name__}: {error}"
        log.exception("node %s failed", me)
    finally:
        mesh.close()
    summary = {"node": node, "status": status, "rounds_done": sim.round, "total_rounds": total,
               "counters": mesh.counters(), "evidence": len(mesh.guard.evidence),
               "late_exchanges": mesh.late_rounds, "peak_rss_bytes": _peak_rss()}
    if message:
        summary["message"] = message
    out.save_summary(summary)
    return summary


def run_relay(experiment: Any, peers: Peers, identity: Identity, out_dir: str | Path, *,
              listen: str = "127.0.0.1:0", insecure: bool = False,
              settings: PeerSettings = DEFAULT_SETTINGS, idle_exit_s: float = 30.0,
              addresses: dict[str, str] | None = None) -> dict[str, Any]:
    """Play the server of a star for ``experiment``'s clients until the last round's sums
    are sent and nothing more comes for ``idle_exit_s`` (or SIGTERM)."""
    if SERVER not in peers:
        raise ValueError(f"the peers file lists no {SERVER!r} peer, which plays the server")
    clients = [peer_name(i) for i in range(experiment.data.nodes)]
    missing = [c for c in clients if c not in peers]
    if missing:
        raise ValueError(f"the peers file lacks nodes {missing[:8]} of the experiment's "
                         f"{len(clients)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    expected = {"hello": {}, "sum": {"part": ((None,), "float32"), "weight": ((2,), "float64")}}
    mesh = Mesh(SERVER, run_id(experiment), peers, identity, listen=listen, insecure=insecure,
                addresses=addresses, expected=expected).start()
    (out / "address").write_text(mesh.address + "\n")
    total = experiment.rounds
    done: set[tuple[int, str]] = set()
    last_round, quiet_since, groups = -1, time.monotonic(), 0
    status = "running"
    try:
        with _Stop() as stop:
            mesh.hello(clients, settings.hello_timeout_s)
            while not stop.requested:
                key = mesh.next_mail(1.0, skip=done)
                if key is None:
                    if last_round >= total - 1 and time.monotonic() - quiet_since > idle_exit_s:
                        break
                    continue
                round_, kind = key
                if round_ > mesh.round:
                    mesh.set_round(round_)
                got = mesh.wait(round_, kind, clients, deadline_s=settings.deadline_s,
                                quorum=settings.quorum)
                total_sum = _sum(got, clients)
                done = {k for k in done if k[0] >= round_ - 2} | {key}
                if not total_sum.size:
                    continue
                for client in clients:
                    mesh.send(client, round_, kind, {"sum": total_sum})
                last_round, quiet_since, groups = max(last_round, round_), time.monotonic(), \
                    groups + 1
        status = "completed" if last_round >= total - 1 else "interrupted"
    finally:
        mesh.close()
    summary = {"node": SERVER, "status": status, "rounds_done": last_round + 1,
               "total_rounds": total, "sums": groups, "counters": mesh.counters(),
               "peak_rss_bytes": _peak_rss()}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _peak_rss() -> int:
    """This process's peak resident memory in bytes (Linux reports KiB)."""
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _sum(got: dict[str, dict[str, np.ndarray]], clients: list[str]) -> np.ndarray:
    """``sum_j part_j * total / sum_j w_j`` over the clients heard from, in client order."""
    parts = [got[c] for c in clients if c in got]
    if not parts:
        return np.zeros(0, dtype=np.float32)
    sizes = {p["part"].shape for p in parts}
    if len(sizes) != 1:  # clients disagree on the vector: keep the most common length
        common = statistics.mode([p["part"].shape for p in parts])
        parts = [p for p in parts if p["part"].shape == common]
    acc = np.zeros(parts[0]["part"].shape, dtype=np.float64)
    weight = 0.0
    for p in parts:
        acc += p["part"].astype(np.float64)
        weight += float(p["weight"][0])
    total = float(parts[0]["weight"][1])
    if weight > 0:
        acc *= total / weight
    return acc.astype(np.float32)


__all__ = ["run_id", "run_node", "run_relay", "shape_of"]
