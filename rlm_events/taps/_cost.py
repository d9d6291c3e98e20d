"""The cost attributes the OpenTelemetry and MLflow taps put on a call's root span: one rule for both.

* `rlm.cost_usd`: the run's cost in US dollars, only while it is known; never `0` for an unknown cost.
* `rlm.cost_known = False`, with `rlm.unpriced_lm_calls` / `rlm.unmetered_lm_calls` (those that are not 0), once
  a call could not be priced (a model no price map prices) or metered (usage not visible): `rlm.cost_usd` is absent.
* `rlm.cached_lm_calls` and `rlm.saved_cost_usd`, once DSPy's cache answered calls: they made no request, cost
  nothing and are not in the token counts; `rlm.saved_cost_usd` is what they cost when first paid for.
"""

from __future__ import annotations

from typing import Any

from ..lm_usage import Usage


def cost_attributes(usage: Usage) -> dict[str, Any]:
    """The `rlm.*` cost and cache attributes of a call's root span, from its [`Usage`][rlm_events.lm_usage.Usage]."""
    attributes: dict[str, Any] = {}
    if usage.cost_known:
        attributes["rlm.cost_usd"] = round(usage.cost_usd, 8)
    else:
        attributes["rlm.cost_known"] = False
        attributes.update({f"rlm.{name}": count for name, count in usage.cost_gaps().items()})
    if usage.cached_lm_calls:
        attributes["rlm.cached_lm_calls"] = usage.cached_lm_calls
        attributes["rlm.saved_cost_usd"] = round(usage.saved_cost_usd, 8)
    return attributes
