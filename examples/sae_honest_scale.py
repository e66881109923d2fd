"""SAEs, PCA and LIB at one residual hook of the char transformer, on one honest table.

Trains TopK and ReLU sparse autoencoders on the residual stream after block 0 of the default
character transformer (``wdecomp.models.char_transformer``: 410k parameters, validation loss
1.343 nats), streaming its activations over every training window; evaluates each with SAELens'
metric names (:mod:`wdecomp.sae.metrics`); puts them on one table with PCA-k and LIB-k
truncations of the same hook (:func:`wdecomp.compare.compare_decompositions`): CE, loss recovered,
KL, explained variance, L0 and the compute-equivalent with its interval from the model family's
own fitted sweep (``char_scaling_sweep``, bootstrap refits); tests the matrix-binding hypothesis
on the same activations (:func:`wdecomp.sae.binding.binding_report`); and writes side-by-side
generations of the original and the SAE-spliced model with the per-token degradation
(:func:`wdecomp.degrade.compare_generations`).

Run: ``python examples/sae_honest_scale.py [--fast] [--no-sweep] [--out DIR]``. Writes
``table.md/json/png``, ``sae_metrics.md``, ``binding.txt``, ``generations.md/html`` and the SAEs.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import wdecomp.models as wm
from wdecomp import scaling
from wdecomp.compare import compare_decompositions
from wdecomp.degrade import compare_generations
from wdecomp.io import atomic_write_text
from wdecomp.sae.binding import binding_report
from wdecomp.sae.metrics import evaluate_sae
from wdecomp.sae.model import load_sae
from wdecomp.sae.train import hook_activations, train_sae

PROMPTS = ["The list ", "def f(x):\n    return ", "An exception is raised when ", "for i in range("]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fast", action="store_true", help="tiny sizes (for tests)")
    parser.add_argument("--no-sweep", action="store_true", help="skip the scaling sweep (no compute-equivalent)")
    parser.add_argument("--hook", default="blocks.0", help="residual hook point (default blocks.0)")
    parser.add_argument("--steps", type=int, default=None, help="SAE training steps")
    parser.add_argument("--resume", action="store_true", help="load SAEs already saved in --out instead of training")
    parser.add_argument("--val-batches", type=int, default=None, help="validation batches (default: all)")
    parser.add_argument("--out", default="sae_out", help="output directory")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    fast = args.fast
    bundle = (wm.char_transformer(d_model=32, n_layers=1, n_heads=2, context=32, tokens=32_768, batch_size=16,
                                  n_data_batches=4) if fast else wm.char_transformer(n_data_batches=None))
    model, data = bundle
    val = bundle.test[:2] if fast else bundle.test[: args.val_batches]
    corpus = bundle.extra["corpus"]
    hook = args.hook
    steps = args.steps or (60 if fast else 1500)
    batch = 256 if fast else 1024
    configs = [("topk", 64, 4)] if fast else [("topk", 256, 16), ("topk", 1024, 16), ("topk", 1024, 64),
                                             ("relu", 1024, None)]
    saes = {}
    for act, width, k in configs:
        label = f"TopK n={width} k={k}" if act == "topk" else f"ReLU n={width}"
        path = out / f"sae_{act}_{width}_{k}.safetensors"
        if args.resume and path.is_file():
            saes[label] = load_sae(path)
            continue
        res = train_sae(model, data, hook, width=width, activation=act, k=k, steps=steps, batch_size=batch,
                        l1=3e-3, seed=0)
        print(label, res, flush=True)
        res.sae.save(path)
        saes[label] = res.sae

    law = None
    if not args.no_sweep:
        points = wm.char_scaling_sweep(preset="quick" if fast else "default")
        guided = scaling.guided_fit(points, n_bootstrap=20 if fast else 100, seed=0)  # refits a degenerate fit
        print(guided)
        law = guided.fit
    m = bundle.metrics
    rows = [evaluate_sae(model, sae, val, label=label, law=law, tokens=m["n_tokens"], n_params=m["n_params"])
            for label, sae in saes.items()]
    text = "\n\n".join(str(r) for r in rows)
    atomic_write_text(out / "sae_metrics.md", "```\n" + text + "\n```\n")
    print(text)

    ks = (4, 16) if fast else (8, 32, 64)
    # LIB's per-position Jacobians cost ~T^2 per window: build it on a few short windows
    lib_data = [(data[0][0][:8, :16], data[0][1][:8, :16])] if not fast else data[:1]
    table = compare_decompositions(model, val, hook, saes=saes, pca_k=ks, lib_k=ks, lib_data=lib_data,
                                   lib_layers=[hook, "unembed"], lib_options={"max_memory": 4 << 30}, law=law,
                                   tokens=m["n_tokens"], n_params=m["n_params"])
    print(table)
    atomic_write_text(out / "table.md", table.to_markdown())
    table.to_json(out / "table.json")
    table.plot(out / "table.png")

    d = model.cfg.d_model
    m_free = 2 * d if fast else 4 * d
    bind = binding_report(lambda: hook_activations(model, data, hook, seed=1), n_free=m_free,
                          k=2 if fast else 8, steps=steps, batch_size=batch,
                          eval_source=lambda: hook_activations(model, val, hook, epochs=1))
    print(bind)
    atomic_write_text(out / "binding.txt", str(bind) + "\n")

    widest = list(saes)[-2] if len(saes) > 1 else list(saes)[0]
    gens = compare_generations(model, (hook, saes[widest]), PROMPTS, encode=corpus.encode, decode=corpus.decode,
                               max_new_tokens=24 if fast else 80, seeds=(0, 1), data=val[:4],
                               label=f"SAE '{widest}' at {hook}")
    gens.save(out)
    summary = {"table": table.to_dict(), "binding": {"fit_ratio": bind.fit_ratio, "supported": bind.supported,
                                                     "budget_saved": bind.budget_saved},
               "generations_identical": gens.identical, "seconds": time.perf_counter() - t0}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1))
    print(f"\nwrote {out} in {summary['seconds']:.0f} s")
    return summary


if __name__ == "__main__":
    main()
