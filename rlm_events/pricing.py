"""Prices for models LiteLLM does not price: [`register_prices()`][rlm_events.pricing.register_prices], so that a run's
cost is known and a dollar cap
(`Budget(max_cost_usd=...)`) can hold.

DSPy records each LM call's `cost` as its client priced it: LiteLLM's model-cost map (DSPy 3.1 to 3.3, and 3.4's
`engine="litellm"`) or DSPy's own copy of that map (3.4's default engine). A model neither knows (a fine-tune, a
local server, a new release) is recorded with `cost=None`: its calls are *unpriced* and the run's cost is unknown
(`Usage.cost_known`). [`register_prices()`][rlm_events.pricing.register_prices] gives such a model a price in both maps,
through LiteLLM's own
registration (`litellm.register_model`), so DSPy's history then carries a real `cost` for its calls.

**Process-wide.** LiteLLM's and DSPy's maps are process-global: a registration prices the model for every LM, run and
thread of the process from then on (as LiteLLM's own `register_model` does). It is idempotent: registering the same
prices again changes nothing; new prices for a model replace its old ones (a later registration wins). A model either
map already prices gets the given input and output prices (its other figures, e.g. context window, are kept).

Prompt tokens a provider reports as read from (or written to) its prompt cache are priced at the full input price,
unless the model's map entry already gives them a price: an upper bound, so a dollar cap never under-counts.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from ._patch import register_dspy_prices

PER_MILLION = 1_000_000
_LOCK = threading.Lock()
_REGISTERED: dict[str, tuple[float, float]] = {}


def _providers() -> frozenset[str] | None:
    """The providers LiteLLM knows (`None` if it cannot say: the model name is then checked for its form only)."""
    try:
        import litellm
    except ImportError:  # DSPy 3.4's own engine runs without LiteLLM
        return None
    names = getattr(litellm, "provider_list", None)
    if not names:
        return None
    return frozenset(str(getattr(name, "value", name)) for name in names)


def _checked(model: Any, price: Any, providers: frozenset[str] | None) -> tuple[float, float]:
    """`price` as `(input, output)` floats, or a `ValueError` naming the entry."""
    entry = f"register_prices: {model!r}"
    if not isinstance(model, str) or "/" not in model or any(not part.strip() for part in model.split("/", 1)):
        raise ValueError(
            f"{entry}: a model is named 'provider/model' as given to dspy.LM (e.g. 'openai/my-model'), got {model!r}"
        )
    if model != model.strip() or any(c.isspace() for c in model):
        raise ValueError(f"{entry}: a model name has no whitespace")
    provider = model.split("/", 1)[0]
    if providers is not None and provider not in providers:
        raise ValueError(f"{entry}: LiteLLM knows no provider {provider!r} (e.g. 'openai', 'hosted_vllm', 'azure')")
    if isinstance(price, (str, bytes)) or not isinstance(price, Sequence) or len(price) != 2:
        raise ValueError(f"{entry}: the price is (input, output) USD per million tokens, got {price!r}")
    checked = []
    for kind, value in zip(("input", "output"), price, strict=True):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ValueError(f"{entry}: the {kind} price must be a number >= 0 (USD per million tokens), got {value!r}")
        checked.append(float(value))
    return checked[0], checked[1]


def _entry(provider: str, price: tuple[float, float], known: Mapping[str, Any] | None) -> dict[str, Any]:
    """The model-cost-map entry (LiteLLM's format, per token) giving `price`."""
    per_input, per_output = price[0] / PER_MILLION, price[1] / PER_MILLION
    entry: dict[str, Any] = {
        "input_cost_per_token": per_input,
        "output_cost_per_token": per_output,
        "litellm_provider": provider,
        "mode": "chat",
    }
    for cache_key in ("cache_read_input_token_cost", "cache_creation_input_token_cost"):
        if not known or cache_key not in known:
            entry[cache_key] = per_input  # an upper bound: a dollar cap never under-counts cached prompt tokens
    return entry


def register_prices(prices: Mapping[str, Sequence[float]]) -> None:
    """Price models for this process: `{"provider/model": (input_usd, output_usd)}`, USD per million tokens.

    `register_prices({"openai/my-model": (0.5, 1.5)})` makes every later call of `dspy.LM("openai/my-model", ...)`
    record a `cost` (in DSPy's history, and so in every figure rlm-events reports) of
    `(prompt_tokens * 0.5 + completion_tokens * 1.5) / 1e6` dollars. Model names are those given to `dspy.LM`.

    Process-wide and idempotent (see the module). Raises `TypeError` if `prices` is not a mapping, and
    `ValueError` naming the entry for a model that is not `provider/model` with a provider LiteLLM knows, or a
    price that is not two numbers >= 0; nothing is registered then.
    """
    if not isinstance(prices, Mapping):
        raise TypeError(f"register_prices: prices map 'provider/model' to (input, output) USD, got {prices!r}")
    providers = _providers()
    checked = {model: _checked(model, price, providers) for model, price in prices.items()}
    with _LOCK:
        new = {model: price for model, price in checked.items() if _REGISTERED.get(model) != price}
        if not new:
            return
        try:
            import litellm
        except ImportError:
            litellm = None  # type: ignore[assignment]
        for model, price in new.items():
            provider = model.split("/", 1)[0]
            if litellm is not None:
                bare = litellm.model_cost.get(model.split("/", 1)[1]) or {}
                known = litellm.model_cost.get(model) or (bare if bare.get("litellm_provider") == provider else None)
                litellm.register_model({model: _entry(provider, price, known)})
            register_dspy_prices(model, lambda known, p=provider, c=price: _entry(p, c, known))  # type: ignore[misc]
            _REGISTERED[model] = price


def registered_prices() -> dict[str, tuple[float, float]]:
    """The prices [`register_prices()`][rlm_events.pricing.register_prices] gave in this process:
    `{model: (input, output)}` USD per million."""
    with _LOCK:
        return dict(_REGISTERED)


def response_cost(response: Any) -> float | None:
    """What LiteLLM's own cost function (`litellm.completion_cost`) prices `response` at, or `None` where it cannot
    (a model no map prices, a response without usage).

    The meter uses it for a streamed response LiteLLM assembled (`stream_chunk_builder`) that carries the provider's
    usage but no `response_cost`: some LiteLLM releases (1.83 seen, with DSPy 3.1) never price assembled streams, so
    DSPy records `cost=None` for a call the provider billed at a known price.
    """
    try:
        import litellm

        cost = litellm.completion_cost(completion_response=response)
    except Exception:  # unpriced, or not a response LiteLLM can read: the call stays unpriced
        return None
    return float(cost) if isinstance(cost, (int, float)) and not isinstance(cost, bool) else None


__all__ = ["register_prices", "registered_prices", "response_cost"]
