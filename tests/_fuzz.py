"""Shared pieces of the file-format fuzz tests (components files, graph files): random JSON values,
every key path into a document, and one in-place damage of a document at a drawn key path."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

LEAVES = st.none() | st.booleans() | st.integers(-3, 10) | st.floats(allow_nan=True) | st.text(max_size=6)
JSON = st.recursive(LEAVES, lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=8)


def json_paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path into a JSON object (dict keys and list indices)."""
    out = [prefix] if prefix else []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += json_paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += json_paths(v, (*prefix, i))
    return out


def damage_json(doc: Any, data: Any) -> str:
    """Draw one of replace / delete / nest-50-deep at a drawn key path of ``doc`` and apply it in
    place; returns what was done."""
    what = data.draw(st.sampled_from(["replace", "delete", "nest"]))
    keypath = data.draw(st.sampled_from(json_paths(doc)))
    parent = doc
    for k in keypath[:-1]:
        parent = parent[k]
    if what == "replace":
        parent[keypath[-1]] = data.draw(JSON)
    elif what == "delete":
        del parent[keypath[-1]]
    else:
        parent[keypath[-1]] = json.loads("[" * 50 + "1" + "]" * 50)
    return what
