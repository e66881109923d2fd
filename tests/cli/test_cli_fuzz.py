"""Property-based fuzz of the command line: over a space of valid and invalid option values, every run
ends either in the wdecomp error contract (one ``wdecomp X: error:`` line, exit 1 or 2) or in exit 0
with a result checked against an independent dense float64 reference. Never a raw exception, never
exit 0 after a bad value, never exit 0 with a wrong number.

Runs in-process on a 45-parameter classifier so that each example costs well under a second.
"""

from __future__ import annotations

import json

import pytest
import torch
from _zoo import cli_classifier
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from torch import nn

from wdecomp.cli import main

N_BATCHES = 2


FACTORY = "_zoo:cli_classifier"  # 3 -> 6 (tanh) -> 3, 45 parameters, two batches of 16 and 8 examples

# option -> (values that must be accepted, values that must be refused)
SPECTRUM = {
    "--k": (["1", "2", "4"], ["0", "-2", "x", "2.5", ""]),
    "--which": (["largest", "smallest", "magnitude"], ["biggest"]),
    "--tol": (["1e-6", "1e-10"], ["nan", "inf", "0", "-1", "abc"]),
    "--block-size": (["1", "2", "4"], ["0", "-3", "x"]),
}
RANK = {
    "--method": (["auto", "dense"], ["svd"]),
    "--rtol": (["1e-6", "1e-3"], ["nan", "-inf", "0", "-0.5"]),
    "--groups": (["parameter", "module", "none"], ["bogus"]),
}
COMMON = {
    "--operator": (["hessian", "ggn", "fisher", "fisher_true"], ["jacobian"]),
    "--params": (["hidden", "out", "hidden.weight,out.bias"], ["", "hidden,,out", "nothing", "act"]),
    "--max-batches": (["1", "2", "7"], ["0", "-1", "one"]),
    "--seed": (["0", "3"], ["x"]),
}


@st.composite
def command_lines(draw, command: str, options: dict, exclude: tuple[str, ...] = ()):
    """An argv for ``command`` and whether it holds a value that must be refused (options in
    ``exclude`` are not drawn at all, so a dropped bad value cannot leave ``bad`` set)."""
    argv, bad = [command, "--model", FACTORY, "--json", "-"], False
    for name, (good, wrong) in {**COMMON, **options}.items():
        if name in exclude:
            continue
        kind = draw(st.sampled_from(["absent", "good", "good", "bad"]))
        if kind == "absent":
            continue
        value = draw(st.sampled_from(good if kind == "good" else wrong))
        argv.append(f"{name}={value}")
        bad |= kind == "bad"
    if command == "spectrum" and draw(st.booleans()):
        argv.append("--no-verify")
    return argv, bad


def _option(argv, name, default=None):
    for word in argv:
        if word.startswith(name + "="):
            return word.split("=", 1)[1]
    return default


def _dense(operator: str, params: str | None, max_batches: int) -> torch.Tensor:
    """The operator as a dense float64 matrix, computed without wdecomp (double backward, Jacobians)."""
    model, data = cli_classifier()
    model = model.double()
    names = [n for n, _ in model.named_parameters()]
    wanted = names if params is None else [n for n in names if any(n == s or n.startswith(s + ".")
                                                                   for s in params.split(","))]
    ps = [p for n, p in model.named_parameters() if n in wanted]
    batches = data[:max_batches]
    x = torch.cat([b[0] for b in batches]).double()
    y = torch.cat([b[1] for b in batches])
    n = x.shape[0]

    def flat(grads):
        return torch.cat([g.reshape(-1) for g in grads])

    logits = model(x)
    if operator == "hessian":
        g = flat(torch.autograd.grad(nn.functional.cross_entropy(logits, y), ps, create_graph=True))
        return torch.stack([flat(torch.autograd.grad(g[i], ps, retain_graph=True)) for i in range(g.numel())])
    if operator == "fisher":  # empirical: (1/N) sum_i g_i g_i^T
        per = [flat(torch.autograd.grad(nn.functional.cross_entropy(logits[i:i + 1], y[i:i + 1]), ps,
                                        retain_graph=True)) for i in range(n)]
        grads = torch.stack(per)
        return grads.T @ grads / n
    # GGN, equal to the true Fisher for softmax cross-entropy: (1/N) sum_i J_i^T (diag p - p p^T) J_i
    out = torch.zeros(sum(p.numel() for p in ps), sum(p.numel() for p in ps), dtype=torch.float64)
    for i in range(n):
        jac = torch.stack([flat(torch.autograd.grad(logits[i, c], ps, retain_graph=True))
                           for c in range(logits.shape[1])])
        p = torch.softmax(logits[i].detach(), 0)
        out += jac.T @ (torch.diag(p) - torch.outer(p, p)) @ jac
    return out / n


