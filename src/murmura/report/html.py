"""Self-contained HTML reports: figures inlined as data URIs, inline CSS, no scripts."""

from __future__ import annotations

import base64
import html
import re
import shlex
import struct
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from murmura.metrics.history import COLUMNS
from murmura.metrics.history import EVALUATED_COLUMNS as EVALUATION_COLUMNS
from murmura.report.compare import PathLike, compare_runs, load_runs, own_keys
from murmura.report.kind_plots import own_columns
from murmura.report.plots import FIGURES, make_plots, planned_figures, stale_figures
from murmura.report.run import Run, load_run

__all__ = ["build_comparison_report", "build_report"]

LAST_ROWS = 10

# Per-round values of the last round, not results of the run: left out of the summary.
PER_ROUND_KEYS = {
    "communicated",
    "bytes_sent",
    "bytes_received",
    "train_seconds",
    "comm_seconds",
    "round_seconds",
}

# (column, header, how to format) for the table of last rounds; metrics.csv keeps the rest.
ROW_COLUMNS = (
    ("round", "round", "int"),
    ("communicated", "comm.", "text"),
    ("test_accuracy", "test acc. x̄", "pct"),
    ("test_loss", "test loss x̄", "loss"),
    ("node_accuracy_mean", "node acc. mean", "pct"),
    ("node_accuracy_min", "min", "pct"),
    ("node_accuracy_max", "max", "pct"),
    ("consensus_distance", "consensus dist.", "sci"),
    ("bytes_sent_per_node_mean", "MB sent / node", "mb"),
    ("bytes_sent_per_node_max", "max MB / node", "mb"),
    ("round_seconds", "round s", "sec3"),
    ("wall_seconds", "wall s", "sec1"),
)

BYTES_LABELS = {
    "bytes_sent_total": "sent, all nodes",
    "bytes_received_total": "received, all nodes",
    "bytes_received_per_node_max": "received by the busiest node",
}


STATUS_COLORS = {
    "completed": "#1a7f37",
    "interrupted": "#b35900",
    "running": "#0969da",
    "failed": "#cf222e",
}

CSS = """
:root { --fg: #1f2328; --muted: #59636e; --line: #d1d9e0; --soft: #f6f8fa; --accent: #0969da; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--fg); background: #fff; line-height: 1.45;
  font: 15px/1.45 -apple-system, "Segoe UI", "Noto Sans", Helvetica, Arial, sans-serif; }
main { max-width: 1280px; margin: 0 auto; padding: 28px 32px 40px; }
header { border-bottom: 1px solid var(--line); padding-bottom: 14px; margin-bottom: 8px; }
h1 { font-size: 28px; margin: 0 0 6px; word-break: break-word; }
h2 { font-size: 20px; margin: 30px 0 12px; padding-bottom: 6px;
  border-bottom: 1px solid var(--line); }
h3 { font-size: 15px; margin: 0 0 8px; color: var(--muted); text-transform: uppercase;
  letter-spacing: .04em; }
.sub { color: var(--muted); margin: 4px 0 0; }
.badge { display: inline-block; color: #fff; border-radius: 999px; padding: 2px 12px;
  font-size: 13px; font-weight: 600; vertical-align: middle; margin-left: 10px; }
.cards { display: grid; gap: 24px;
  grid-template-columns: repeat(auto-fit, minmax(min(380px, 100%), 1fr)); }
table { border-collapse: collapse; width: 100%; font-size: 14px; }
th, td { text-align: left; padding: 6px 10px; border-bottom: 1px solid var(--line);
  vertical-align: top; }
th { background: var(--soft); font-weight: 600; }
.kv th { width: 42%; background: none; font-weight: 500; color: var(--muted); }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.scroll tbody tr:nth-child(even) td { background: #f9fafb; }
.small { font-size: 12.5px; color: var(--muted); }
.scroll { overflow-x: auto; border: 1px solid var(--line); border-radius: 6px; }
.scroll table th, .scroll table td { border-bottom: 1px solid var(--line); }
.scroll tr:last-child td { border-bottom: none; }
.figs { display: grid; gap: 20px;
  grid-template-columns: repeat(auto-fit, minmax(min(520px, 100%), 1fr)); }
figure { margin: 0; border: 1px solid var(--line); border-radius: 6px; padding: 10px;
  background: #fff; }
figure.wide { grid-column: 1 / -1; }
figure.split { display: grid; grid-template-columns: minmax(0, 560px) minmax(280px, 1fr);
  gap: 24px; align-items: start; }
figure.split figcaption { margin-top: 12px; }
@media (max-width: 900px) { figure.split { grid-template-columns: 1fr; } }
figure img { display: block; max-width: 100%; height: auto; margin: 0 auto; }
figcaption { font-size: 13px; color: var(--muted); margin-top: 6px; }
pre { background: var(--soft); border: 1px solid var(--line); border-radius: 6px;
  padding: 12px 14px; overflow-x: auto; font-size: 13px; line-height: 1.5;
  font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, "Liberation Mono", monospace; }
.note { background: #fff8c5; border: 1px solid #e8d67a; border-radius: 6px; padding: 8px 12px; }
.best { font-weight: 700; }
footer { margin-top: 36px; color: var(--muted); font-size: 12.5px; }
code { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 13px; }
"""


