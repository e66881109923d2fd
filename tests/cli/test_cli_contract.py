"""The CLI's contract for bad input: one line ``wdecomp X: error: ...`` on standard error and exit 1
(a wdecomp error) or 2 (a usage error), found before any computation; never a raw traceback."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _zoo import cli_classifier
from torch import nn

from wdecomp.cli import COMMANDS, build_parser, main

CALLS: list[int] = []  # how many times the factory ran: refusals of outputs must come before it
NOT_A_FACTORY = 3


def counted_factory():
    """The tiny classifier (45 parameters, two batches); counts its calls."""
    CALLS.append(1)
    return cli_classifier()


FACTORY = f"{__name__}:counted_factory"
LAYERS = ["--layers", "hidden,act,out"]


def run_cli(argv, capsys):
    """``main(argv)`` in-process: (exit status, stdout, stderr); argparse's exits become statuses."""
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_refused(code, err, argv, status, needle):
    command = argv[0]
    assert code == status, err
    assert f"wdecomp {command}: error: " in err
    assert needle in err
    assert "Traceback" not in err


USAGE = [  # (argv, needle, what, why)
    (["spectrum", "--model", FACTORY, "--k", "0"], "--k: 0 is too small",
     "CLI `--k 0`", "at least one eigenpair must be asked for; give an integer >= 1"),
    (["spectrum", "--model", FACTORY, "--tol", "nan"], "--tol: 'nan' is not a finite number",
     "CLI `--tol nan`", "a NaN tolerance accepts anything; give a finite number > 0"),
    (["spectrum", "--model", FACTORY, "--tol=-1e-3"], "--tol: -0.001 must be > 0",
     "CLI negative `--tol`", "a residual tolerance is a positive number"),
    (["spectrum", "--model", FACTORY, "--block-size", "-3"], "--block-size: -3 is too small",
     "CLI `--block-size -3`", "a Lanczos block holds at least one vector"),
    (["spectrum", "--model", FACTORY, "--max-batches", "-1"], "--max-batches: -1 is too small",
     "CLI `--max-batches -1`", "-1 would silently drop the last batch; give a count >= 1"),
    (["spectrum", "--model", FACTORY, "--loss", "hinge"], "invalid choice: 'hinge'",
     "CLI unknown `--loss`", "the command line knows cross_entropy and mse; the message lists them"),
    (["spectrum", "--model", FACTORY, "--params", "hidden,,out"], "empty name",
     "CLI `--params` with an empty name", "an empty name matches nothing or everything; write names separated by "
     "single commas"),
    (["rank", "--model", FACTORY, "--groups", "bogus"], "invalid choice: 'bogus'",
     "CLI unknown `--groups`", "groups are per parameter, per module or none; the message lists them"),
    (["rank", "--model", FACTORY, "--rtol", "nan"], "--rtol: 'nan' is not a finite number",
     "CLI `--rtol nan`", "a NaN threshold would report full rank; give a finite number > 0"),
    (["graph", "--model", FACTORY, *LAYERS, "--keep", "1.5", "--out", "g.json"], "not a fraction in (0, 1]",
     "CLI `--keep 1.5`", "the kept share of attribution is a fraction in (0, 1]"),
    (["ablate", "--model", FACTORY, *LAYERS, "--levels", "1,x"], "--levels: 'x' is not an integer",
     "CLI `--levels 1,x`", "levels are numbers of components to ablate, e.g. 0,2,4"),
    (["ablate", "--model", FACTORY, *LAYERS, "--levels", "2,-1"], "-1 is too small",
     "CLI negative `--levels`", "a number of ablated components is >= 0"),
    (["ablate", "--model", FACTORY, *LAYERS, "--tokens", "inf"], "'inf' is not a finite number",
     "CLI `--tokens inf`", "the training-token count D must be a finite number > 0"),
    (["demo", "--quick", "--bogus"], "unrecognized arguments: --bogus",
     "CLI unknown option", "argparse names the option; `wdecomp COMMAND --help` lists the valid ones"),
]


@pytest.mark.parametrize(("argv", "needle"), [
    pytest.param(argv, needle, marks=pytest.mark.refuses(what, why), id=" ".join(argv[3:]) or argv[0])
    for argv, needle, what, why in USAGE
])
def test_bad_option_values_are_usage_errors(argv, needle, capsys):
    CALLS.clear()
    code, _, err = run_cli(argv, capsys)
    assert_refused(code, err, argv, 2, needle)
    assert not CALLS


