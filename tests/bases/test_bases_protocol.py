"""The component model (wdecomp.bases.protocol): groups written only from the protocol's docstring
(an SPD-like rank-one weight group, an SAE-like nonlinear activation group) are ablated exactly as
the docstring says; one check_model and one global index for every decomposition."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from wdecomp.ablation import ablate, ablation_sweep, as_component_set
from wdecomp.bases import curvature_basis, neuron_basis
from wdecomp.bases.protocol import (
    ActivationGroup,
    ComponentModel,
    ComponentSet,
    WeightComponents,
    WeightGroup,
    model_signature,
)
from wdecomp.components import decompose
from wdecomp.errors import ModelMismatchError, SelectionError

DT = torch.float64


def _mlp(seed: int = 0, hidden: int = 6) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, hidden), nn.Tanh(), nn.Linear(hidden, 3)).to(DT).eval()


def _data(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(30, 4, generator=g, dtype=DT)
    y = torch.randint(0, 3, (30,), generator=g)
    return [(x[:20], y[:20]), (x[20:], y[20:])]


@torch.no_grad()
def _loss(model_fn, data) -> float:
    total = sum(float(F.cross_entropy(model_fn(x), y, reduction="sum")) for x, y in data)
    return total / sum(len(y) for _, y in data)


@dataclass(frozen=True, eq=False)
class RankOne:
    """SPD-like: ``W ~ U V`` for the Linear ``module``; removing ``S`` subtracts ``U_S V_S``."""

    module: str
    U: torch.Tensor  # (d_out, C)
    V: torch.Tensor  # (C, d_in)
    importance: torch.Tensor
    label: str = "rank-one"
    parameters: dict = field(default_factory=dict)

    @property
    def hook(self) -> str:
        return self.module

    @property
    def size(self) -> int:
        return self.U.shape[1]

    def remove(self, weights, idx):
        name = next(iter(self.parameters))
        return {name: weights[name] - self.U[:, idx] @ self.V[idx, :]}


@dataclass(frozen=True, eq=False)
class ReluDictionary:
    """SAE-like: ``c = relu(E f + b)``, component ``i`` writes ``c_i D_i``."""

    hook: str
    E: torch.Tensor  # (k, d)
    b: torch.Tensor  # (k,)
    D: torch.Tensor  # (k, d)
    importance: torch.Tensor
    label: str = "sae"
    parameters: dict = field(default_factory=dict)

    @property
    def size(self) -> int:
        return self.E.shape[0]

    def coordinates(self, f):
        return torch.relu(f @ self.E.T + self.b)

    def write(self, c, idx):
        return c @ self.D[idx]


def _rank_one(model, C=5, seed=3):
    g = torch.Generator().manual_seed(seed)
    W = model[2].weight.detach()
    U = torch.randn(W.shape[0], C, generator=g, dtype=DT)
    V = torch.randn(C, W.shape[1], generator=g, dtype=DT)
    return RankOne("2", U, V, torch.rand(C, generator=g, dtype=DT), parameters={"2.weight": tuple(W.shape)})


def test_rank_one_weight_group_zero_and_mean_ablation_match_hand_computation():
    model, data = _mlp(), _data()
    grp = _rank_one(model)
    assert isinstance(grp, WeightGroup) and not isinstance(grp, ActivationGroup)
    S = [1, 3]
    W, b = model[2].weight.detach(), model[2].bias.detach()
    WS = W - grp.U[:, S] @ grp.V[S, :]

    def head(h, Wm):
        return h @ Wm.T + b

    def zero_fn(x):
        return head(torch.tanh(model[0](x)), WS)

    got = ablate(model, grp, S, data=data).levels[0].loss
    assert abs(got - _loss(zero_fn, data)) < 1e-12
    # mean: m'(x) = g(x; W_S) + g(E x; W) - g(E x; W_S), E x over every example
    hbar = torch.cat([torch.tanh(model[0](x)) for x, _ in data]).mean(0)

    def mean_fn(x):
        h = torch.tanh(model[0](x))
        return head(h, WS) + (head(hbar, W) - head(hbar, WS))

    got = ablate(model, grp, S, data=data, method="mean").levels[0].loss
    assert abs(got - _loss(mean_fn, data)) < 1e-12
    # a sweep ranks the group's own importances: least important first
    sweep = ablation_sweep(model, grp, data, k=[2])
    assert sweep.levels[0].ablated == tuple(torch.argsort(grp.importance)[:2].tolist())


def test_nonlinear_activation_group_is_ablated_by_the_general_rule():
    model, data = _mlp(), _data()
    g = torch.Generator().manual_seed(4)
    k, d = 5, 6
    grp = ReluDictionary("1", torch.randn(k, d, generator=g, dtype=DT), torch.randn(k, generator=g, dtype=DT),
                         torch.randn(k, d, generator=g, dtype=DT), torch.rand(k, generator=g, dtype=DT))
    assert isinstance(grp, ActivationGroup)
    S = [0, 2, 4]

    def edited(f, stand):
        zf, zs = torch.relu(f @ grp.E.T + grp.b), torch.relu(stand @ grp.E.T + grp.b)
        return f - (zf[:, S] - zs[:, S]) @ grp.D[S]

    def fn(x):
        f = torch.tanh(model[0](x))
        return model[2](edited(f, torch.zeros_like(f)))

    assert abs(ablate(model, grp, S, data=data).levels[0].loss - _loss(fn, data)) < 1e-12
    fbar = torch.cat([torch.tanh(model[0](x)) for x, _ in data]).mean(0)

    def mean_fn(x):
        f = torch.tanh(model[0](x))
        return model[2](edited(f, fbar.expand_as(f)))

    assert abs(ablate(model, grp, S, data=data, method="mean").levels[0].loss - _loss(mean_fn, data)) < 1e-12


def test_global_index_over_groups():
    model = _mlp()
    a = neuron_basis(model, {"1": 6})
    grp = _rank_one(model, C=3)
    cs = as_component_set([a, grp])
    assert isinstance(cs, ComponentSet) and cs.size == 9 and cs.offsets == [0, 6]
    assert cs.labels()[5:8] == ["1[5]", "rank-one[0]", "rank-one[1]"]
    assert [t.tolist() for t in cs.split([7, 0, 6])] == [[0], [0, 1]]
    imp = torch.cat([torch.ones(6, dtype=DT), grp.importance])
    assert cs.ranking("most_important") == torch.sort(-imp, stable=True).indices.tolist()
    assert cs.hooks == ("1", "2")
    with pytest.raises(SelectionError, match="out of range"):
        cs.split([9])


@pytest.mark.refuses("components used with a model they were not built for (other widths, or a missing "
                     "parameter a component group names)",
                     "ModelMismatchError names the missing, extra and reshaped parameters")
def test_one_check_model_for_every_decomposition():
    model, data = _mlp(), _data()
    other = _mlp(hidden=5)
    cb = curvature_basis(model, data[:1], "2.weight", kind="ggn")
    decomps: list[ComponentModel] = [neuron_basis(model, {"1": 6}), cb, decompose(model, cb),
                                     decompose(model, neuron_basis(model, {"1": 6})),
                                     ComponentSet((_rank_one(model),), model_signature(model))]
    for dec in decomps:
        dec.check_model(model)
        with pytest.raises(ModelMismatchError, match="different model"):
            dec.check_model(other)
    # a group names a parameter the model lacks
    bad = ComponentSet((RankOne("3", torch.zeros(3, 1, dtype=DT), torch.zeros(1, 6, dtype=DT), torch.ones(1),
                                parameters={"3.weight": (3, 6)}),))
    with pytest.raises(ModelMismatchError, match="'3.weight'"):
        bad.check_model(model)
    with pytest.raises(ModelMismatchError, match="different models"):
        as_component_set([neuron_basis(model, {"1": 6}), neuron_basis(other, {"1": 5})])


def test_curvature_basis_is_ablated_directly_like_its_components():
    model, data = _mlp(), _data()
    cb = curvature_basis(model, data[:1], "2", kind="ggn")
    S = [0, 4, 7]
    direct = ablate(model, cb, S, data=data).levels[0].loss
    via = ablate(model, decompose(model, cb), S, data=data).levels[0].loss
    V = cb.eigenvectors[:, S]
    ps = WeightComponents(cb.names, cb.shapes, cb.eigenvectors, cb.eigenvalues)
    assert direct == via == ablate(model, ps, S, data=data).levels[0].loss
    theta = torch.cat([model[2].weight.detach().reshape(-1), model[2].bias.detach()])
    cut = theta - V @ (V.T @ theta)
    W, b = cut[:18].reshape(3, 6), cut[18:]
    assert abs(direct - _loss(lambda x: torch.tanh(model[0](x)) @ W.T + b, data)) < 1e-12
    with pytest.raises(TypeError, match="not an activation Basis"):
        cb.as_basis()
    assert neuron_basis(model, {"1": 6}).as_basis().layers == ("1",)


@pytest.mark.refuses("a weight group whose parameters lie outside the module it names",
                     "mean/resample ablation puts the removed contribution back at that module's output, "
                     "so its weights must be inside it")
def test_weight_group_parameters_must_live_in_its_module():
    model, data = _mlp(), _data()
    grp = _rank_one(model)
    stray = RankOne("0", grp.U, grp.V, grp.importance, parameters={"2.weight": (3, 6)})
    with pytest.raises(SelectionError, match="not inside its module"):
        ablate(model, stray, [0], data=data, method="mean")