def build_report(run_dir: PathLike | Run) -> Path:
    """Write ``RUN_DIR/report.html``, one self-contained page, and return its path.

    Figures missing from ``RUN_DIR/plots`` or older than the run files they show are drawn
    first."""
    run = run_dir if isinstance(run_dir, Run) else load_run(run_dir)
    names = planned_figures(run)
    stale = stale_figures(run)
    if stale:
        make_plots(run, stale)
    figures = [
        (
            run.path / "plots" / name,
            FIGURES.get(name, ""),
            _kv_table(_topology_rows(run)) if name == "topology.png" else None,
        )
        for name in names
        if (run.path / "plots" / name).is_file()
    ]
    body = [
        _header(run),
        _summary_section(run),
        _figures_section(figures, _missing_figures_note(run)),
        _rows_section(run),
        _config_section(run),
        _provenance_section(run),
    ]
    page = _page(f"{run.name} · murmura report", body)
    out = run.path / "report.html"
    out.write_text(page, encoding="utf-8")
    return out


def build_comparison_report(run_dirs: Sequence[PathLike | Run], out_dir: PathLike) -> Path:
    """Write ``out_dir/comparison.html`` (table and overlaid figures of the runs)."""
    runs = load_runs(run_dirs)
    rows, paths = compare_runs(runs, out_dir)
    captions = {
        "compare_accuracy.png": "Test accuracy of each run's average model x̄, against rounds "
        "and against the data each node sent.",
        "compare_node_accuracy.png": "Mean over nodes of each node's own model's accuracy (test "
        "subset): what a participant holds, which x̄ hides when nodes disagree.",
        "compare_loss.png": "Test loss of each run's average model x̄.",
    }
    title = f"Comparison of {len(runs)} run{'s' if len(runs) != 1 else ''}"
    note = None
    if not paths:
        note = "No run has evaluated rounds: there is nothing to plot."
    body = [
        f"<header><h1>{_e(title)}</h1><p class=\"sub\">"
        f"{_e(', '.join(row['label'] for row in rows))}</p></header>",
        _comparison_table(rows),
        _figures_section([(p, captions.get(p.name, ""), None) for p in paths], note),
    ]
    out = Path(out_dir) / "comparison.html"
    out.write_text(_page(f"{title} · murmura", body), encoding="utf-8")
    return out


# ---------------------------------------------------------------- page parts


def _page(title: str, body: Iterable[str]) -> str:
    from murmura import __version__

    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        # An empty icon: without it a browser asks the server for /favicon.ico.
        "<link rel=\"icon\" href=\"data:,\">\n"
        f"<title>{_e(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<main>\n"
        + "\n".join(part for part in body if part)
        + f"\n<footer>Generated by murmura {_e(__version__)}.</footer>\n</main>\n</body>\n"
        "</html>\n"
    )


