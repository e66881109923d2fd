"""LIB as rib runs it on modular addition (p = 113): the checks of the LIB paper's main experiment.

The paper's configuration (``interaction_basis`` defaults: centred, constant node first, ``jacobian``
basis formula, squared gradient edges, float64) on one of three models:

* ``--arch rib``: the paper's own model, rib's checkpoint (Apollo Research ``rib`` commit 7a6199f,
  ``rib_scripts/train_modular_arithmetic/sample_checkpoints/*/model_epoch_60000.pt``: one-layer
  transformer, d_model 128, 4 heads, d_mlp 512, ReLU, no LayerNorm, AdamW weight decay 1 on 30% of
  the pairs for 60,000 epochs), loaded into wdecomp's ``Transformer`` (``output="last-mid"``),
  rib's training split (``random_split`` with seed 0: the first ``int(0.3 p^2)`` of
  ``randperm(p^2)``), rib's node layers ``ln1.0, ln2.0, unembed, output`` as the hook points
  ``blocks.0:input, blocks.0.resid_mid, ln_f, unembed``. With ``--rib-graph`` (rib's saved
  ``*_rib_graph.pt``) wdecomp's Lambdas are printed next to rib's own.
* ``--arch transformer``: wdecomp's one-layer modular transformer (d_model 64, trained here), same
  node layout.
* ``--arch mlp``: wdecomp's modular MLP (``embed, mlp.act, unembed``); not a model of the paper.

Checks: (1) the constant node's Lambda against the largest other at every rotated layer; (2) Fourier
structure of the first layer's top non-constant directions, each read as a function of the operand
token: per direction (:func:`wdecomp.fourier.fourier_concentration`, the share of its power at its best
frequency: the number rib's ``run_generate_labels_mod_add.py`` writes in its node labels), and per group
of near-degenerate Lambdas (:func:`wdecomp.fourier.lambda_groups` at each ``--gaps`` relative gap;
:func:`wdecomp.fourier.subspace_concentration`, unchanged by rotations inside a group), with each
direction's token share (:func:`wdecomp.fourier.position_split`: a direction that mostly separates the
positions is listed as such); with ``--rib-graph`` also on rib's own saved ``C``; (3) edge ablation: the
fewest edges per layer pair that keep test accuracy within ``--tolerance`` of the original, next to the
total (rib's constant edges kept for free, as rib's ``always_keep_const_dir = center``); (4) Louvain
modules of the graph pruned to those edges (constant node left out).

rib's files are read with ``torch.load(weights_only=True)``; get them from a checkout of rib or
``git -C <rib mirror> archive HEAD <path> | tar -x``. Run, e.g.::

    python benchmarks/lib_rib_modular.py --arch rib --rib-checkpoint CKPT --rib-graph GRAPH \\
        --json benchmarks/results/lib_rib_modular.json

Prints a per-stage CPU time (the machine may be loaded: times are indicative only).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch
from torch import nn

from wdecomp import hooks
from wdecomp.ablation.edges import edge_ablation
from wdecomp.bases import interaction_basis
from wdecomp.fourier import fourier_concentration, lambda_groups, position_split, subspace_concentration
from wdecomp.graph import find_modules, interaction_graph
from wdecomp.models.modular import modular_addition
from wdecomp.models.training import batches
from wdecomp.models.transformer import Transformer, TransformerConfig

RIB_LAYERS = {"ln1.0": "blocks.0:input", "ln2.0": "blocks.0.resid_mid", "unembed": "ln_f", "output": "unembed"}


def rib_split(p: int, frac_train: float = 0.3, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """rib's modular-arithmetic dataset (pairs ``(a, b, p)`` with ``a`` major) split as rib's
    ``train_test_split`` does (``torch.utils.data.random_split`` with a seeded generator)."""
    a = torch.arange(p).repeat_interleave(p)
    b = torch.arange(p).repeat(p)
    x, y = torch.stack([a, b, torch.full_like(a, p)], 1), (a + b) % p
    perm = torch.randperm(p * p, generator=torch.Generator().manual_seed(seed))
    n = int(p * p * frac_train)
    return x[perm[:n]], y[perm[:n]], x[perm[n:]], y[perm[n:]]


def load_rib_checkpoint(path: str) -> Transformer:
    """rib's (TransformerLens-layout) modular-addition state dict in wdecomp's Transformer, float64."""
    sd = {k: v.to(torch.float64) for k, v in torch.load(path, weights_only=True, map_location="cpu").items()}
    n_heads, d_model, d_head = sd["blocks.0.attn.W_Q"].shape
    d_vocab = sd["embed.W_E"].shape[0]
    cfg = TransformerConfig(d_vocab=d_vocab, d_model=d_model, n_layers=1, n_heads=n_heads,
                            d_mlp=sd["blocks.0.mlp.W_in"].shape[1], context=sd["pos_embed.W_pos"].shape[0],
                            d_vocab_out=sd["unembed.W_U"].shape[1], act="relu", layer_norm=False,
                            output="last-mid")
    model = Transformer(cfg).to(torch.float64)
    att, mlp = model.blocks[0].attn, model.blocks[0].mlp
    hd = n_heads * d_head
    with torch.no_grad():
        model.embed.weight.copy_(sd["embed.W_E"])
        model.pos_embed.W_pos.copy_(sd["pos_embed.W_pos"])
        for name, lin in (("Q", att.q), ("K", att.k), ("V", att.v)):
            lin.weight.copy_(sd[f"blocks.0.attn.W_{name}"].permute(0, 2, 1).reshape(hd, d_model))
            lin.bias.copy_(sd[f"blocks.0.attn.b_{name}"].reshape(hd))
        att.out.weight.copy_(sd["blocks.0.attn.W_O"].reshape(hd, d_model).T)
        att.out.bias.copy_(sd["blocks.0.attn.b_O"])
        mlp.hidden.weight.copy_(sd["blocks.0.mlp.W_in"].T)
        mlp.hidden.bias.copy_(sd["blocks.0.mlp.b_in"])
        mlp.out.weight.copy_(sd["blocks.0.mlp.W_out"].T)
        mlp.out.bias.copy_(sd["blocks.0.mlp.b_out"])
        model.unembed.weight.copy_(sd["unembed.W_U"].T)
        model.unembed.bias.copy_(sd["unembed.b_U"])
    return model.eval()


def as_last_mid(model: nn.Module) -> Transformer:
    """wdecomp's modular transformer (``output="last"``) with the same weights, cut after attention."""
    cfg = dataclasses.replace(model.cfg, output="last-mid")
    out = Transformer(cfg).to(next(model.parameters()).dtype)
    out.load_state_dict(model.state_dict())
    return out.eval()


