"""TransformerLens and Hugging Face interop: both examples run (``--fast``) and their numbers hold.

The packages come with the ``test`` extra (and the ``interop`` extra); when one is missing these
tests fail with the install command, they are not skipped.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from _examples import load_example

import wdecomp as wd
from wdecomp.interop import INSTALL, LogitsModule, logits_module, require


def _need(module: str):
    try:
        return require(module)
    except ImportError as exc:
        pytest.fail(f"{exc}\n(the test extra installs it: pip install -e \".[test]\")", pytrace=False)


def _run_example(tmp_path_factory, package: str, name: str, folder: str):
    """Run ``examples/<name>.py --fast`` (it needs ``package``) into a fresh folder: ``(folder, result)``."""
    _need(package)
    out = tmp_path_factory.mktemp(folder)
    return out, load_example(name).main(["--fast", "--out", str(out)])


@pytest.fixture(scope="module")
def tl_result(tmp_path_factory):
    return _run_example(tmp_path_factory, "transformer_lens", "transformerlens_interop", "tl_interop")


@pytest.fixture(scope="module")
def hf_result(tmp_path_factory):
    return _run_example(tmp_path_factory, "transformers", "huggingface_interop", "hf_interop")


def _common_checks(res: dict, round_trips: dict) -> None:
    assert res["train_loss"]["last"] < res["train_loss"]["first"] - 0.5
    h = res["hessian"]
    # Hessian-vector products agree with finite differences of gradients (float64)
    assert h["check_passed"]
    assert max(h["check_errors"]) < 1e-6
    assert h["symmetry_error"] < 1e-10
    # Lanczos eigenpairs: converged, with small actual residuals ||Hv - lambda v||
    assert h["converged"]
    assert len(h["eigenvalues"]) == 4
    assert max(h["relative_residuals"]) < 1e-8
    assert h["eigenvalues"] == sorted(h["eigenvalues"], reverse=True) and h["eigenvalues"][0] > 0
    # the basis keeps every direction on the data's span, so it round-trips exactly
    for layer in res["basis"].values():
        assert layer["size"] == layer["dim"] == 32
        assert all(v > 0 for v in layer["importance"])
    for name, err in round_trips.items():
        assert err < 1e-10, f"{name} round trip changed the logits by {err}"
    a = res["ablation"]
    levels = a["levels"]
    assert [lv["n_ablated"] for lv in levels] == [0, 16, 32, 64]
    assert levels[0]["loss"] == pytest.approx(a["original"]["loss"], abs=1e-12) and levels[0]["kl"] < 1e-12
    assert a["original"]["loss"] == pytest.approx(res["loss"], abs=1e-12)
    # zero-ablating every direction of both layers is zero-ablating the hooks themselves
    assert levels[-1]["loss"] == pytest.approx(a["zero_baseline"]["loss"], abs=1e-9)
    # the least important quarter of the directions costs less than a tenth of the whole hooks
    damage = a["zero_baseline"]["loss"] - a["original"]["loss"]
    assert damage > 0.1
    assert 0 <= levels[1]["loss"] - a["original"]["loss"] < 0.1 * damage


def test_transformerlens_example(tl_result):
    out, res = tl_result
    assert json.loads((out / "transformerlens.json").read_text()) == res
    assert res["model"]["n_layers"] == 2 and res["model"]["hook_points"] > 40
    # wdecomp's activations at TL hook names are exactly TL's run_with_cache
    assert res["cache_difference"] == 0.0
    _common_checks(res, res["round_trip"])


def test_huggingface_example(hf_result):
    out, res = hf_result
    assert json.loads((out / "huggingface.json").read_text()) == res
    assert res["model"]["attn_implementation"] == "eager"
    # wdecomp's activation at a block output is the model's own hidden state
    assert res["hidden_state_difference"] == 0.0
    _common_checks(res, res["round_trip"])


def test_logits_module_returns_logits_and_keeps_names():
    transformers = _need("transformers")
    cfg = transformers.GPT2Config(vocab_size=7, n_positions=5, n_embd=8, n_layer=1, n_head=2,
                                  bos_token_id=None, eos_token_id=None)
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    m = logits_module(hf)
    assert isinstance(m, LogitsModule) and not m.training
    assert hf.config._attn_implementation == "eager"
    x = torch.randint(0, 7, (3, 5))
    out = m(x)
    assert isinstance(out, torch.Tensor) and out.shape == (3, 5, 7)
    assert torch.equal(out, hf(input_ids=x, use_cache=False).logits)
    assert "model.transformer.h.0.mlp.c_fc.weight" in dict(m.named_parameters())


def test_hooked_transformer_refuses_downloads():
    _need("transformer_lens")
    from wdecomp.interop import hooked_transformer

    with pytest.raises(ValueError, match="download"):
        hooked_transformer(n_layers=1, d_model=8, n_ctx=4, d_head=4, d_vocab=5, act_fn="relu", tokenizer_name="gpt2")


def test_missing_package_names_the_install_command():
    with pytest.raises(ImportError, match="wdecomp\\[interop\\]"):
        require("no_such_interop_package_xyz")
    assert "transformer-lens==3.9.0" in INSTALL


def test_import_wdecomp_stays_light():
    code = ("import sys, wdecomp, wdecomp.interop; "
            "print(sorted(m for m in ('transformers', 'transformer_lens') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_paper_lib_folds_gpt2_conv1d_biases_and_rewrites_exactly():
    """rib's default (constant node first) folds the bias of Hugging Face's ``Conv1D`` (GPT-2's
    ``x @ W + b``) like an ``nn.Linear``'s; the components of that basis rewrite the model exactly."""
    _need("transformers")
    example = load_example("huggingface_interop")
    torch.manual_seed(0)
    model = example.build(8)
    x = torch.randint(0, model.model.config.vocab_size, (6, 8))
    data = [(x, x.reshape(-1))]
    basis = wd.interaction_basis(model, data, example.LAYERS, drop_noninteracting=False)
    for layer in basis.layers:
        assert basis[layer].constant is not None  # the constant node is there, first
    assert wd.decompose(model, basis, data).verify(model, data) < 1e-10