def _header(run: Run) -> str:
    status = run.status
    color = STATUS_COLORS.get(status, "#59636e")
    rounds = _rounds_text(run)
    what = run.algorithm
    if what and run.topology_label and run.topology_label != what:
        what += f" on {run.topology_label}"
    parts = [
        what,
        f"{run.num_nodes:,} nodes" if run.num_nodes is not None else None,
        _config_name(run, "data", "dataset"),
        _config_name(run, "model", "name"),
        rounds,
    ]
    sub = " · ".join(_e(p) for p in parts if p)
    return (
        f"<header><h1>{_e(run.name)}<span class=\"badge\" style=\"background:{color}\">"
        f"{_e(status)}</span></h1><p class=\"sub\">{sub}</p>"
        f"<p class=\"sub small\">{_e(str(run.path))}</p></header>"
    )


def _rounds_text(run: Run) -> str:
    done, total = run.rounds_done, run.total_rounds
    return f"{done} of {total} rounds" if total is not None else f"{done} rounds"


def _config_name(run: Run, table: str, key: str) -> str | None:
    value = run.config.get(table)
    value = value.get(key) if isinstance(value, dict) else None
    return value if isinstance(value, str) else None


def _summary_section(run: Run) -> str:
    results = _kv_table(_result_rows(run))
    setup = _kv_table(_setup_rows(run))
    note = ""
    rounds = _rounds_text(run)
    what = {
        "interrupted": f"was <b>interrupted</b> after {rounds}",
        "failed": f"<b>failed</b> after {rounds}",
        "running": f"is still <b>running</b> ({rounds} done)",
    }.get(run.status, f"has status <b>{_e(run.status)}</b> ({rounds})")
    if run.status != "completed":
        note = (
            f"<p class=\"note\">This run {what}: the results are those of its last evaluated "
            "round.</p>"
        )
    return (
        f"<section><h2>Summary</h2>{note}<div class=\"cards\">"
        f"<div><h3>Results</h3>{results}</div><div><h3>Setup</h3>{setup}</div></div></section>"
    )


def _result_rows(run: Run) -> list[tuple[str, str, str]]:
    final = dict(run.final_metrics)
    for key in ("test_accuracy", "test_loss", "node_accuracy_mean", "consensus_distance"):
        if key not in final and run.last(key) is not None:
            final[key] = run.last(key)
    rows: list[tuple[str, str, str]] = []

    def take(key: str) -> Any:
        return final.pop(key, None)

    acc = take("test_accuracy")
    if acc is not None:
        rows.append(("test accuracy of x̄", _pct(acc), COLUMNS["test_accuracy"]))
    loss = take("test_loss")
    if loss is not None:
        rows.append(("test loss of x̄", _fixed(loss, 4), COLUMNS["test_loss"]))
    mean, lo, hi = take("node_accuracy_mean"), take("node_accuracy_min"), take("node_accuracy_max")
    if mean is not None:
        text = _pct(mean)
        if lo is not None and hi is not None:
            text += f" (worst {_pct(lo)}, best {_pct(hi)})"
        rows.append(("node accuracy, mean", text, COLUMNS["node_accuracy_mean"]))
    dist = take("consensus_distance")
    if dist is not None:
        rows.append(("consensus distance", _sci(dist), COLUMNS["consensus_distance"]))
    evaluated = take("round")
    if evaluated is not None:
        rows.append(("evaluated after round", _int(evaluated), "round index, from 0"))
    sent_mean = run.last("bytes_sent_per_node_mean")
    if sent_mean is None:
        sent_mean = final.get("bytes_sent_per_node_mean")
    sent_max = run.last("bytes_sent_per_node_max")
    if sent_max is None:
        sent_max = final.get("bytes_sent_per_node_max")
    for key in ("bytes_sent_per_node_mean", "bytes_sent_per_node_max"):
        final.pop(key, None)
    if sent_mean is not None:
        text = _mb(sent_mean)
        if sent_max is not None and sent_max != sent_mean:
            text += f" (busiest node {_mb(sent_max)})"
        rows.append(("sent per node", text, COLUMNS["bytes_sent_per_node_mean"]))
    received = run.last("bytes_received_per_node_mean")
    if received is None:
        received = final.get("bytes_received_per_node_mean")
    final.pop("bytes_received_per_node_mean", None)
    if received is not None:
        rows.append(("received per node", _mb(received), COLUMNS["bytes_received_per_node_mean"]))
    server = run.last("server_bytes_sent_total")
    final.pop("server_bytes_sent_total", None)
    if server:
        rows.append(("sent by the server", _mb(server), COLUMNS["server_bytes_sent_total"]))
    seconds = run.seconds
    final.pop("wall_seconds", None)
    if seconds is not None:
        rows.append(("wall time", _duration(seconds), "seconds the run took"))
    for key, value in final.items():
        if key in PER_ROUND_KEYS:
            continue
        label = BYTES_LABELS.get(key, key.replace("_", " "))
        if "bytes" in key and _number(value):
            text = _mb(run.last(key) if run.last(key) is not None else value)
        else:
            text = _value(value)
        rows.append((label, text, COLUMNS.get(key, "")))
    if not rows:
        rows.append(("results", "none yet: no round was evaluated", ""))
    return rows


