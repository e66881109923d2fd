"""``wdecomp degrade``: an SAE file spliced into a (tiny) char transformer, outputs written; refusals."""

from __future__ import annotations

import json
import textwrap

import pytest

from wdecomp.cli import main
from wdecomp.sae.model import SparseAutoencoder

FACTORY = textwrap.dedent("""
    import wdecomp.models as wm

    def tiny():
        return wm.char_transformer(d_model=16, n_layers=1, n_heads=2, context=16, tokens=2048, batch_size=8,
                                   n_data_batches=1, progress=False)
""")


@pytest.fixture()
def workdir(tmp_path, monkeypatch):
    (tmp_path / "tinychar.py").write_text(FACTORY)
    (tmp_path / "prompts.txt").write_text("The list \n\ndef f(x):\\n    return\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_degrade_with_an_sae_file(workdir, capsys) -> None:
    sae = SparseAutoencoder(16, 32, k=2, hook="blocks.0", seed=0)
    sae.save(workdir / "sae.safetensors")
    code = main(["degrade", "--model", "tinychar:tiny", "--splice", "sae:sae.safetensors", "--prompts",
                 "prompts.txt", "--max-new-tokens", "8", "--seeds", "0,1", "--out", "gen", "--json", "g.json"])
    assert code == 0
    result = json.loads((workdir / "g.json").read_text())
    assert len(result["continuations"]) == 2 * 3  # two prompts x (greedy + two seeds)
    assert result["continuations"][1]["prompt"] == "The list "  # spaces kept
    assert result["continuations"][3]["prompt"] == "def f(x):\n    return"
    assert all(len(c["edited"]) == 8 for c in result["continuations"])
    groups = result["degradation"]["groups"]["token class"]
    assert sum(g["count"] for g in groups) == result["degradation"]["n_tokens"] == 8 * 16
    assert (workdir / "gen" / "generations.html").read_text().startswith("<!DOCTYPE html>")
    md = (workdir / "gen" / "generations.md").read_text()
    assert "# Generations: original vs SAE sae.safetensors at blocks.0" in md


@pytest.mark.refuses("wdecomp degrade with an SAE trained for another width than the hook",
                     "the SAE belongs to another hook or model; pass a matching --splice sae:FILE or --hook")
def test_degrade_width_mismatch_is_an_error(workdir, capsys) -> None:
    SparseAutoencoder(12, 32, k=2, hook="blocks.0").save(workdir / "bad.safetensors")
    code = main(["degrade", "--model", "tinychar:tiny", "--splice", "sae:bad.safetensors", "--prompts", "prompts.txt"])
    assert code == 1
    assert "have width 16, this SAE was built for width 12" in capsys.readouterr().err


@pytest.mark.refuses("wdecomp degrade with a prompts file that holds no prompts", "give one prompt per line")
def test_degrade_empty_prompts_file_is_an_error(workdir, capsys) -> None:
    (workdir / "empty.txt").write_text("\n\n")
    code = main(["degrade", "--model", "tinychar:tiny", "--splice", "zero:blocks.0", "--prompts", "empty.txt"])
    assert code == 1
    assert "holds no prompts" in capsys.readouterr().err
