"""DSPy 3.4's own model-price map: where its default engine (lm15) prices a call, beside LiteLLM's map. Checked
against DSPy 3.4.0 and 3.4.1 (earlier releases have none)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any


def register_dspy_prices(model: str, entry: Callable[[Mapping[str, Any] | None], dict[str, Any]]) -> bool:
    """Give `model` (`provider/model`) the prices `entry(known)` returns in DSPy's own model-metadata map, where
    DSPy has one (3.4+; `known` is the model's entry there, if any); whether it has. DSPy reads that map, loaded once
    per process, on every call it prices (`dspy.clients.costs`), looking `provider/model` up: a key added here
    prices the next call. Earlier releases price through LiteLLM only."""
    try:
        from dspy.clients import model_metadata
    except ImportError:
        return False
    load = getattr(model_metadata, "_load", None)
    if load is None:
        return False
    table = load()
    if not isinstance(table, dict):
        return False
    known = table.get(model)
    table[model] = {**(known or {}), **entry(known if isinstance(known, dict) else None)}
    return True


def dspy_model_info(model: str) -> Mapping[str, Any]:
    """DSPy's own model-metadata entry (3.4+) for `model` (`provider/model`), as its default engine looks it up
    (`model_metadata.model_info(provider, model)`); empty where DSPy has no such map or no entry."""
    try:
        from dspy.clients import model_metadata
    except ImportError:
        return {}
    info = getattr(model_metadata, "model_info", None)
    if info is None or "/" not in model:
        return {}
    provider, name = model.split("/", 1)
    try:
        entry = info(provider, name)
    except Exception:  # a map DSPy cannot read: no entry, as DSPy would then price the call
        return {}
    return entry if isinstance(entry, dict) else {}
