"""Property tests: any chain of sync/async middleware with short-circuits behaves like a simple reference model."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from middleware import Chain


@dataclass
class Ctx:
    log: list[str] = field(default_factory=list)
    value: int = 0


@dataclass(frozen=True)
class Spec:
    is_async: bool
    short_circuit: bool
    delta: int


def build(i: int, spec: Spec):
    def before(ctx: Ctx) -> bool:
        ctx.log.append(f"{i}>")
        ctx.value += spec.delta
        if spec.short_circuit:
            ctx.log.append(f"{i}x")
        return spec.short_circuit

    if spec.is_async:

        async def amw(ctx: Ctx, next):
            if before(ctx):
                return ctx
            await asyncio.sleep(0)
            ctx = await next(ctx)
            ctx.log.append(f"<{i}")
            return ctx

        return amw

    def mw(ctx: Ctx, next):
        if before(ctx):
            return ctx
        ctx = next(ctx)
        ctx.log.append(f"<{i}")
        return ctx

    return mw


def reference(specs: list[Spec]) -> Ctx:
    ctx, entered = Ctx(), []
    for i, spec in enumerate(specs):
        ctx.log.append(f"{i}>")
        ctx.value += spec.delta
        if spec.short_circuit:
            ctx.log.append(f"{i}x")
            break
        entered.append(i)
    else:
        ctx.log.append("T")
    ctx.log.extend(f"<{i}" for i in reversed(entered))
    return ctx


def terminal(ctx: Ctx) -> Ctx:
    ctx.log.append("T")
    return ctx


specs_strategy = st.lists(
    st.builds(Spec, st.booleans(), st.sampled_from([False, False, False, True]), st.integers(-5, 5)),
    max_size=8,
)


@settings(max_examples=60, deadline=None)
@given(specs_strategy)
def test_sync_caller_matches_the_reference_model(specs):
    chain = Chain([build(i, s) for i, s in enumerate(specs)], label="prop")
    assert chain.run(Ctx(), terminal) == reference(specs)


@settings(max_examples=60, deadline=None)
@given(specs_strategy)
def test_async_caller_matches_the_reference_model(specs):
    chain = Chain([build(i, s) for i, s in enumerate(specs)], label="prop")
    assert asyncio.run(chain.arun(Ctx(), terminal)) == reference(specs)