def _setup_rows(run: Run) -> list[tuple[str, str, str]]:
    sim = dict(run.simulation)
    rows: list[tuple[str, str, str]] = []
    if run.num_nodes is not None:
        rows.append(("nodes", f"{run.num_nodes:,}", ""))
    sim.pop("num_nodes", None)
    params = sim.pop("model_parameters", None)
    if params is not None:
        rows.append(("model parameters", _int(params), "trainable values per node model"))
    message = sim.pop("message_bytes", None)
    if message is not None:
        rows.append(("message size", _bytes(message), "bytes of one model sent once"))
    sim.pop("algorithm", None)
    algo_params = sim.pop("algorithm_params", None)
    if run.algorithm:
        text = _e(run.algorithm)
        if isinstance(algo_params, dict):
            shown = {k: v for k, v in algo_params.items() if v is not None}
            if shown:
                text += f"<div class=\"small\">{_e(_value(shown))}</div>"
        rows.append(("algorithm", _Html(text), ""))
    sim.pop("topology", None)
    if run.topology_label:
        text = run.topology_label
        if run.topology.get("time_varying"):
            text += " (time-varying)"
        rows.append(("topology", text, ""))
    gap = sim.pop("spectral_gap", None)
    if gap is not None or run.topology.get("kind") == "graph":
        why = "1 − |λ₂(W)| of the mixing matrix: larger mixes faster"
        if gap is None:
            rows.append(("spectral gap", "— (not defined for this topology)", why))
        else:
            rows.append(("spectral gap", _fixed(gap, 4), why))
    done, total = run.rounds_done, run.total_rounds
    sim.pop("rounds_done", None)
    rows.append(("rounds", f"{done:,} of {total:,}" if total is not None else f"{done:,}", ""))
    for key, value in sim.items():
        rows.append((key.replace("_", " "), _value(value), ""))
    return rows


def _kv_table(rows: list[tuple[str, Any, str]]) -> str:
    cells = []
    for label, value, tip in rows:
        title = f" title=\"{_e(tip)}\"" if tip else ""
        shown = str(value) if isinstance(value, _Html) else _e(str(value))
        cells.append(f"<tr><th{title}>{_e(label)}</th><td>{shown}</td></tr>")
    return f"<table class=\"kv\"><tbody>{''.join(cells)}</tbody></table>"