@pytest.mark.refuses("CLI `--model :make` (no module)", "module:factory needs both parts; the message shows "
                     "an example")
def test_factory_without_module(capsys):
    code, _, err = run_cli(["spectrum", "--model", ":make"], capsys)
    assert_refused(code, err, ["spectrum"], 1, "is not module:factory")


@pytest.mark.refuses("CLI `--model module:CONSTANT` (not callable)", "the factory must be a function returning "
                     "(model, data)")
def test_factory_not_callable(capsys):
    code, _, err = run_cli(["spectrum", "--model", f"{__name__}:NOT_A_FACTORY"], capsys)
    assert_refused(code, err, ["spectrum"], 1, "is a int, not a function")


@pytest.mark.refuses("CLI `--k` larger than the number of parameters", "there are only p eigenpairs; the "
                     "message gives the largest valid k")
def test_k_above_p(capsys):
    code, _, err = run_cli(["spectrum", "--model", FACTORY, "--k", "46"], capsys)
    assert_refused(code, err, ["spectrum"], 1, "give --k 45 or fewer")


@pytest.mark.refuses("CLI `--at` naming no layer of `--layers`", "only a layer that has a basis can be ablated; "
                     "checked before the model is loaded")
def test_ablate_at_unknown_layer(capsys):
    CALLS.clear()
    argv = ["ablate", "--model", FACTORY, *LAYERS, "--at", "nosuch"]
    code, _, err = run_cli(argv, capsys)
    assert_refused(code, err, argv, 1, "--at 'nosuch' is not one of --layers hidden,act,out")
    assert not CALLS


@pytest.mark.refuses("CLI `--layers` naming no module of the model", "hook points are module names; the "
                     "message lists the model's modules")
def test_unknown_layer(capsys):
    argv = ["basis", "--model", FACTORY, "--layers", "hidden,nosuch"]
    code, _, err = run_cli(argv, capsys)
    assert_refused(code, err, argv, 1, "names no module 'nosuch'")
    assert "hidden, act, out" in err


@pytest.mark.refuses("CLI `--levels` above the layer's number of components", "a layer cannot lose more "
                     "components than it has")
def test_levels_above_size(capsys):
    argv = ["ablate", "--model", FACTORY, *LAYERS, "--at", "hidden", "--basis", "pca", "--levels", "0,99"]
    code, _, err = run_cli(argv, capsys)
    assert_refused(code, err, argv, 1, "ablate 99 components, but the layer has")


@pytest.mark.parametrize("text", [
    pytest.param('{"E": 1.0, "A":', marks=pytest.mark.refuses(
        "CLI malformed `--law` JSON", "the file must be a scaling law written by wdecomp.scaling"), id="truncated"),
    pytest.param('{"form": "chinchilla"}', marks=pytest.mark.refuses(
        "CLI `--law` JSON missing its fields", "a law file names its form and fitted constants"), id="missing-key"),
    pytest.param("[" * 5000 + "]" * 5000, marks=pytest.mark.refuses(
        "CLI deeply nested `--law` JSON", "refused as not a scaling law, never a RecursionError"), id="deep"),
])
def test_bad_law_file(text, tmp_path, capsys):
    CALLS.clear()
    law = tmp_path / "law.json"
    law.write_text(text)
    argv = ["ablate", "--model", FACTORY, *LAYERS, "--law", str(law)]
    code, _, err = run_cli(argv, capsys)
    assert_refused(code, err, argv, 1, "is not a scaling law file")
    assert not CALLS


@pytest.mark.refuses("CLI unknown `--law` name", "a law is chinchilla, epoch, kaplan or a JSON file")
def test_unknown_law_name(capsys):
    argv = ["ablate", "--model", FACTORY, *LAYERS, "--law", "moore"]
    code, _, err = run_cli(argv, capsys)
    assert_refused(code, err, argv, 1, "unknown scaling law 'moore'")


def _outputs(tmp_path: Path):
    a_file = tmp_path / "plain.txt"
    a_file.write_text("x")
    return {
        "a folder": (str(tmp_path), "is a folder"),
        "a read-only place": ("/proc/wdecomp-out.json", "cannot write '/proc/wdecomp-out.json'"),
        "under a file": (str(a_file / "out.json"), "is a file, not a folder"),
    }


