"""Real timings of a small GPT-style decoder under inference-acceleration methods: the offline
data of MetaInf (Du et al., arXiv 2508.09194, COLM 2025; spec ``federated.md`` section 15).

The paper times LLMs (LLaMA 3.1 8B ...) on GPUs; no such data is public. This module measures a
**proxy** on the CPU it runs on: a pre-LN decoder with random weights (timing does not depend
on training) generates ``G`` tokens greedily for a batch of ``B`` prompts of ``P`` tokens whose
first ``round(r * P)`` tokens are shared by the whole batch, under

* ``none``: no cache, the whole sequence recomputed for every new token;
* ``kv_cache``: the prompt prefilled in one pass, then one token a step against cached K, V;
* ``kv_cache+chunked_prefill``: the prompt prefilled ``chunk`` tokens at a time;
* ``kv_cache+prefix_cache``: the shared prefix computed once (batch 1) and its K, V copied to
  every request, only the rest of each prompt prefilled;
* ``all``: prefix cache, then the rest prefilled in chunks.

Continuous batching is left out: it needs requests of different lengths sharing slots of a
ragged cache, which this fixed-batch harness does not model.

Throughput = generated tokens ``B * G`` over the wall time of the whole request (prefill
included), the median of ``repeats`` runs after one warm-up. The "hardware" axis is what this
machine can vary: the float dtype (float32 or bfloat16, which this CPU's AVX-512 BF16 runs
natively); torch's intra-op threads are a feature too, held at 1 in the committed grid.

    python -m murmura.select.timings --out decoder_timings.csv     # the committed grid

>>> rows = measure([{"batch": 2, "prompt": 8, "shared": 0.5, "gen": 2, "layers": 1,
...                  "width": 32, "threads": 1, "dtype": "float32"}], repeats=1)
>>> sorted({r["method"] for r in rows}) == sorted(METHODS)
True
>>> min(r["tokens_per_s"] for r in rows) > 0
True
"""

from __future__ import annotations

import argparse
import csv
import itertools
import platform
import random
import statistics
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

METHODS = ("none", "kv_cache", "kv_cache+chunked_prefill", "kv_cache+prefix_cache", "all")
FEATURES = ("batch", "prompt", "shared", "gen", "layers", "width", "threads", "dtype")
COLUMNS = (*FEATURES, "heads", "chunk", "method", "tokens_per_s", "seconds", "repeats")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
VOCAB = 512
HEADS = 4
CHUNK = 32


