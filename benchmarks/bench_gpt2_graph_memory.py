"""Peak memory of ``wd.interaction_graph`` on a ~110k-parameter Hugging Face GPT-2 (issue 19).

Issue 19: on a 2-layer, width-64 GPT-2 with a character vocabulary (110,784 parameters, float64),
``interaction_graph`` with two hook points in block 0 and the then default ``chunk_size=32`` was
killed at 22.4 GB. The must-hold: with default settings it completes under a 6 GB memory limit.

Model: ``GPT2LMHeadModel(GPT2Config(vocab_size=103, n_embd=64, n_layer=2, n_head=4,
n_positions=--positions))`` in float64, wrapped by :func:`wdecomp.interop.logits_module`,
seeded random weights (the memory depends on shapes, not on training). ``vocab_size=103`` is the
character vocabulary of :func:`wdecomp.models.char_corpus`; with ``n_positions=66`` the model has
exactly the issue's 110,784 parameters, with 128 it has 114,880.

Data: ``--sequences`` windows of ``--length`` characters of the corpus's validation text.
Hook points: block 0's attention output and MLP output (``model.transformer.h.0.attn``,
``model.transformer.h.0.mlp``).

Stages, each a fresh subprocess (so ``ru_maxrss`` is that stage's own peak resident memory):

1. ``basis``: ``wd.interaction_basis(model, data, LAYERS, chunk_size=1)``, saved to a file (one example
   per chunk: the basis's own default chunk overruns its estimate; see the results' notes).
2. ``graph``: the basis loaded, ``wd.interaction_graph(model, tokens, basis)`` with default
   settings (the chunk chosen from the memory budget); peak RSS, wall and CPU time (user + system),
   the chunk size chosen. Run twice: under a 10 GiB guard (so a regression cannot take down a shared
   machine) and under ``RLIMIT_AS`` = 6 GiB.
3. ``old``: the same under ``RLIMIT_AS`` = 6 GiB with ``chunk_size=32`` (the old default): it
   must fail (as a wdecomp ``DenseTooLargeError`` naming the knobs), showing the limit binds.

Run: ``OMP_NUM_THREADS=1 python benchmarks/bench_gpt2_graph_memory.py [--length 64 --positions 128]``;
writes ``benchmarks/results/gpt2_graph_memory.{json,md}``. The machine is shared: times are under load
(the load average is recorded); peak memory does not depend on load.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

LAYERS = ["model.transformer.h.0.attn", "model.transformer.h.0.mlp"]
LIMIT = 6 << 30  # bytes: the 6 GB limit, taken as 6 GiB of address space
GUARD = 10 << 30  # address-space cap of the unlimited runs, so a regression cannot take down a shared machine


def _load() -> str:
    return " ".join(open("/proc/loadavg").read().split()[:3]) if os.path.exists("/proc/loadavg") else "n/a"


def _model(positions: int) -> Any:
    import torch
    import transformers

    from wdecomp.interop import logits_module
    from wdecomp.models import char_corpus

    cfg = transformers.GPT2Config(vocab_size=char_corpus().vocab_size, n_positions=positions, n_embd=64, n_layer=2,
                                  n_head=4, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=None,
                                  eos_token_id=None)
    torch.manual_seed(0)
    return logits_module(transformers.GPT2LMHeadModel(cfg).to(torch.float64)).eval()


def _tokens(n: int, length: int) -> Any:
    import torch

    from wdecomp.models import char_corpus

    val = torch.as_tensor(char_corpus().val)
    starts = torch.linspace(0, len(val) - length - 1, n).long()
    return torch.stack([val[s:s + length] for s in starts.tolist()])


def _usage() -> dict[str, float]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return {"peak_rss_mib": r.ru_maxrss / 1024, "cpu_s": r.ru_utime + r.ru_stime}


def stage_basis(a: argparse.Namespace) -> dict[str, Any]:
    import torch

    import wdecomp as wd
    from wdecomp.components import save_basis

    torch.set_num_threads(1)
    model = _model(a.positions)
    x = _tokens(a.sequences, a.length)
    t0, c0 = time.perf_counter(), _usage()["cpu_s"]
    if a.limit:
        resource.setrlimit(resource.RLIMIT_AS, (a.limit, a.limit))
    basis = wd.interaction_basis(model, [(x, x)], LAYERS, chunk_size=a.basis_chunk)
    wall = time.perf_counter() - t0
    save_basis(basis, a.basis, model=model)
    u = _usage()
    return {"stage": "basis", "rlimit_as_bytes": a.limit, "chunk": a.basis_chunk,
            "wall_s": wall, "cpu_s": u["cpu_s"] - c0, "peak_rss_mib": u["peak_rss_mib"],
            "n_params": sum(p.numel() for p in model.parameters()),
            "sizes": {p: basis[p].size for p in LAYERS}, "dims": {p: basis[p].dim for p in LAYERS},
            "constant_node": {p: basis[p].constant is not None for p in LAYERS}}


def stage_graph(a: argparse.Namespace) -> dict[str, Any]:
    if a.limit:
        resource.setrlimit(resource.RLIMIT_AS, (a.limit, a.limit))
    import torch

    import wdecomp as wd
    import wdecomp.graph.build as build
    from wdecomp.components import load_basis

    torch.set_num_threads(1)
    chosen: list[int] = []
    plan = build.plan_chunk

    def recording(*args: Any, **kwargs: Any) -> int:
        size = plan(*args, **kwargs)
        chosen.append(size)
        return size

    build.plan_chunk = recording  # record the chunk the budget picks; the call itself is unchanged
    model = _model(a.positions)
    x = _tokens(a.sequences, a.length)
    basis = load_basis(a.basis, model)
    out: dict[str, Any] = {"stage": "graph", "chunk_size_arg": a.chunk_size, "rlimit_as_bytes": a.limit}
    t0, c0 = time.perf_counter(), _usage()["cpu_s"]
    try:
        g = wd.interaction_graph(model, x, basis, chunk_size=a.chunk_size)
        out.update(ok=True, edges=g.nx.number_of_edges(), nodes=g.nx.number_of_nodes())
    except Exception as exc:  # recorded, not raised: the old default is expected to fail under the limit
        out.update(ok=False, error=f"{type(exc).__name__}: {str(exc)[:300]}")
    u = _usage()
    out.update(wall_s=time.perf_counter() - t0, cpu_s=u["cpu_s"] - c0, peak_rss_mib=u["peak_rss_mib"],
               chunk=chosen[0] if chosen else None)
    return out


def _child(args: list[str]) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, env=env)
    lines = [ln for ln in proc.stdout.strip().splitlines() if ln.startswith("{")]
    if not lines:
        return {"ok": False, "error": f"exit {proc.returncode}: {proc.stderr[-500:]}"}
    res = json.loads(lines[-1])
    res["returncode"] = proc.returncode
    res["stderr_tail"] = proc.stderr[-300:]
    return res


def markdown(r: dict[str, Any]) -> str:
    c = r["config"]
    b = r["basis"]
    lines = [
        "# `interaction_graph` peak memory on a Hugging Face GPT-2 (issue 19)", "",
        f"Model: `GPT2LMHeadModel`, n_layer=2, n_embd=64, n_head=4, vocab {c['vocab']}, n_positions {c['positions']}, "
        f"**{b['n_params']:,} parameters**, float64, seeded random weights (memory depends on shapes). "
        f"Data: {c['sequences']} sequences x {c['length']} characters of `char_corpus().val`. "
        f"Hook points: {', '.join(f'`{p}`' for p in LAYERS)} (basis sizes {list(b['sizes'].values())}, "
        f"constant node {list(b['constant_node'].values())}). One thread; "
        f"load average before/after {r['load_before']} / {r['load_after']} on a shared 2-core machine "
        "(times are **under load**; CPU time is user + system of the process).", "",
        "| run | RLIMIT_AS | chunk | completed | peak RSS MiB | wall s | CPU s | note |",
        "|---|---|---|---|---|---|---|---|",
        f"| interaction_basis (chunk_size=1) | 10 GiB | 1 | yes | {b['peak_rss_mib']:.0f} | {b['wall_s']:.1f} | "
        f"{b['cpu_s']:.1f} | basis saved, graph runs load it |",
    ]
    for name, key in (("interaction_graph default", "graph_default"),
                      ("interaction_graph default", "graph_default_limited"),
                      ("interaction_graph chunk_size=32 (old default)", "graph_old_limited")):
        g = r.get(key)
        if g is None:
            continue
        lim = f"{g['rlimit_as_bytes'] / 2**30:.0f} GiB" if g.get("rlimit_as_bytes") else "none"
        note = "" if g.get("ok") else g.get("error", "")[:160].replace("|", "/")
        lines.append(f"| {name} | {lim} | {g.get('chunk')} | {'yes' if g.get('ok') else 'no'} | "
                     f"{g.get('peak_rss_mib', float('nan')):.0f} | {g.get('wall_s', float('nan')):.1f} | "
                     f"{g.get('cpu_s', float('nan')):.1f} | {note} |")
    lines += ["", r.get("verdict", ""), ""]
    sup = r.get("supplement")
    if sup:
        lines += [f"## Longer sequences: {sup['sequences']} sequences x {sup['length']} characters", "",
                  "| run | RLIMIT_AS | chunk | completed | peak RSS MiB | wall s | CPU s | note |",
                  "|---|---|---|---|---|---|---|---|"]
        for name, g in sup["runs"].items():
            lim = f"{g['rlimit_as_bytes'] / 2**30:.0f} GiB" if g.get("rlimit_as_bytes") else "none"
            note = "" if g.get("ok", True) else g.get("error", "")[:200].replace("|", "/")
            lines.append(f"| {name} | {lim} | {g.get('chunk', '-')} | {'yes' if g.get('ok', True) else 'no'} | "
                         f"{g.get('peak_rss_mib', float('nan')):.0f} | {g.get('wall_s', float('nan')):.1f} | "
                         f"{g.get('cpu_s', float('nan')):.1f} | {note} |")
        lines.append("")
    lines += [r.get("notes", ""), ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--stage", choices=["basis", "graph"])
    ap.add_argument("--positions", type=int, default=128)
    ap.add_argument("--length", type=int, default=64)
    ap.add_argument("--sequences", type=int, default=32)
    ap.add_argument("--basis", default="")
    ap.add_argument("--chunk-size", type=int, default=None)
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--basis-chunk", type=int, default=None)
    ap.add_argument("--name", default="gpt2_graph_memory")
    ap.add_argument("--skip-old", action="store_true")
    ap.add_argument("--notes", default="")
    ap.add_argument("--supplement", nargs="*", default=None,
                    help="label=stage-output.json pairs from longer sequences, merged into the written results")
    a = ap.parse_args()
    if a.supplement is not None:  # merge stage outputs (run by hand with --stage) into the results
        sys.path.insert(0, str(Path(__file__).parent))
        from common import RESULTS, write_results

        r = json.loads((RESULTS / f"{a.name}.json").read_text())
        runs = {k: json.loads(Path(v).read_text().strip().splitlines()[-1])
                for k, v in (item.rsplit("=", 1) for item in a.supplement)}
        r["supplement"] = {"length": a.length, "sequences": a.sequences, "runs": runs}
        r["notes"] = a.notes or r.get("notes", "")
        write_results(a.name, r, markdown(r))
        return
    if a.stage == "basis":
        print(json.dumps(stage_basis(a)))
        return
    if a.stage == "graph":
        print(json.dumps(stage_graph(a)))
        return
    sys.path.insert(0, str(Path(__file__).parent))
    from common import write_results

    from wdecomp.models import char_corpus

    common = ["--positions", str(a.positions), "--length", str(a.length), "--sequences", str(a.sequences)]
    r: dict[str, Any] = {"config": {"positions": a.positions, "length": a.length, "sequences": a.sequences,
                                    "vocab": char_corpus().vocab_size, "layers": LAYERS, "limit_bytes": LIMIT},
                         "load_before": _load()}
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "basis.safetensors")
        r["basis"] = _child(["--stage", "basis", "--basis", path, "--basis-chunk", "1", "--limit", str(GUARD), *common])
        print("basis", r["basis"], flush=True)
        r["graph_default"] = _child(["--stage", "graph", "--basis", path, "--limit", str(GUARD), *common])
        print("graph default", r["graph_default"], flush=True)
        r["graph_default_limited"] = _child(["--stage", "graph", "--basis", path, "--limit", str(LIMIT), *common])
        print("graph default, limited", r["graph_default_limited"], flush=True)
        if not a.skip_old:
            r["graph_old_limited"] = _child(["--stage", "graph", "--basis", path, "--limit", str(LIMIT),
                                             "--chunk-size", "32", *common])
            print("graph old default, limited", r["graph_old_limited"], flush=True)
    r["load_after"] = _load()
    r["notes"] = a.notes
    ok = r["graph_default"].get("ok") and r["graph_default_limited"].get("ok") and \
        r["graph_default"]["peak_rss_mib"] < LIMIT / 2**20
    r["verdict"] = (f"**Must-hold {'met' if ok else 'NOT met'}**: default settings "
                    f"{'complete' if ok else 'do not complete'} under the 6 GiB limit "
                    f"(peak RSS {r['graph_default'].get('peak_rss_mib', float('nan')):.0f} MiB).")
    write_results(a.name, r, markdown(r))
    print(r["verdict"])


if __name__ == "__main__":
    main()