def _figures_section(
    figures: Sequence[tuple[Path, str, str | None]], note: str | None
) -> str:
    """Figures as inline PNGs; a figure with ``side`` markup gets the full width, shared with
    it (the topology and its numbers)."""
    items = []
    for path, caption, side in figures:
        data = path.read_bytes()
        size = _png_size(data)
        dims = f" width=\"{size[0]}\" height=\"{size[1]}\"" if size else ""
        src = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
        img = f"<img src=\"{src}\" alt=\"{_e(caption or path.name)}\"{dims}>"
        if side:
            items.append(
                f"<figure class=\"wide split\"><div>{img}</div><div>{side}"
                f"<figcaption>{_e(caption)}</figcaption></div></figure>"
            )
            continue
        wide = " class=\"wide\"" if size and size[0] > 1000 else ""
        items.append(f"<figure{wide}>{img}<figcaption>{_e(caption)}</figcaption></figure>")
    parts = ["<section><h2>Figures</h2>"]
    if note:
        parts.append(f"<p class=\"note\">{_e(note)}</p>")
    if items:
        parts.append(f"<div class=\"figs\">{''.join(items)}</div>")
    parts.append("</section>")
    return "".join(parts)


def _topology_rows(run: Run) -> list[tuple[str, Any, str]]:
    topo = run.topology
    kind = topo.get("kind")
    n = topo.get("num_nodes", run.num_nodes)
    rows: list[tuple[str, Any, str]] = [
        ("topology", topo.get("label") or run.topology_label or "—", "")
    ]
    if kind == "server":
        rows.append(("communication", "clients exchange models with a server only", ""))
        rows.append(("clients", _int(n), ""))
        return rows
    if kind == "none":
        rows.append(("communication", "none: each node trains alone", ""))
        rows.append(("nodes", _int(n), ""))
        return rows
    rows.append(("nodes", _int(n), ""))
    edges = topo.get("edges")
    if isinstance(edges, list) and _number(n):
        stats = _graph_stats(edges, int(n))
        rows.append(("edges", f"{len(edges):,}", "undirected, each counted once"))
        if stats is not None:
            lo, mean, hi, components = stats
            degree = f"{lo}" if lo == hi else f"{lo} to {hi}, mean {mean:.2f}"
            rows.append(("degree", degree, "neighbours of a node"))
            rows.append(("connected components", f"{components:,}", ""))
    elif kind == "graph":
        rows.append(("edges", "not stored (more than 20 000)", ""))
    gap = run.simulation.get("spectral_gap")
    if _number(gap):
        rows.append(("spectral gap", _fixed(gap, 4), "1 − |λ₂(W)|: larger mixes faster"))
    if topo.get("time_varying"):
        rows.append(("time-varying", "yes: a new graph every round; round 0 shown", ""))
    return rows


def _graph_stats(edges: list[Any], n: int) -> tuple[int, float, int, int] | None:
    import numpy as np
    from scipy.sparse import coo_array
    from scipy.sparse.csgraph import connected_components

    try:
        arr = np.array(edges, dtype=np.int64).reshape(-1, 2)
    except (TypeError, ValueError):
        return None
    if n <= 0 or (arr.size and (arr.min() < 0 or arr.max() >= n)):
        return None
    degrees = np.bincount(arr.ravel(), minlength=n)
    adjacency = coo_array((np.ones(len(arr)), (arr[:, 0], arr[:, 1])), shape=(n, n))
    components = int(connected_components(adjacency, directed=False)[0])
    return int(degrees.min()), float(degrees.mean()), int(degrees.max()), components


def _missing_figures_note(run: Run) -> str | None:
    if run.num_rows == 0:
        return "No round was recorded: there is nothing to plot."
    if not run.has("test_accuracy") and not run.has("node_accuracy_mean"):
        return "No round was evaluated (evaluation off or not reached): no accuracy figures."
    return None