class Decoder(torch.nn.Module):
    """A GPT-2-shaped decoder: learned positions, pre-LN blocks, 4x MLP, tied-free LM head."""

    def __init__(self, layers: int, width: int, heads: int = HEADS, max_len: int = 1024):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not a multiple of heads {heads}")
        self.heads = heads
        self.embed = torch.nn.Embedding(VOCAB, width)
        self.position = torch.nn.Embedding(max_len, width)
        self.blocks = torch.nn.ModuleList(
            torch.nn.ModuleDict({"ln1": torch.nn.LayerNorm(width),
                                 "qkv": torch.nn.Linear(width, 3 * width),
                                 "out": torch.nn.Linear(width, width),
                                 "ln2": torch.nn.LayerNorm(width),
                                 "up": torch.nn.Linear(width, 4 * width),
                                 "down": torch.nn.Linear(4 * width, width)})
            for _ in range(layers))
        self.ln = torch.nn.LayerNorm(width)
        self.head = torch.nn.Linear(width, VOCAB, bias=False)

    def forward(self, tokens: torch.Tensor, start: int = 0,
                cache: list[tuple[torch.Tensor, torch.Tensor]] | None = None) -> torch.Tensor:
        """Logits of the last position. With ``cache`` (per layer K, V buffers ``[B, H, T, d]``)
        the tokens sit at positions ``start..`` and attend to the cached ``0..start`` too."""
        B, L = tokens.shape
        x = self.embed(tokens) + self.position(torch.arange(start, start + L))
        for i, block in enumerate(self.blocks):
            q, k, v = block["qkv"](block["ln1"](x)).view(B, L, 3, self.heads, -1).permute(
                2, 0, 3, 1, 4)
            if cache is None:
                attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            else:
                keys, values = cache[i]
                keys[:, :, start:start + L] = k
                values[:, :, start:start + L] = v
                keys, values = keys[:, :, :start + L], values[:, :, :start + L]
                # the chunk's causal mask, offset by what is already cached
                mask = (None if L == 1 else torch.arange(start + L)[None, :]
                        <= torch.arange(start, start + L)[:, None])
                attended = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
            x = x + block["out"](attended.transpose(1, 2).reshape(B, L, -1))
            x = x + block["down"](F.gelu(block["up"](block["ln2"](x))))
        return self.head(self.ln(x[:, -1]))

    def empty_cache(self, batch: int, length: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        width, dtype = self.embed.embedding_dim, self.embed.weight.dtype
        shape = (batch, self.heads, length, width // self.heads)
        return [(torch.empty(shape, dtype=dtype), torch.empty(shape, dtype=dtype))
                for _ in self.blocks]


def generate(model: Decoder, prompts: torch.Tensor, gen: int, method: str, shared: int,
             chunk: int = CHUNK) -> torch.Tensor:
    """Greedy generation of ``gen`` tokens under ``method``; ``prompts[:, :shared]`` is the
    prefix every request shares (only ``*prefix_cache`` and ``all`` exploit it)."""
    B, P = prompts.shape
    if method == "none":
        sequence = prompts
        for _ in range(gen):
            nxt = model(sequence).argmax(-1, keepdim=True)
            sequence = torch.cat([sequence, nxt], 1)
        return sequence[:, P:]
    if method not in METHODS:
        raise ValueError(f"method {method!r}: choose one of {', '.join(METHODS)}")
    cache = model.empty_cache(B, P + gen)
    start = 0
    if method in ("kv_cache+prefix_cache", "all") and shared > 0:
        prefix_cache = model.empty_cache(1, shared)
        logits = model(prompts[:1, :shared], 0, prefix_cache)
        for (keys, values), (pk, pv) in zip(cache, prefix_cache):
            keys[:, :, :shared], values[:, :, :shared] = pk, pv
        start = shared
    step = chunk if method in ("kv_cache+chunked_prefill", "all") else P
    while start < P:
        end = min(P, start + step)
        logits = model(prompts[:, start:end], start, cache)
        start = end
    out = [logits.argmax(-1, keepdim=True)]
    for position in range(P, P + gen - 1):
        out.append(model(out[-1], position, cache).argmax(-1, keepdim=True))
    return torch.cat(out, 1)


def _check_task(task: dict[str, Any]) -> None:
    missing = [f for f in FEATURES if f not in task]
    if missing:
        raise ValueError(f"task {task} lacks {', '.join(missing)}: give every one of "
                         f"{', '.join(FEATURES)}")
    for key in ("batch", "prompt", "gen", "layers", "width", "threads"):
        if int(task[key]) < 1:
            raise ValueError(f"task {key}={task[key]} must be a positive integer")
    if not 0.0 <= float(task["shared"]) < 1.0:
        raise ValueError(f"task shared={task['shared']} must be a fraction in [0, 1)")
    if task["dtype"] not in DTYPES:
        raise ValueError(f"task dtype={task['dtype']!r}: choose one of {', '.join(DTYPES)}")


def measure(tasks: Iterable[dict[str, Any]], methods: Sequence[str] = METHODS, repeats: int = 3,
            seed: int = 0, progress: bool = False) -> list[dict[str, Any]]:
    """Time every method on every task: one row per (task, method) with ``tokens_per_s`` (the
    median over ``repeats`` runs after a warm-up) and its ``seconds``. A task is a dict of
    :data:`FEATURES`. torch's thread count is restored afterwards."""
    if repeats < 1:
        raise ValueError(f"repeats={repeats} must be >= 1")
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise ValueError(f"unknown methods {bad}: choose from {', '.join(METHODS)}")
    tasks = list(tasks)
    for task in tasks:
        _check_task(task)
    threads_before = torch.get_num_threads()
    rows: list[dict[str, Any]] = []
    models: dict[tuple, Decoder] = {}
    try:
        for n, task in enumerate(tasks):
            torch.set_num_threads(int(task["threads"]))
            key = (int(task["layers"]), int(task["width"]), task["dtype"])
            if key not in models:
                torch.manual_seed(seed)
                models[key] = Decoder(key[0], key[1]).to(DTYPES[key[2]]).eval()
            model = models[key]
            B, P, G = int(task["batch"]), int(task["prompt"]), int(task["gen"])
            shared = round(float(task["shared"]) * P)
            g = torch.Generator().manual_seed(seed + n)
            prompts = torch.randint(VOCAB, (B, P), generator=g)
            prompts[:, :shared] = prompts[0, :shared].clone()
            for method in methods:
                with torch.inference_mode():
                    generate(model, prompts, G, method, shared)  # warm-up
                    times = []
                    for _ in range(repeats):
                        t0 = time.perf_counter()
                        generate(model, prompts, G, method, shared)
                        times.append(time.perf_counter() - t0)
                seconds = statistics.median(times)
                rows.append({**{f: task[f] for f in FEATURES}, "heads": HEADS, "chunk": CHUNK,
                             "method": method, "tokens_per_s": B * G / seconds,
                             "seconds": seconds, "repeats": repeats})
            if progress:
                print(f"{n + 1}/{len(tasks)} {task}", file=sys.stderr, flush=True)
    finally:
        torch.set_num_threads(threads_before)
    return rows


# threads is held at 1: on the shared 2-core machine a 2-thread run stalls at every barrier
# while other jobs hold a core, so its timings measured the neighbours, not the hardware
GRID = {"batch": [1, 2, 4, 8, 16], "prompt": [16, 48, 96, 192],
        "shared": [0.0, 0.25, 0.5, 0.75, 0.9], "gen": [4, 8, 16], "layers": [2, 4],
        "width": [128, 256], "threads": [1], "dtype": ["float32", "bfloat16"]}


def default_tasks(n: int = 300, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` tasks drawn without replacement from :data:`GRID` (the full product is too long to
    time), ordered so each model is built once."""
    grid = [dict(zip(GRID, values)) for values in itertools.product(*GRID.values())]
    tasks = random.Random(seed).sample(grid, min(n, len(grid)))
    return sorted(tasks, key=lambda t: (t["layers"], t["width"], t["dtype"], t["threads"]))


def write_csv(rows: list[dict[str, Any]], path: Path, header: Sequence[str] = ()) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        for line in header:
            f.write(f"# {line}\n")
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "tokens_per_s": f"{row['tokens_per_s']:.6g}",
                             "seconds": f"{row['seconds']:.6g}"})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="the CSV to write")
    parser.add_argument("--tasks", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    tasks = default_tasks(args.tasks, args.seed)
    start = time.perf_counter()
    rows = measure(tasks, repeats=args.repeats, seed=args.seed, progress=True)
    minutes = (time.perf_counter() - start) / 60
    write_csv(rows, args.out, [
        "MetaInf proxy data (murmura.select.timings): a random-weight GPT-style decoder timed "
        "on a CPU, NOT LLMs on GPUs.",
        f"{len(tasks)} tasks x {len(METHODS)} methods; tokens_per_s = batch*gen / median of "
        f"{args.repeats} runs after a warm-up; heads={HEADS}, chunk={CHUNK}, vocab={VOCAB}.",
        f"Measured in {minutes:.1f} min on {platform.processor() or platform.machine()}, "
        f"torch {torch.__version__}, a 2-core machine shared with other jobs: the timings "
        "carry that noise.",
        f"python -m murmura.select.timings --out FILE --tasks {args.tasks} "
        f"--repeats {args.repeats} --seed {args.seed}"])
    print(f"{len(rows)} rows in {minutes:.1f} min -> {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