def concentration_2d(values: torch.Tensor, p: int) -> tuple[float, int]:
    """For a function of ``(a, b)`` on all ``p^2`` pairs (``a`` major): the largest share of its power
    (constant removed) on one frequency ``w``, i.e. on the 2-D DFT terms ``(k1, k2)`` in ``{0, w, p - w}^2``."""
    power = torch.fft.fft2((values - values.mean()).reshape(p, p).to(torch.float64)).abs().pow(2)
    total = float(power.sum())
    best, where = 0.0, 0
    for w in range(1, (p - 1) // 2 + 1):
        ks = [0, w, p - w]
        share = float(power[ks][:, ks].sum()) / total
        if share > best:
            best, where = share, w
    return best, where


def fourier_report(token_fn: torch.Tensor, lam: torch.Tensor, data_coords: torch.Tensor, top: int,
                   gaps: list[float]) -> dict:
    """Fourier measures of one basis's non-constant directions (column 0 is direction 1).

    ``token_fn`` ``(p, k)``: each direction as a function of the operand token; ``lam`` ``(k,)``: their
    Lambdas (descending); ``data_coords`` ``(N, P, k)``: the directions on the training data, for each
    direction's *token share* (variance within positions over all variance, ``position_split``; a
    direction below 0.5 mostly separates positions). Per direction: ``fourier_concentration``. Per
    group of near-degenerate Lambdas (``lambda_groups`` at each relative ``gap``, covering the top
    ``top`` and extended past it while the rule holds): ``subspace_concentration`` on the top
    ``ceil(g/2)`` frequencies (whole cosine/sine pairs) and, looser, on the top ``g``.
    """
    between, within = position_split(data_coords)
    token = within / (between + within)
    n = min(top, token_fn.shape[1])
    dirs = []
    for i in range(n):
        c, w = fourier_concentration(token_fn[:, i])
        dirs.append({"direction": i + 1, "lambda": float(lam[i]), "concentration": c, "frequency": w,
                     "top2_share": subspace_concentration(token_fn[:, i], 2)[0], "token_share": float(token[i]),
                     "variance": float(between[i] + within[i])})
    groups = {}
    for gap in gaps:
        rows = []
        for grp in lambda_groups(lam, n, gap):
            share, freqs = subspace_concentration(token_fn[:, grp])
            rows.append({"directions": [i + 1 for i in grp], "lambda": [float(lam[i]) for i in grp],
                         "concentration": share, "frequencies": freqs,
                         "concentration_one_per_direction": subspace_concentration(token_fn[:, grp], len(grp))[0],
                         "token_share": float(within[grp].sum() / (between[grp] + within[grp]).sum())})
        tok = [r["concentration"] for r in rows if r["token_share"] >= 0.5]
        groups[str(gap)] = {"groups": rows, "min_token_groups": min(tok) if tok else float("nan"),
                            "position_groups": [r["directions"] for r in rows if r["token_share"] < 0.5]}
    tok_dirs = [d["concentration"] for d in dirs if d["token_share"] >= 0.5]
    return {"directions": dirs, "groups": groups, "min_per_direction": min(d["concentration"] for d in dirs),
            "min_per_token_direction": min(tok_dirs) if tok_dirs else float("nan")}


def split_half(model: nn.Module, x: torch.Tensor, y: torch.Tensor, layers: list[str], first: torch.Tensor,
               top: int, gaps: list[float], **kw) -> dict:
    """How well two halves of the training data agree on the first layer's LIB directions.

    The basis is built on two random halves (``randperm`` seeded 0); both are read on all of
    ``first`` (``(N, P, d)``, the first layer's activations on the training data). Per direction
    ``i`` of the top ``top``: the relative Lambda difference and ``|corr|`` of the two halves'
    coordinate ``i``. Per group of half A's Lambdas (``lambda_groups`` at each gap): the smallest
    canonical correlation between the two halves' group coordinates (1: the same subspace). A
    direction whose ``|corr|`` is low while its group's canonical correlations stay near 1 is
    set by sampling noise inside a near-degenerate group: the data fix the group, not the direction.
    """
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    halves = [perm[: len(x) // 2], perm[len(x) // 2:]]
    lbs = [interaction_basis(model, batches(x[h], y[h]), layers, **kw)[layers[0]] for h in halves]
    k = min(top + 4, lbs[0].size, lbs[1].size) - 1
    cs = [lb.to_coordinates(first)[..., 1: k + 1].reshape(-1, k) for lb in lbs]
    cs = [c - c.mean(0) for c in cs]
    lam = [lb.eigenvalues[1: k + 1] for lb in lbs]

    def canon(a: torch.Tensor, b: torch.Tensor) -> float:
        qa, qb = torch.linalg.qr(a)[0], torch.linalg.qr(b)[0]
        return float(torch.linalg.svdvals(qa.T @ qb).min())

    n = min(top, k)
    dirs = [{"direction": i + 1, "lambda_a": float(lam[0][i]), "lambda_b": float(lam[1][i]),
             "lambda_rel_diff": float((lam[0][i] - lam[1][i]).abs() / lam[0][i]),
             "abs_corr": abs(canon(cs[0][:, i: i + 1], cs[1][:, i: i + 1]))} for i in range(n)]
    groups = {}
    for gap in gaps:
        grps = [g for g in lambda_groups(lam[0], n, gap) if g[-1] < k]
        groups[str(gap)] = [{"directions": [i + 1 for i in g], "min_canonical_corr": canon(cs[0][:, g], cs[1][:, g])}
                            for g in grps]
    return {"halves": [len(h) for h in halves], "directions": dirs, "groups": groups}


def line(title: str, rows: list, fmt, sep: str = ", ") -> None:
    """Print ``title`` and each row formatted by ``fmt``, joined by ``sep``."""
    print(title + sep.join(fmt(r) for r in rows))


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((model(x).argmax(-1) == y).double().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="rib", choices=["rib", "transformer", "mlp"])
    parser.add_argument("--p", type=int, default=113)
    parser.add_argument("--top", type=int, default=6, help="top LIB directions checked for Fourier concentration")
    parser.add_argument("--rib-checkpoint", default=None, help="rib's model_epoch_60000.pt (--arch rib)")
    parser.add_argument("--rib-graph", default=None, help="rib's saved *_rib_graph.pt, to compare Lambdas")
    parser.add_argument("--truncation", default="relative", choices=["relative", "absolute", "rib"],
                        help="'rib' with --threshold 1e-15 is rib's truncation_threshold rule")
    parser.add_argument("--threshold", type=float, default=None, help="gram and interaction threshold")
    parser.add_argument("--gaps", default="0,0.1,0.2",
                        help="relative Lambda gaps for grouping near-degenerate directions (0: per direction)")
    parser.add_argument("--basis-data", default="train", choices=["train", "all"],
                        help="build the basis on the training split (the paper's configuration) or on all p^2 pairs")
    parser.add_argument("--split-half", action="store_true",
                        help="also build the basis on two halves of the training data and compare the first layer")
    parser.add_argument("--tolerance", type=float, default=0.01, help="accuracy drop allowed in edge ablation")
    parser.add_argument("--logit-shift", default=None,
                        help="add this number to every unembedding bias (the same softmax, loss and accuracy), or "
                             "'center' to remove the uniform part of the mean logits over the training data")
    parser.add_argument("--skip-ablation", action="store_true", help="basis and Fourier checks only")
    parser.add_argument("--cleanup", action="store_true",
                        help="wdecomp's models (--arch mlp/transformer): train all max_steps, through the cleanup "
                             "phase (modular_addition(patience=None)) instead of stopping at 100%% test accuracy")
    parser.add_argument("--seed", type=int, default=0, help="wdecomp's models: the split, initialisation and "
                        "training seed")
    parser.add_argument("--plot", default=None, help="write the module plot here (.png)")
    parser.add_argument("--json", default=None, help="write the numbers here")
    args = parser.parse_args()
    t0 = time.process_time()
    out: dict = {"arch": args.arch, "p": args.p, "truncation": args.truncation, "threshold": args.threshold}

    def stage(name: str) -> None:
        print(f"[{time.process_time() - t0:7.1f} s CPU] {name}", flush=True)

    if args.arch == "rib":
        if not args.rib_checkpoint:
            parser.error("--arch rib needs --rib-checkpoint")
        model = load_rib_checkpoint(args.rib_checkpoint)
        x_tr, y_tr, x_te, y_te = rib_split(args.p)
        data, test = batches(x_tr, y_tr), batches(x_te, y_te)
        out["model"] = f"rib checkpoint {args.rib_checkpoint}"
        layers = list(RIB_LAYERS.values())
    else:
        bundle = modular_addition(p=args.p, arch=args.arch, dtype=torch.float64, progress=False, seed=args.seed,
                                  patience=None if args.cleanup else 2)
        model, data, test = bundle.model, bundle.data, bundle.test
        (x_tr, y_tr), (x_te, y_te) = data[0], test[0]
        out["model"] = f"wdecomp modular_addition(arch={args.arch}) {bundle.config}"
        if args.arch == "transformer":
            model = as_last_mid(model)
            layers = list(RIB_LAYERS.values())
        else:
            layers = ["embed", "mlp.act", "unembed"]
    if args.logit_shift is not None:
        with torch.no_grad():
            uniform = float(model(x_tr)[:, : args.p].mean())
            shift = -uniform if args.logit_shift == "center" else float(args.logit_shift)
            model.unembed.bias += shift
        out["logit_shift"] = shift
        stage(f"unembedding biases shifted by {shift:.6g} (uniform part of the mean logits was {uniform:.6g})")
    with torch.no_grad():
        mean_logits = model(x_tr).mean(0)
    out["mean_logits_sq"] = float(mean_logits.pow(2).sum())
    out["mean_logits_uniform_sq"] = float(mean_logits[: args.p].mean() ** 2 * args.p)
    print(f"  ||E logits||^2 = {out['mean_logits_sq']:.8g}, of which the uniform part (p * mean^2) "
          f"{out['mean_logits_uniform_sq']:.8g}")
    out["train_examples"], out["test_examples"] = len(x_tr), len(x_te)
    out["train_accuracy"], out["test_accuracy"] = accuracy(model, x_tr, y_tr), accuracy(model, x_te, y_te)
    stage(f"model: train accuracy {out['train_accuracy']:.4f}, test accuracy {out['test_accuracy']:.4f} "
          f"({len(x_tr)} / {len(x_te)} pairs)")
    out["basis_data"] = args.basis_data
    if args.basis_data == "all":  # every pair (a, b): the data are symmetric under a -> a + 1
        x_tr, y_tr = torch.cat([x_tr, x_te]), torch.cat([y_tr, y_te])
        data = batches(x_tr, y_tr)

    thr = {} if args.threshold is None else {"gram_threshold": args.threshold,
                                              "interaction_threshold": args.threshold}
    basis = interaction_basis(model, data, layers, truncation=args.truncation, **thr)
    stage("LIB basis (rib's paper configuration)")
    ref = None
    if args.rib_graph:
        g = torch.load(args.rib_graph, weights_only=True, map_location="cpu")
        ref = {RIB_LAYERS[ir["node_layer"]]: ir["Lambda"] for ir in g["interaction_rotations"]
               if ir.get("Lambda") is not None}
        rib_c = {RIB_LAYERS[ir["node_layer"]]: ir["C"].shape[1] for ir in g["interaction_rotations"]
                 if ir.get("C") is not None}
    out["layers"] = {}
    for point in layers[:-1]:
        lb = basis[point]
        lam = lb.eigenvalues
        row = {"directions": lb.size, "constant_lambda": float(lam[0]), "largest_other": float(lam[1:].max()),
               "top": [float(v) for v in lam[:8]]}
        row["constant_largest"] = row["constant_lambda"] >= row["largest_other"]
        msg = (f"  {point}: {lb.size} directions; constant Lambda {row['constant_lambda']:.8g}, largest other "
               f"{row['largest_other']:.8g}; constant largest: {row['constant_largest']}")
        if ref is not None and point in ref:
            r = ref[point]
            row["rib_constant_lambda"], row["rib_largest_other"] = float(r[0]), float(r[1:].max())
            row["rib_directions"] = int(rib_c[point])
            k = min(8, lb.size)
            rel = ((lam[:k] - r[:k]).abs() / r[:k].abs()).max()
            row["max_rel_diff_top8"] = float(rel)
            msg += (f"\n     rib's own: {rib_c[point]} directions; constant Lambda {float(r[0]):.8g}, largest other "
                    f"{float(r[1:].max()):.8g}; top-8 Lambdas max relative difference {float(rel):.2e}")
        out["layers"][point] = row
        print(msg)

    lb = basis[layers[0]]
    E = model.embed.weight.detach()[: args.p]
    if args.arch != "mlp":  # the residual stream at the position of a, as a function of a
        E = E + model.pos_embed.W_pos.detach()[0]
    first = hooks.run(model, x_tr, read=[layers[0]])[1][layers[0]].detach()  # (N, P, d)
    gaps = [float(g) for g in args.gaps.split(",")]
    bases = {"wdecomp": (lb.to_coordinates(E)[:, 1:], lb.eigenvalues[1:],
                         lb.to_coordinates(first)[..., 1:])}
    if args.rib_graph:  # rib's own saved C at its first node layer, on the same activations
        C = next(ir for ir in g["interaction_rotations"] if RIB_LAYERS[ir["node_layer"]] == layers[0])
        Cm, lam_rib = C["C"].to(torch.float64), C["Lambda"].to(torch.float64)

        def rib_coords(f: torch.Tensor) -> torch.Tensor:
            return (torch.cat([f, torch.ones_like(f[..., :1])], -1) @ Cm)[..., 1:]

        bases["rib"] = (rib_coords(E), lam_rib[1: Cm.shape[1]], rib_coords(first))
    out["fourier"] = {}
    for name, (token_fn, lam, data_coords) in bases.items():
        res = fourier_report(token_fn, lam, data_coords, args.top, gaps)
        out["fourier"][name] = res
        print(f"  {name} basis at {layers[0]}, top {args.top} non-constant directions, as functions of the token:")
        line("    per direction (Lambda: concentration@frequency, top-2-frequency share, token share): ",
             res["directions"], lambda r: f"{r['lambda']:.4g}: {r['concentration']:.4f}@{r['frequency']} "
                                          f"{r['top2_share']:.4f} {r['token_share']:.3f}")
        for gap, summary in res["groups"].items():
            line(f"    groups at relative Lambda gap {gap}: ", summary["groups"],
                 lambda r: f"{r['directions']}: {r['concentration']:.4f} on {r['frequencies']} (one per direction "
                           f"{r['concentration_one_per_direction']:.4f}, token share {r['token_share']:.3f})", " | ")
            print(f"      min over token groups {summary['min_token_groups']:.4f} (issue's target >= 0.99); "
                  f"position groups (token share < 0.5): {summary['position_groups']}")
        print(f"    min per direction {res['min_per_direction']:.4f}, min per direction over token directions "
              f"{res['min_per_token_direction']:.4f}")
    if args.split_half:
        sh = split_half(model, x_tr, y_tr, layers, first, args.top, gaps, truncation=args.truncation, **thr)
        out["split_half"] = sh
        stage(f"split-half bases ({sh['halves']} pairs)")
        line("  per direction (Lambda A / B, relative difference, |corr| of the two halves' coordinate): ",
             sh["directions"], lambda d: f"{d['direction']}: {d['lambda_a']:.4g}/{d['lambda_b']:.4g} "
                                         f"{d['lambda_rel_diff']:.3f} {d['abs_corr']:.4f}")
        for gap, rows in sh["groups"].items():
            line(f"  groups at gap {gap} (smallest canonical correlation): ", rows,
                 lambda r: f"{r['directions']}: {r['min_canonical_corr']:.4f}")
    if args.arch != "mlp":  # later layers as functions of (a, b), on all p^2 pairs
        a_ = torch.arange(args.p).repeat_interleave(args.p)
        b_ = torch.arange(args.p).repeat(args.p)
        pairs = torch.stack([a_, b_, torch.full_like(a_, args.p)], 1)
        acts = hooks.run(model, pairs, read=layers[1:-1])[1]
        out["fourier_2d"] = {}
        for point in layers[1:-1]:
            lb2 = basis[point]
            c2 = lb2.to_coordinates(acts[point].reshape(args.p * args.p, -1)).detach()
            res = [concentration_2d(c2[:, i], args.p) for i in range(1, min(args.top + 1, lb2.size))]
            out["fourier_2d"][point] = [{"direction": i + 1, "concentration": c, "frequency": w}
                                        for i, (c, w) in enumerate(res)]
            print(f"  {point} top {len(res)} directions, 2-D single-frequency share: "
                  + ", ".join(f"{c:.4f}@{w}" for c, w in res))
    if not args.skip_ablation:
        graph = interaction_graph(model, data, basis)
        stage(f"interaction graph: {graph.nx.number_of_nodes()} nodes, {graph.nx.number_of_edges()} edges")
        result = edge_ablation(model, test, basis, graph, metric="accuracy", tolerance=args.tolerance,
                               keep_constant_edges=True, curve_points=6)
        stage(f"edge ablation (accuracy within {args.tolerance} on the test set)")
        print(result)
        out["edge_ablation"] = {"tolerance": args.tolerance, "pairs": []}
        for pair in result.pairs:
            print(f"  {pair.source} -> {pair.target}: edges needed {pair.edges_needed} of {pair.total_edges} total")
            out["edge_ablation"]["pairs"].append({"source": pair.source, "target": pair.target,
                                                  "edges_needed": pair.edges_needed, "total": pair.total_edges})
        modules = find_modules(graph, edges_kept=result.edges_needed)
        stage("modules")
        print(modules)
        out["modules"] = str(modules)
        if args.plot:
            modules.plot(args.plot)
            print(f"  plot: {args.plot}")
    out["cpu_seconds"] = time.process_time() - t0
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()