def _rows_section(run: Run) -> str:
    n = run.num_rows
    if n == 0:
        return ""
    columns = [c for c in ROW_COLUMNS if c[0] in run.metrics or c[0] == "round"]
    if run.kind != "swarm":  # a tool's own numbers: regret, returns, ...
        columns[1:1] = [(col, col, "num") for col in own_columns(run)]
    start = max(0, n - LAST_ROWS)
    head = "".join(
        f"<th class=\"{'' if kind == 'text' else 'num'}\" title=\"{_e(COLUMNS.get(col, ''))}\">"
        f"{_e(header)}</th>"
        for col, header, kind in columns
    )
    body = []
    values = {col: run.column(col) for col, _, _ in columns}
    for i in range(start, n):
        cells = "".join(
            f"<td class=\"{'' if kind == 'text' else 'num'}\">"
            f"{_e(_cell(values[col][i], kind))}</td>"
            for col, _, kind in columns
        )
        body.append(f"<tr>{cells}</tr>")
    shown = f"the last {n - start} of {n}" if start else f"all {n}"
    blanks = ""
    if any(col in run.metrics for col in EVALUATION_COLUMNS):
        blanks = " Blank cells: rounds that were not evaluated."
    return (
        f"<section><h2>Last rounds</h2><p class=\"small\">Showing {shown} rounds.{blanks} "
        f"<code>metrics.csv</code> has every round and column.</p><div class=\"scroll\">"
        f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div></section>"
    )


def _config_section(run: Run) -> str:
    if not run.config:
        return (
            "<section><h2>Configuration</h2><p class=\"note\">No config.toml in the run "
            "directory.</p></section>"
        )
    config = {k: v for k, v in run.config.items() if k != "provenance"}
    return (
        f"<section><h2>Configuration</h2><p class=\"small\">config.toml, the resolved "
        f"experiment (provenance below).</p><pre>{_e(_toml(config, run))}</pre></section>"
    )


def _toml(config: dict[str, Any], run: Run) -> str:
    try:
        import tomli_w

        return _compact_arrays(tomli_w.dumps(config))
    except Exception:  # noqa: BLE001 - any value tomli_w cannot write: show the file as it is
        return (run.path / "config.toml").read_text(encoding="utf-8", errors="replace")


# An array tomli_w wrote one item a line, holding only one-line items (nested arrays once
# collapsed included); `(?![ \]}])` skips the closing line of a nested array.
_ARRAY = re.compile(r"\[\n((?:[ ]+(?![ \]}])[^\n]*,\n)+)[ ]*\]")


def _compact_arrays(text: str, width: int = 80) -> str:
    """``hidden = [\\n    16,\\n]`` as ``hidden = [16]``, for arrays short enough."""

    def join(match: re.Match[str]) -> str:
        items = [line.strip()[:-1] for line in match.group(1).splitlines()]
        joined = "[" + ", ".join(items) + "]"
        return joined if len(joined) <= width else match.group(0)

    while True:
        compact = _ARRAY.sub(join, text)
        if compact == text:
            return text
        text = compact


def _provenance_section(run: Run) -> str:
    prov = run.config.get("provenance")
    if not isinstance(prov, dict):
        prov = run.summary.get("provenance")
    if not isinstance(prov, dict) or not prov:
        return ""
    rows = []
    for key, value in prov.items():
        if key == "command" and isinstance(value, list):
            text = shlex.join(str(v) for v in value)
        else:
            text = _value(value)
        rows.append((key.replace("_", " "), _Html(f"<code>{_e(text)}</code>"), ""))
    return f"<section><h2>Provenance</h2>{_kv_table(rows)}</section>"


