"""The SPD example runs (``--fast``) and its numbers hang together."""

from __future__ import annotations

import json

import pytest
from _examples import load_example


def test_spd_example_fast(tmp_path):
    summary = load_example("spd_toy_superposition").main(["--fast", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "spd.json").read_text())  # (NaN compute-equivalents: compare the numbers)
    assert saved["mmcs"] == summary["mmcs"] and saved["sweep_losses"] == summary["sweep_losses"]
    for name in ("importance.png", "norms.png", "training.png"):
        assert (tmp_path / name).stat().st_size > 1000
    masking = {r["mode"]: r for r in summary["masking"]["rows"]}
    assert list(masking) == ["unmasked", "importance", "stochastic", "rounded", "zero"]
    # the sweep's k = 0 level is the original model on the same data as the masking table's target
    assert summary["sweep_losses"][0] == pytest.approx(summary["masking"]["target_loss"], rel=1e-6)
    # after the faithfulness warm-up the unmasked pieces sum to W: the target's function
    assert masking["unmasked"]["recovered"] == pytest.approx(1.0, abs=0.02)
    assert masking["zero"]["recovered"] == 0.0
    assert summary["mmcs"] > 0.9 and summary["steps"] == 300
