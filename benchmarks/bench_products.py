"""Curvature products: wdecomp vs curvlinops on the same models in one run (issue 2 benchmark).

Measures, on 2 CPU threads, the time of a gradient, a single Hessian-vector product, a block
of 16 HVPs (per vector), and a GGN-vector product, for a 670k-parameter MLP (784-512-512-10,
512 examples) and a ~1M-parameter two-layer transformer (8 x 64 tokens). wdecomp's Hessian is
measured twice: rebuilt on every product (``cache=False``: what one isolated product costs) and
with its cached graph (``cache="auto"``, the default for one batch: what each of the repeated
products of an eigensolver costs at fixed weights; the one-off build is not in this number). Each measurement runs
in its own subprocess so its peak memory (ru_maxrss) is its own; the baseline (model and data
loaded, one forward pass) is reported so the product's own footprint can be read off.

Separate processes give honest peak memory but each time is one process's median, exposed to
load drifting between processes; so the same products are also timed **interleaved** in one
process per model (every round runs each library's product once, in turn; the minimum over the
rounds is reported), which is the comparison to read for speed.

    python benchmarks/bench_products.py            # writes benchmarks/results/products.{json,md}
    python benchmarks/bench_products.py --overhead [--base REV]   # the per-call overhead section

``--overhead`` measures what a cached product costs beyond its autograd sweeps (issue 16): on one
torch thread, the CPU time of ``A @ v`` minus the CPU time spent inside the cached record (the
backward sweeps of the product itself), both taken in the same call, for the Hessian, GGN and
empirical Fisher of the 85k MLP (64-256-256-10 tanh, 512 examples: the model of
``bench_revisions.py``) and the 670k MLP. With ``--base REV`` the same worker runs on ``git
archive REV`` in alternating subprocesses (base, new, new, base, ...), so the two revisions see
the same machine load. It writes ``results/products_overhead.json`` and the marked overhead
section of ``results/products.md`` (kept when the main run rewrites that file).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402
from common import MODELS, RESULTS, machine, peak_rss_mb, setup_threads, time_it, write_results  # noqa: E402

PRODUCTS = ("baseline", "gradient", "hvp", "hvp_cached", "hvp_block16", "hvp_block16_cached", "ggn")
WDECOMP_ONLY = ("hvp_cached", "hvp_block16_cached")


def product_fns(library: str, model: torch.nn.Module, data: list) -> dict:
    """The timed callables of one library on one model: gradient and every product it offers.

    Both libraries multiply the same seeded vector ``v`` and block ``V`` (16 columns).
    """
    params = [p for p in model.parameters()]
    p = sum(t.numel() for t in params)
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(p, generator=gen)
    V = torch.randn(p, 16, generator=gen)
    loss_func = torch.nn.CrossEntropyLoss()
    if library == "wdecomp":
        import wdecomp as wd

        obj = wd.Objective(model, data, loss="cross_entropy")
        H, Hc, G = wd.hessian(obj, cache=False), wd.hessian(obj), wd.ggn(obj)
        return {
            "gradient": obj.gradient,
            "hvp": lambda: H @ v,
            "hvp_cached": lambda: Hc @ v,
            "hvp_block16": lambda: H @ V,
            "hvp_block16_cached": lambda: Hc @ V,
            "ggn": lambda: G @ v,
        }
    if library == "curvlinops":
        from curvlinops import GGNLinearOperator, HessianLinearOperator

        CH = HessianLinearOperator(model, loss_func, params, data, check_deterministic=False)
        CG = GGNLinearOperator(model, loss_func, params, data, check_deterministic=False)
        x, y = data[0]
        return {
            "gradient": lambda: torch.autograd.grad(loss_func(model(x), y), params),
            "hvp": lambda: CH @ v,
            "hvp_block16": lambda: CH @ V,
            "ggn": lambda: CG @ v,
        }
    raise ValueError(library)


def per_vector(product: str) -> int:
    return 16 if product.startswith("hvp_block16") else 1


def measure(library: str, model_name: str, product: str) -> dict:
    setup_threads(2)
    model, data = MODELS[model_name]()
    p = sum(t.numel() for t in model.parameters())
    fns = product_fns(library, model, data)
    with torch.no_grad():
        model(data[0][0])
    if product == "baseline":
        return {"seconds": 0.0, "peak_mb": peak_rss_mb(), "params": p}
    seconds = time_it(fns[product], repeat=5 if per_vector(product) == 1 else 3)
    return {"seconds": seconds / per_vector(product), "peak_mb": peak_rss_mb(), "params": p}


ROUNDS = 8


def interleaved(model_name: str) -> dict:
    """Min-of-rounds times (ms) of every product of both libraries, run in turn in one process."""
    import time

    setup_threads(2)
    model, data = MODELS[model_name]()
    fns = {(library, product): fn for library in ("wdecomp", "curvlinops")
           for product, fn in product_fns(library, model, data).items()}
    times: dict = {key: [] for key in fns}
    for fn in fns.values():
        fn()  # warm-up (builds the cached graph once)
    for _ in range(ROUNDS):
        for key, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - t0)
    return {f"{library}:{product}": 1e3 * min(ts) / per_vector(product) for (library, product), ts in times.items()}


OVERHEAD_BEGIN, OVERHEAD_END = "<!-- overhead:begin -->", "<!-- overhead:end -->"
OVERHEAD_KINDS = ("hessian", "ggn", "fisher_empirical")


def mlp_85k(seed: int = 0) -> tuple[torch.nn.Module, list]:
    """64-256-256-10 tanh MLP (85,002 parameters) and 512 random inputs, one batch."""
    torch.manual_seed(seed)
    nn = torch.nn
    model = nn.Sequential(nn.Linear(64, 256), nn.Tanh(), nn.Linear(256, 256), nn.Tanh(), nn.Linear(256, 10))
    return model.eval(), [(torch.randn(512, 64), torch.randint(0, 10, (512,)))]


OVERHEAD_MODELS = {"mlp_85k": mlp_85k, "mlp_670k": MODELS["mlp_670k"]}


def overhead_worker(model_name: str, calls: int) -> dict:
    """Per-call CPU times (us) of cached single-vector products: total, inside the record, and the
    difference (the overhead), median and quartiles over ``calls`` calls, for each operator."""
    import wdecomp as wd

    torch.set_num_threads(1)
    model, data = OVERHEAD_MODELS[model_name]()
    obj = wd.Objective(model, data)
    build = {"hessian": wd.hessian, "ggn": wd.ggn, "fisher_empirical": wd.fisher}
    out = {}
    for kind in OVERHEAD_KINDS:
        A = build[kind](obj)
        v = torch.randn(A.shape[0], generator=torch.Generator().manual_seed(0))
        A @ v  # builds the record
        entry = A._entries[0]
        record, inner = entry.record, []

        def timed(u, record=record, inner=inner):
            t0 = time.thread_time_ns()
            result = record(u)
            inner.append(time.thread_time_ns() - t0)
            return result

        entry.record = timed
        total = []
        for _ in range(calls):
            t0 = time.thread_time_ns()
            A @ v
            total.append(time.thread_time_ns() - t0)
        assert A._entries[0] is entry and len(inner) == calls  # every call reused the one record
        over = [(t - i) / 1e3 for t, i in zip(total, inner)]
        q = statistics.quantiles(over, n=4)
        out[kind] = {"overhead_us": statistics.median(over), "overhead_q25_us": q[0], "overhead_q75_us": q[2],
                     "total_us": statistics.median(total) / 1e3, "record_us": statistics.median(inner) / 1e3}
    return out


def _revision_tree(rev: str, into: Path) -> Path:
    """``wdecomp/`` of git revision ``rev`` unpacked under ``into`` (for PYTHONPATH)."""
    root = Path(__file__).resolve().parents[1]
    archive = into / "src.tar"
    subprocess.run(["git", "-C", str(root), "archive", "-o", str(archive), rev, "wdecomp"], check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    return into


def overhead_runs(rounds: int, calls: int, base: str | None) -> dict:
    """Alternating subprocesses of the worker (this tree, and ``base`` if given), per model."""
    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"new": root}
        if base:
            trees = {"base": _revision_tree(base, Path(tmp)), "new": root}
        runs: dict = {m: {rev: [] for rev in trees} for m in OVERHEAD_MODELS}
        for r in range(rounds):
            order = list(trees.items()) if r % 2 == 0 else list(trees.items())[::-1]
            for model_name in OVERHEAD_MODELS:
                for rev, tree in order:
                    env = dict(os.environ, PYTHONPATH=str(tree), OMP_NUM_THREADS="1")
                    proc = subprocess.run(
                        [sys.executable, __file__, "--overhead-worker", model_name, str(calls)],
                        env=env, capture_output=True, text=True, check=True, cwd=tmp,
                    )
                    runs[model_name][rev].append(json.loads(proc.stdout.strip().splitlines()[-1]))
                    print(model_name, rev, runs[model_name][rev][-1], flush=True)
    return runs


def overhead_markdown(runs: dict, base: str | None, calls: int, note: str) -> str:
    revs = list(next(iter(runs.values())))
    out = [OVERHEAD_BEGIN, "## Per-call overhead of cached products (issue 16)", "",
           f"CPU time of the calling thread, one torch thread, {calls} calls per subprocess, "
           f"{len(next(iter(runs.values()))[revs[0]])} subprocesses per revision and model, alternating"
           + (f" with the base revision `{base}`" if base else "") + ". Overhead = CPU time of `A @ v` minus "
           "the CPU time inside the cached record (the product's own autograd sweeps), taken in the same call; "
           "the median over calls, then the median (and range) over subprocesses.", ""]
    if note:
        out += [note, ""]
    head = "| model | operator | " + " | ".join(f"{r} overhead us (range)" for r in revs)
    head += " | " + " | ".join(f"{r} total us" for r in revs) + " |"
    out += [head, "|" + "---|" * (2 + 2 * len(revs))]
    for model_name, by_rev in runs.items():
        for kind in OVERHEAD_KINDS:
            cells = []
            for rev in revs:
                vals = [r[kind]["overhead_us"] for r in by_rev[rev]]
                cells.append(f"{statistics.median(vals):.0f} ({min(vals):.0f}-{max(vals):.0f})")
            cells += [f"{statistics.median(r[kind]['total_us'] for r in by_rev[rev]):.0f}" for rev in revs]
            out.append(f"| {model_name} | {kind} | " + " | ".join(cells) + " |")
    out += ["", OVERHEAD_END, ""]
    return "\n".join(out)


def write_overhead(section: str) -> None:
    """Put the overhead section into ``results/products.md`` (replacing an earlier one)."""
    path = RESULTS / "products.md"
    text = path.read_text() if path.exists() else ""
    if OVERHEAD_BEGIN in text:
        text = text[: text.index(OVERHEAD_BEGIN)] + text[text.index(OVERHEAD_END) + len(OVERHEAD_END):].lstrip("\n")
    path.write_text(text.rstrip("\n") + "\n\n" + section)


def kept_overhead() -> str:
    """The overhead section of the current ``results/products.md`` (the main run keeps it)."""
    path = RESULTS / "products.md"
    text = path.read_text() if path.exists() else ""
    if OVERHEAD_BEGIN not in text:
        return ""
    return text[text.index(OVERHEAD_BEGIN): text.index(OVERHEAD_END) + len(OVERHEAD_END)] + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--single", nargs=3, metavar=("LIBRARY", "MODEL", "PRODUCT"))
    parser.add_argument("--interleaved", metavar="MODEL")
    parser.add_argument("--libraries", default="wdecomp,curvlinops")
    parser.add_argument("--overhead", action="store_true", help="only the per-call overhead section")
    parser.add_argument("--overhead-worker", nargs=2, metavar=("MODEL", "CALLS"), help=argparse.SUPPRESS)
    parser.add_argument("--base", help="with --overhead: also time this git revision, alternating")
    parser.add_argument("--rounds", type=int, default=4, help="with --overhead: subprocesses per revision")
    parser.add_argument("--calls", type=int, default=150, help="with --overhead: products per subprocess")
    parser.add_argument("--note", default="", help="with --overhead: a line for the section (load, date)")
    args = parser.parse_args()
    if args.overhead_worker:
        print(json.dumps(overhead_worker(args.overhead_worker[0], int(args.overhead_worker[1]))))
        return
    if args.overhead:
        runs = overhead_runs(args.rounds, args.calls, args.base)
        (RESULTS / "products_overhead.json").write_text(json.dumps(
            {"machine": machine() | {"threads": 1}, "base": args.base, "calls": args.calls, "runs": runs}, indent=2))
        write_overhead(overhead_markdown(runs, args.base, args.calls, args.note))
        return
    if args.single:
        print(json.dumps(measure(*args.single)))
        return
    if args.interleaved:
        print(json.dumps(interleaved(args.interleaved)))
        return
    rows = []
    for model_name in MODELS:
        for library in args.libraries.split(","):
            for product in PRODUCTS:
                if library != "wdecomp" and product in WDECOMP_ONLY:
                    continue
                proc = subprocess.run(
                    [sys.executable, __file__, "--single", library, model_name, product],
                    capture_output=True, text=True, check=False,
                )
                if proc.returncode != 0:
                    rows.append({"model": model_name, "library": library, "product": product,
                                 "error": proc.stderr.strip().splitlines()[-1:]})
                    continue
                result = json.loads(proc.stdout.strip().splitlines()[-1])
                rows.append({"model": model_name, "library": library, "product": product, **result})
                print(rows[-1], flush=True)
    inter = {}
    for model_name in MODELS:
        proc = subprocess.run([sys.executable, __file__, "--interleaved", model_name], capture_output=True,
                              text=True, check=False)
        inter[model_name] = (json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0
                             else {"error": proc.stderr.strip().splitlines()[-1:]})
        print(model_name, inter[model_name], flush=True)
    payload = {"machine": machine() | {"threads": 2}, "rows": rows, "interleaved": inter}
    write_results("products", payload, to_markdown(rows) + interleaved_markdown(inter) + kept_overhead())


def interleaved_markdown(inter: dict) -> str:
    out = ["## Interleaved timing (one process per model, min of "
           f"{ROUNDS} rounds, each round runs every product in turn)", "",
           "| model | product | wdecomp ms | x wdecomp grad | curvlinops ms | x curvlinops grad | vs curvlinops |",
           "|---|---|---|---|---|---|---|"]
    for model_name, t in inter.items():
        if "error" in t:
            out.append(f"| {model_name} | failed: {t['error']} | | | | | |")
            continue
        wg, cg = t["wdecomp:gradient"], t["curvlinops:gradient"]
        for product in PRODUCTS[1:]:
            w, c = t.get(f"wdecomp:{product}"), t.get(f"curvlinops:{product}")
            cmp_product = product.replace("_cached", "")
            c_ref = t.get(f"curvlinops:{cmp_product}")
            out.append(
                f"| {model_name} | {product} | {w:.1f} | {w / wg:.2f} | "
                + (f"{c:.1f} | {c / cg:.2f} |" if c is not None else "— | — |")
                + (f" {c_ref / w:.2f} |" if c_ref is not None else " — |")
            )
    out += ["", "`vs curvlinops` = curvlinops' time for the same product (for a cached row: curvlinops' uncached "
            "product, it has no cache) / wdecomp's time; > 1: wdecomp faster.", ""]
    return "\n".join(out) + "\n"


def to_markdown(rows: list[dict]) -> str:
    out = ["# Curvature products: wdecomp vs curvlinops", "",
           "Median wall time on 2 CPU threads; `hvp_block16` is per vector. Ratios: time / gradient time of",
           "the same library; `vs curvlinops` = curvlinops time / wdecomp time (> 1: wdecomp faster).", ""]
    for model_name in dict.fromkeys(r["model"] for r in rows):
        out += [f"## {model_name}", "",
                "| product | wdecomp ms | x grad | curvlinops ms | x grad | vs curvlinops | wdecomp peak MiB "
                "| curvlinops peak MiB |",
                "|---|---|---|---|---|---|---|---|"]
        get = {(r["library"], r["product"]): r for r in rows if r["model"] == model_name}
        for product in PRODUCTS[1:]:
            w, c = get.get(("wdecomp", product), {}), get.get(("curvlinops", product), {})
            wg, cg = get.get(("wdecomp", "gradient"), {}), get.get(("curvlinops", "gradient"), {})

            def ms(r):
                return f"{1e3 * r['seconds']:.1f}" if "seconds" in r else "—"

            def ratio(a, b):
                return f"{a['seconds'] / b['seconds']:.2f}" if "seconds" in a and b.get("seconds") else "—"

            out.append(f"| {product} | {ms(w)} | {ratio(w, wg)} | {ms(c)} | {ratio(c, cg)} | {ratio(c, w)} | "
                       f"{w.get('peak_mb', float('nan')):.0f} | {c.get('peak_mb', float('nan')):.0f} |")
        base_w, base_c = get.get(("wdecomp", "baseline"), {}), get.get(("curvlinops", "baseline"), {})
        out += ["", f"Baseline peak (model + data + one forward): wdecomp {base_w.get('peak_mb', 0):.0f} MiB, "
                f"curvlinops {base_c.get('peak_mb', 0):.0f} MiB; parameters: {base_w.get('params')}.", ""]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
