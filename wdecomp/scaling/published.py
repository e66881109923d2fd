"""The published fits: Chinchilla (as printed and unrounded), Epoch AI's refit, and Kaplan.

Each constant's docstring says what it reproduces (checked in ``tests/scaling/test_scaling_laws.py``)
and what it does not. :data:`PUBLISHED_ERRORS` holds the standard errors a paper prints, where it
prints them (only Besiroglu et al. 2024 do, Table 1); :mod:`wdecomp.scaling.uncertainty` turns them
into intervals.
"""

from __future__ import annotations

from wdecomp.scaling.base import FLOPS_PER_PF_DAY, FittedRange
from wdecomp.scaling.forms import ChinchillaLaw, KaplanLaw

__all__ = ["CHINCHILLA", "CHINCHILLA_TEX", "EPOCH", "KAPLAN", "PUBLISHED", "PUBLISHED_ERRORS"]

# --------------------------------------------------------------------------------------------
# published fits

# Hoffmann et al. 2022: "over 400 language models ranging from 70 million to over 16 billion
# parameters on 5 to 500 billion tokens" (abstract). The compute bounds are 6ND at the corners of
# that box, an over-estimate of the runs' actual span (IsoFLOP budgets 6e18 to 3e21, section 3.2).
_MASSIVETEXT = "MassiveText, SentencePiece tokenizer (32k vocabulary); Hoffmann et al. 2022 section 3"

_HOFFMANN_RANGE = FittedRange(
    n_min=7e7, n_max=1.6e10, d_min=5e9, d_max=5e11, c_min=6 * 7e7 * 5e9, c_max=6 * 1.6e10 * 5e11
)

CHINCHILLA = ChinchillaLaw(
    E=1.69,
    A=406.4,
    B=410.7,
    alpha=0.34,
    beta=0.28,
    name="chinchilla",
    source=(
        "Hoffmann et al. 2022, 'Training Compute-Optimal Large Language Models', "
        "arXiv 2203.15556, approach 3, eq. 10 (constants as printed in the paper body)"
    ),
    fitted_range=_HOFFMANN_RANGE,
    data=_MASSIVETEXT,
)
"""Chinchilla approach 3 as printed: ``L = 1.69 + 406.4/N**0.34 + 410.7/D**0.28``.

Hoffmann et al. 2022 (arXiv 2203.15556), eq. 10. N counts all parameters, D training tokens, loss
in nats/token on MassiveText. What these rounded constants reproduce (tests/scaling/test_scaling_laws.py):

* ``L(70e9, 1.4e12) = 1.9366``, the widely quoted "1.94" for Chinchilla itself (a number derived
  from eq. 10, not a row of the paper's tables).
* They do NOT reproduce the paper's approach-3 allocation: the exponent ``a = beta/(alpha+beta)``
  is 0.4516 (the paper prints 0.46, Table 2) and ``N_opt`` at Gopher's budget 5.76e23 FLOPs is
  32.2B (the paper reports about 40B). The rounding of alpha and beta to two digits causes this
  (Besiroglu et al. 2024, arXiv 2404.10102, section 3); :data:`CHINCHILLA_TEX` holds the
  unrounded exponents and reproduces 0.46 and 40B.
* Hoffmann et al. publish no standard errors for approach 3's constants (Table 2 gives
  intervals for the allocation exponent ``a`` only, which Besiroglu et al. show are implausibly
  narrow), so equivalents on this law carry no interval.
"""

CHINCHILLA_TEX = ChinchillaLaw(
    E=1.6934,
    A=406.4,
    B=410.7,
    alpha=0.3392,
    beta=0.2849,
    name="chinchilla-tex",
    source=(
        "Hoffmann et al. 2022, arXiv 2203.15556, approach 3, unrounded estimates from the paper's "
        "TeX source as reported by Besiroglu et al. 2024, arXiv 2404.10102"
    ),
    fitted_range=_HOFFMANN_RANGE,
    data=_MASSIVETEXT,
)
"""Chinchilla approach 3 with the unrounded estimates of the paper's TeX source.

``E=1.6934, A=406.4, B=410.7, alpha=0.3392, beta=0.2849`` (as quoted by Besiroglu et al. 2024,
arXiv 2404.10102). Reproduces two of the paper's approach-3 numbers: the exponent ``a = 0.4565``
(printed 0.46, Hoffmann et al. Table 2) and ``N_opt(5.76e23 FLOPs) = 40.3B`` (printed "40B",
section 3.3 / Figure 1). It is not claimed to reproduce the approach-3 allocation table (Table A3);
no test here checks it against that table.
"""