def _run(argv, capsys):
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse: usage errors (2)
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def _contract(argv, bad, code, err):
    event(f"exit {code}")
    assert code in (0, 1, 2), (argv, code, err)
    if code != 0:
        last = err.strip().splitlines()[-1]
        assert last.startswith(f"wdecomp {argv[0]}: error: "), (argv, err)
        assert "Traceback" not in err
    else:
        assert not bad, f"exit 0 after a bad value: {argv}"


def _reference(argv):
    operator = _option(argv, "--operator", "ggn" if argv[0] == "rank" else "hessian")
    max_batches = min(int(_option(argv, "--max-batches", str(N_BATCHES))), N_BATCHES)
    matrix = _dense(operator, _option(argv, "--params"), max_batches)
    return torch.linalg.eigvalsh((matrix + matrix.T) / 2)


SETTINGS = settings(max_examples=25, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@SETTINGS
@given(case=command_lines("spectrum", SPECTRUM))
def test_fuzz_spectrum(case, capsys):
    argv, bad = case
    code, out, err = _run(argv, capsys)
    _contract(argv, bad, code, err)
    if code != 0:
        return
    result = json.loads(out)
    true = _reference(argv)
    scale = float(true.abs().max())
    slack = 1e-8 * scale + (0 if "--no-verify" not in argv else 1e-6 * scale)
    for value, residual, ok in zip(result["eigenvalues"], result["residuals"], result["converged"], strict=True):
        if ok:  # a symmetric matrix has an eigenvalue within ||Hv - lv|| of every Ritz value (unit v)
            assert float((true - value).abs().min()) <= residual * 1.01 + slack, (argv, value, residual)
    which, k = _option(argv, "--which", "largest"), int(_option(argv, "--k", "10"))
    if which == "largest" and all(result["converged"]) and _option(argv, "--tol") is None:
        expected = sorted(true.tolist(), reverse=True)[:k]
        assert sorted(result["eigenvalues"], reverse=True) == pytest.approx(expected, abs=1e-7 * scale), argv


@SETTINGS
@given(case=command_lines("rank", RANK))
def test_fuzz_rank(case, capsys):
    argv, bad = case
    code, out, err = _run(argv, capsys)
    _contract(argv, bad, code, err)
    if code != 0:
        return
    result = json.loads(out)
    true = _reference(argv).abs()
    assert result["p"] == true.numel()
    threshold = result["threshold"]
    low = int((true > threshold * (1 + 1e-6) + 1e-13 * float(true.max())).sum())
    high = int((true > threshold * (1 - 1e-6) - 1e-13 * float(true.max())).sum())
    assert low <= result["rank"] <= high, (argv, result["rank"], low, high)
    assert result["nullity"] == result["p"] - result["rank"]


ABLATE = {
    "--at": (["hidden", "act", "out"], ["nosuch"]),
    "--basis": (["pca", "neuron"], ["svd"]),
    "--levels": (["0,1", "0,2,3"], ["1,x", "-1", ""]),
    "--method": (["zero", "mean"], ["nan"]),
}


@settings(max_examples=12, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(case=command_lines("ablate", ABLATE, exclude=("--operator", "--params")))  # not options of ablate
def test_fuzz_ablate(case, capsys):
    argv, bad = case
    argv += ["--layers", "hidden,act,out"]
    code, out, err = _run(argv, capsys)
    _contract(argv, bad, code, err)
    if code != 0:
        return
    levels = json.loads(out)["levels"]
    asked = [int(v) for v in _option(argv, "--levels", "").split(",") if v] or None
    if asked is not None:
        assert [lv["n_ablated"] for lv in levels] == asked
    for lv in levels:
        if lv["n_ablated"] == 0:
            assert lv["delta_loss"] == 0.0