def _comparison_table(rows: list[dict[str, Any]]) -> str:
    own = own_keys(rows)
    accuracies = [r["test_accuracy"] for r in rows if r["test_accuracy"] is not None]
    best = max(accuracies) if len(accuracies) > 1 else None
    head = (
        "<tr><th>run</th><th>status</th><th>algorithm</th><th>topology</th>"
        "<th class=\"num\">nodes</th><th class=\"num\">rounds</th>"
        "<th class=\"num\" title=\"final test accuracy of the average model\">test acc. x̄</th>"
        "<th class=\"num\" title=\"final mean over nodes of each node's own accuracy\">"
        "node acc. mean</th><th class=\"num\" title=\"cumulative, mean over nodes\">"
        "MB sent / node</th><th class=\"num\">time</th>"
        + "".join(f"<th class=\"num\">{_e(k)}</th>" for k in own)
        + "</tr>"
    )
    body = []
    for r in rows:
        acc_class = "num best" if best is not None and r["test_accuracy"] == best else "num"
        rounds = f"{r['rounds_done']:,}"
        if r["total_rounds"] is not None and r["total_rounds"] != r["rounds_done"]:
            rounds += f" / {r['total_rounds']:,}"
        body.append(
            f"<tr><td title=\"{_e(r['path'])}\">{_e(r['label'])}<div class=\"small\">"
            f"{_e(r['path'])}</div></td><td>{_e(r['status'])}</td>"
            f"<td>{_e(r['algorithm'] or '—')}</td><td>{_e(r['topology'] or '—')}</td>"
            f"<td class=\"num\">{_e(_int(r['nodes']))}</td><td class=\"num\">{_e(rounds)}</td>"
            f"<td class=\"{acc_class}\">{_e(_pct(r['test_accuracy']))}</td>"
            f"<td class=\"num\">{_e(_pct(r['node_accuracy_mean']))}</td>"
            f"<td class=\"num\">{_e(_mb_number(r['mb_sent_per_node']))}</td>"
            f"<td class=\"num\">{_e(_duration(r['seconds']))}</td>"
            + "".join(f"<td class=\"num\">{_e(_cell(r['own'].get(k), 'num'))}</td>" for k in own)
            + "</tr>"
        )
    return (
        "<section><h2>Runs</h2><div class=\"scroll\"><table><thead>"
        f"{head}</thead><tbody>{''.join(body)}</tbody></table></div></section>"
    )


# ---------------------------------------------------------------- formatting


class _Html(str):
    """Markup built here from escaped parts: inserted as it is."""


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _pct(value: Any) -> str:
    return f"{value * 100:.2f} %" if _number(value) else "—"


def _fixed(value: Any, digits: int) -> str:
    return f"{value:.{digits}f}" if _number(value) else _value(value)


def _sci(value: Any) -> str:
    if not _number(value):
        return _value(value)
    return "0" if value == 0 else f"{value:.4g}"


def _int(value: Any) -> str:
    return f"{int(value):,}" if _number(value) else "—"


def _mb_number(mb: Any) -> str:
    if not _number(mb):
        return "—"
    if mb == 0:
        return "0"
    if abs(mb) < 10:
        return f"{mb:#.3g}"  # keeps trailing zeros: 0.0290, aligned with 0.0194
    return f"{mb:,.1f}" if abs(mb) < 1000 else f"{mb:,.0f}"


def _mb(num_bytes: Any) -> str:
    return f"{_mb_number(num_bytes / 1e6)} MB" if _number(num_bytes) else "—"


def _bytes(num_bytes: Any) -> str:
    if not _number(num_bytes):
        return _value(num_bytes)
    for scale, unit in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if abs(num_bytes) >= scale:
            return f"{num_bytes / scale:.3g} {unit} ({int(num_bytes):,} bytes)"
    return f"{int(num_bytes):,} bytes"


def _duration(seconds: Any) -> str:
    if not _number(seconds):
        return "—"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _value(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10_000 else str(value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={_value(v)}" for k, v in value.items()) or "—"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    return str(value)


def _cell(value: Any, kind: str) -> str:
    if value is None:
        return ""
    if kind == "text" or not _number(value):
        return str(value)
    if kind == "int":
        return f"{int(value):,}"
    if kind == "pct":
        return f"{value * 100:.2f} %"
    if kind == "loss":
        return f"{value:.4f}"
    if kind == "sci":
        return _sci(value)
    if kind == "mb":
        return _mb_number(value / 1e6)
    if kind == "sec3":
        return f"{value:.3f}"
    if kind == "num":
        return f"{value:.6g}"
    return f"{value:,.1f}"


def _png_size(data: bytes) -> tuple[int, int] | None:
    if data[:8] != b"\x89PNG\r\n\x1a\n" or len(data) < 24:
        return None
    return struct.unpack(">II", data[16:24])