EPOCH = ChinchillaLaw(
    E=1.8172,
    A=482.01,
    B=2085.43,
    alpha=0.3478,
    beta=0.3658,
    name="epoch",
    source=(
        "Besiroglu, Erdil, Barnett, You 2024, 'Chinchilla Scaling: A replication attempt', "
        "arXiv 2404.10102, Table 1 (refit of approach 3 on data extracted from Hoffmann et al. "
        "Figure 4; standard errors E 0.03, A 124.58, B 1293.23, alpha 0.02, beta 0.02)"
    ),
    fitted_range=_HOFFMANN_RANGE,
    data=_MASSIVETEXT,
)
"""Epoch AI's refit of Chinchilla approach 3 (Besiroglu et al. 2024, arXiv 2404.10102).

``L = 1.8172 + 482.01/N**0.3478 + 2085.43/D**0.3658``, fitted with Huber(1e-3) on log-loss
residuals to ~240 points digitised from Hoffmann et al.'s Figure 4 (same ranges as Chinchilla).
Its compute-optimal exponent ``a = beta/(alpha+beta) = 0.5126`` matches the paper's printed 0.5126
and Hoffmann's approaches 1 and 2 (about 0.5); at Gopher's budget it allocates ~72B parameters and
~18 tokens per parameter, close to Chinchilla's own 70B / 20.
"""

KAPLAN = KaplanLaw(
    alpha_N=0.076,
    N_c=8.8e13,
    alpha_D=0.095,
    D_c=5.4e13,
    alpha_C=0.050,
    C_c=3.1e8,
    N_e=1.3e9,
    p_N=0.73,
    D_e=2e10,
    p_D=0.27,
    batch_factor=2.0,
    name="kaplan",
    source=(
        "Kaplan et al. 2020, 'Scaling Laws for Neural Language Models', arXiv 2001.08361, "
        "eqs. 1.1-1.5 and Table 6 (N_opt = 1.3e9 C_min**0.73, D_opt = 2e10 C_min**0.27); "
        "actual compute = 2 C_min as in Hoffmann et al. 2022 appendix D.4"
    ),
    # Section 2: models of 768 to 1.5e9 non-embedding parameters, datasets of 22e6 to 23e9
    # tokens. The compute bounds are where N_opt = 1.3e9 C_min**0.73 spans those model sizes
    # (3e-9 to 1.2 PF-days of C_min, times the batch factor 2), a derived, not printed, range.
    fitted_range=FittedRange(
        n_min=768.0,
        n_max=1.5e9,
        d_min=2.2e7,
        d_max=2.3e10,
        c_min=2.0 * (768.0 / 1.3e9) ** (1 / 0.73) * FLOPS_PER_PF_DAY,
        c_max=2.0 * (1.5e9 / 1.3e9) ** (1 / 0.73) * FLOPS_PER_PF_DAY,
    ),
    data="WebText2, GPT-2 byte-pair encoding (50257 tokens); Kaplan et al. 2020 section 2",
)
"""Kaplan et al. 2020 (arXiv 2001.08361), WebText2, loss in nats/token.

Units: ``N`` non-embedding parameters, ``D`` tokens, ``C_c`` in PF-days (1 PF-day = 8.64e19
FLOPs; the API takes FLOPs and converts). Constants: ``alpha_N=0.076, N_c=8.8e13``;
``alpha_D=0.095, D_c=5.4e13``; ``alpha_C^min=0.050, C_c^min=3.1e8`` PF-days; ``N_opt =
1.3e9 C_min**0.73``, ``D_opt = 2e10 C_min**0.27`` (Table 6). Actual compute is taken as
``2 C_min`` (training at the critical batch, Kaplan eq. 5.5), the convention of Hoffmann et al.'s
comparison (appendix D.4): the Kaplan-optimal size at 1e21 FLOPs is then 4.68e9 parameters
(``dataclasses.replace(KAPLAN, batch_factor=1.0)`` reads ``C_min`` as actual compute: 7.77e9).
The paper's own check-point (section 6.3, eq. 6.8): the frontier reaches ``L* ~ 1.7`` nats at
``C_min* ~ 1e4`` PF-days; the rounded constants give 7.6e3 PF-days, which agrees at the paper's
stated precision ("highly uncertain, varying by an order of magnitude"). Kaplan et al. publish
no standard errors for these constants, so equivalents on this law carry no interval.
"""

PUBLISHED: dict[str, ChinchillaLaw | KaplanLaw] = {
    "chinchilla": CHINCHILLA,
    "chinchilla-tex": CHINCHILLA_TEX,
    "epoch": EPOCH,
    "kaplan": KAPLAN,
}
"""The published laws by name (the names the CLI's ``--laws`` accepts)."""

PUBLISHED_ERRORS: dict[str, dict[str, float]] = {
    "epoch": {"E": 0.03, "A": 124.58, "B": 1293.23, "alpha": 0.02, "beta": 0.02},
}
"""Standard errors a paper prints for its constants, by law name.

Only Besiroglu et al. 2024 (arXiv 2404.10102, Table 1) print them (for their refit, :data:`EPOCH`).
Hoffmann et al. 2022 give none for approach 3's constants; Kaplan et al. 2020 give none. No
covariance is printed next to Table 1, so :mod:`wdecomp.scaling.uncertainty` samples the
parameters independently (an approximation: in a fit, ``A`` and ``alpha`` are strongly correlated).
"""
