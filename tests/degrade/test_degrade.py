"""compare_generations: identical text under an identity edit, divergence index where tokens first
differ, generation against an independent loop; per-token degradation groups; refusals."""

from __future__ import annotations

import pytest
import torch

from wdecomp.ablation import splice
from wdecomp.degrade import _position_in_word, _word_chars, compare_generations, token_class, token_degradation
from wdecomp.errors import DataError
from wdecomp.models.transformer import Transformer, TransformerConfig

VOCAB = list("abcdefghij ,.!0123\n")
ENC = {c: i for i, c in enumerate(VOCAB)}


def encode(text: str) -> list[int]:
    return [ENC[c] for c in text]


def decode(ids: list[int]) -> str:
    return "".join(VOCAB[i] for i in ids)


def _model(seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    cfg = TransformerConfig(d_vocab=len(VOCAB), d_model=16, n_layers=1, n_heads=2, context=12, init_std=0.5)
    return Transformer(cfg).double().eval()


PROMPTS = ["abc de", "j, 12", "a"]


def test_identity_edit_gives_identical_text_for_every_prompt_and_seed() -> None:
    model = _model()
    for edit in (None, ("blocks.0", lambda f: f.clone()), lambda m: splice(m, "blocks.0.mlp", lambda f: f + 0.0)):
        r = compare_generations(model, edit, PROMPTS, encode=encode, decode=decode, max_new_tokens=15,
                                seeds=(0, 1, 2))
        assert len(r.continuations) == len(PROMPTS) * 4
        assert r.identical
        assert all(c.original == c.edited and c.divergence is None for c in r.continuations)
        assert r.to_markdown().count("⟦▶") == 1  # only the legend mentions the marker


def _reference(model, prompt: str, n: int, seed: int | None, temperature: float = 1.0) -> list[int]:
    """An independent generation loop: full window each step (context 12), float64 softmax."""
    ids = encode(prompt)
    g = torch.Generator().manual_seed(seed) if seed is not None else None
    out = []
    for _ in range(n):
        logits = model(torch.tensor([ids[-12:]]))[0, -1].to(torch.float64)
        if seed is None:
            nxt = int(logits.argmax())
        else:
            nxt = int(torch.multinomial(torch.softmax(logits / temperature, -1), 1, generator=g))
        out.append(nxt)
        ids.append(nxt)
    return out


def test_destructive_edit_divergence_is_first_differing_token() -> None:
    model = _model(1)
    edit = ("blocks.0", lambda f: -2.0 * f)
    r = compare_generations(model, edit, PROMPTS, encode=encode, decode=decode, max_new_tokens=20, seeds=(0, 3))
    diverged = 0
    for c in r.continuations:
        seed = c.seed
        assert list(c.original) == _reference(model, c.prompt, 20, seed)
        with splice(model, *edit):
            assert list(c.edited) == _reference(model, c.prompt, 20, seed)
        first = next((i for i, (a, b) in enumerate(zip(c.original, c.edited)) if a != b), None)
        assert c.divergence == first
        if first is not None:
            diverged += 1
            assert c.original[:first] == c.edited[:first] and c.original[first] != c.edited[first]
            assert f"{decode(list(c.edited[:first]))}⟦▶".replace("\n", "⏎") in r.to_markdown()
    assert diverged >= 4
    html = r.to_html()
    assert html.count('class="div"') == diverged


def test_token_class_and_position_in_word() -> None:
    assert [token_class(t) for t in ["a", " ", "\n", "7", ",", "\t"]] == [
        "letter", "space", "newline", "digit", "punctuation", "space"]
    ids = torch.tensor([encode("ab cde, f")])
    inputs, targets = ids[:, :-1], ids[:, 1:]
    pos = _position_in_word(inputs, targets, _word_chars(VOCAB))
    # targets "b cde, f": b is the 2nd char of "ab"; c, d, e the 1st-3rd of "cde"; f the 1st of "f"
    assert pos.tolist() == [[1, -1, 0, 1, 2, -1, -1, 0]]


def test_token_degradation_groups_add_up_and_match_direct_means() -> None:
    model = _model(2)
    g = torch.Generator().manual_seed(0)
    seqs = torch.randint(0, len(VOCAB), (2, 5, 13), generator=g)
    data = [(s[:, :-1], s[:, 1:]) for s in seqs]
    edit = ("blocks.0", lambda f: 0.5 * f)
    rep = token_degradation(model, edit, data, vocab=VOCAB, top_inputs=3)
    assert rep.n_tokens == 2 * 5 * 12
    with torch.no_grad():
        lo = torch.cat([torch.nn.functional.cross_entropy(model(x).transpose(1, 2), y, reduction="none")
                        for x, y in data])
        with splice(model, *edit):
            le = torch.cat([torch.nn.functional.cross_entropy(model(x).transpose(1, 2), y, reduction="none")
                            for x, y in data])
    Y = torch.cat([y for _, y in data])
    for grouping, rows in rep.groups.items():
        assert sum(r.count for r in rows) == rep.n_tokens, grouping
        assert sum(r.share for r in rows) == pytest.approx(1.0, abs=1e-12)
        assert [r.increase for r in rows] == sorted((r.increase for r in rows), reverse=True)
    letters = [r for r in rep.groups["token class"] if r.group == "letter"][0]
    mask = torch.tensor([token_class(VOCAB[i]) == "letter" for i in Y.reshape(-1)]).reshape(Y.shape)
    assert letters.count == int(mask.sum())
    assert letters.increase == pytest.approx(float((le - lo)[mask].mean()), rel=1e-10)
    worst = (le - lo).mean(1)
    assert [i for i, _, _ in rep.worst_inputs] == torch.topk(worst, 3).indices.tolist()


@pytest.mark.refuses("compare_generations with an empty list of prompts",
                     "there is nothing to continue; pass at least one prompt")
def test_empty_prompt_list_refused() -> None:
    with pytest.raises(DataError, match="no prompts given"):
        compare_generations(_model(), None, [], encode=encode, decode=decode)


@pytest.mark.refuses("an empty prompt string", "a model needs at least one token to condition on")
def test_empty_prompt_refused() -> None:
    with pytest.raises(DataError, match="a prompt is empty"):
        compare_generations(_model(), None, ["ab", ""], encode=encode, decode=decode)
