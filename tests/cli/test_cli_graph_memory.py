"""``wdecomp graph`` / ``wdecomp basis``: --chunk-size and --max-memory."""

from __future__ import annotations

import json

import pytest
from _zoo import cli_classifier

from wdecomp.cli import build_parser, main
from wdecomp.cli.basis import memory_size


def tiny_factory():
    """The tiny classifier with its 24 examples in one batch."""
    return cli_classifier(sizes=(24,))


FACTORY = f"{__name__}:tiny_factory"


def test_memory_options_in_help(capsys):
    for cmd in ("basis", "graph"):
        with pytest.raises(SystemExit):
            build_parser().parse_args([cmd, "--help"])
        text = capsys.readouterr().out
        assert "--chunk-size" in text and "--max-memory" in text and "2G" in text


def test_graph_with_memory_options(tmp_path):
    out = tmp_path / "g.json"
    assert main(["graph", "--model", FACTORY, "--layers", "act,out", "--out", str(out), "--chunk-size", "5",
                 "--max-memory", "64M"]) in (0, None)
    g = json.loads(out.read_text())
    assert g["edges"] and all("weight" in e for e in g["edges"])
    assert memory_size("2G") == 2 << 30 and memory_size("512MiB") == 512 << 20 and memory_size("1000") == 1000


@pytest.mark.refuses("wdecomp graph --max-memory 0 / --chunk-size 0 / --max-memory lots",
                     "usage error (exit 2): a memory size is a positive number with an optional K/M/G/T unit")
@pytest.mark.parametrize("flag", [["--max-memory", "0"], ["--chunk-size", "0"], ["--max-memory", "lots"]])
def test_bad_memory_options_are_usage_errors(tmp_path, flag):
    with pytest.raises(SystemExit) as exc:
        main(["graph", "--model", FACTORY, "--out", str(tmp_path / "g.json"), *flag])
    assert exc.value.code == 2