@pytest.mark.parametrize("where", [
    pytest.param(w, marks=pytest.mark.refuses(
        f"CLI output path that is {w}", "checked before any computation, so no work is lost; the message names "
        "the path, never a hidden temp file"), id=w.replace(" ", "-"))
    for w in ("a folder", "a read-only place", "under a file")
])
@pytest.mark.parametrize("option", ["--out", "--json", "--plot"])
def test_unwritable_outputs_are_refused_before_computing(where, option, tmp_path, capsys):
    path, needle = _outputs(tmp_path)[where]
    argv = ["graph", "--model", FACTORY, *LAYERS, "--out", str(tmp_path / "g.graphml"), option, path]
    CALLS.clear()
    code, _, err = run_cli(argv, capsys)
    assert_refused(code, err, argv, 1, needle)
    assert not CALLS  # the model was never built
    assert not list(tmp_path.glob(".*wdecomp-tmp"))


@pytest.mark.refuses("CLI `demo --out` that is a file", "the report needs a folder; checked before any model is "
                     "trained")
def test_demo_out_is_a_file(tmp_path, capsys):
    target = tmp_path / "report"
    target.write_text("not a folder")
    code, _, err = run_cli(["demo", "--quick", "--out", str(target)], capsys)
    assert_refused(code, err, ["demo"], 1, "is a file, but a folder is needed")


def test_factory_found_in_the_current_folder(tmp_path, monkeypatch, capsys):
    (tmp_path / "h8_cwd_models.py").write_text(
        "from tests_cli_contract_source import counted_factory as make\n")
    (tmp_path / "tests_cli_contract_source.py").write_text(Path(__file__).read_text())
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", os.getcwd(), str(tmp_path))])
    for name in ("h8_cwd_models", "tests_cli_contract_source"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    code, out, err = run_cli(["spectrum", "--model", "h8_cwd_models:make", "--k", "2", "--json", "-"], capsys)
    assert code == 0, err
    ref = _dense_top(2)
    assert json.loads(out)["eigenvalues"] == pytest.approx(ref, rel=1e-8)


def _dense_top(k: int) -> list[float]:
    """Top-k Hessian eigenvalues of the tiny model, by double backward, column by column."""
    model, data = counted_factory()
    model = model.double()
    params = list(model.parameters())
    x = torch.cat([b[0] for b in data]).double()
    y = torch.cat([b[1] for b in data])
    loss = nn.functional.cross_entropy(model(x), y)
    grad = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params, create_graph=True)])
    rows = [torch.cat([h.reshape(-1) for h in torch.autograd.grad(grad[i], params, retain_graph=True)])
            for i in range(grad.numel())]
    return sorted(torch.linalg.eigvalsh(torch.stack(rows)).tolist(), reverse=True)[:k]


def _parsers(parser, prog):
    """``(prog, parser)`` for ``parser`` and every nested subcommand parser (``wdecomp scaling fit``)."""
    yield prog, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, f"{prog} {name}")


def test_every_option_has_help():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(sub.choices) == set(COMMANDS)
    checked = 0
    for prog, p in _parsers(parser, "wdecomp"):
        for action in p._actions:
            assert action.help and action.help.strip(), f"{prog} {action.option_strings or action.dest} has no help"
            checked += 1
    assert checked > 100


def test_help_is_plain_text_and_loads_nothing_heavy():
    code = ("import sys, contextlib, io\n"
            "from wdecomp.cli import main\n"
            "buf = io.StringIO()\n"
            "with contextlib.redirect_stdout(buf):\n"
            "    try:\n        main(['--help'])\n    except SystemExit as e:\n        assert e.code == 0\n"
            "heavy = [m for m in ('torch', 'matplotlib', 'networkx', 'scipy') if m in sys.modules]\n"
            "print(repr(heavy)); print(buf.getvalue())\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    heavy, _, text = proc.stdout.partition("\n")
    assert heavy == "[]"
    assert "usage: wdecomp" in text and all(c in text for c in COMMANDS)
    assert "``" not in text and ":class:" not in text and ":func:" not in text


def test_import_wdecomp_is_light():
    code = ("import sys, wdecomp\n"
            "print([m for m in ('torch', 'matplotlib', 'networkx', 'scipy') if m in sys.modules])\n"
            "wdecomp.hessian, wdecomp.eigh\n"
            "print([m for m in ('matplotlib', 'networkx') if m in sys.modules])\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[0] == "[]"


def test_every_public_name_resolves():
    import wdecomp

    missing = [name for name in wdecomp.__all__ if getattr(wdecomp, name, None) is None]
    assert not missing
    assert issubclass(wdecomp.OutputPathError, wdecomp.WdecompError)
    with pytest.raises(AttributeError, match="has no attribute 'no_such_name'"):
        wdecomp.no_such_name  # noqa: B018
