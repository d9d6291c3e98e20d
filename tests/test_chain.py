"""The generic (ctx, next) engine, on its own (no DSPy)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from middleware import Chain, ChainError, compose


class Ctx:
    def __init__(self) -> None:
        self.log: list[str] = []


def recorder(name: str):
    def mw(ctx: Ctx, next):
        ctx.log.append(f"{name}>")
        ctx = next(ctx)
        ctx.log.append(f"<{name}")
        return ctx

    mw.__qualname__ = name
    return mw


def arecorder(name: str):
    async def mw(ctx: Ctx, next):
        ctx.log.append(f"{name}>")
        await asyncio.sleep(0)
        ctx = await next(ctx)
        ctx.log.append(f"<{name}")
        return ctx

    mw.__qualname__ = name
    return mw


ONION = ["a>", "b>", "c>", "<c", "<b", "<a"]


def test_sync_chain_from_sync_caller_runs_in_registration_order():
    ctx = compose(recorder("a"), recorder("b"), recorder("c")).run(Ctx())
    assert ctx.log == ONION


def test_async_middleware_from_sync_caller_runs_on_a_private_loop():
    seen = []

    async def where(ctx, next):
        seen.append(threading.current_thread().name)
        return await next(ctx)

    ctx = Chain([recorder("a"), arecorder("b"), where, recorder("c")]).run(Ctx())
    assert ctx.log == ONION
    assert seen and seen[0] != threading.current_thread().name


def test_sync_and_async_middleware_from_async_caller_share_the_callers_loop():
    async def main():
        loop = asyncio.get_running_loop()
        loops = []

        async def check(ctx, next):
            loops.append(asyncio.get_running_loop())
            return await next(ctx)

        ctx = await Chain([recorder("a"), check, arecorder("b"), recorder("c")]).arun(Ctx())
        return ctx, loops, loop

    ctx, loops, loop = asyncio.run(main())
    assert ctx.log == ["a>", "b>", "c>", "<c", "<b", "<a"]
    assert loops == [loop]


def test_sync_chain_from_async_caller():
    ctx = asyncio.run(compose(recorder("a"), recorder("b"), recorder("c")).arun(Ctx()))
    assert ctx.log == ONION


def test_sync_caller_inside_a_running_loop_does_not_nest_it():
    async def main():
        return Chain([arecorder("a")]).run(Ctx())  # a sync call made from async code

    assert asyncio.run(main()).log == ["a>", "<a"]


def test_short_circuit_skips_inner_middleware_and_terminal():
    def stop(ctx, next):
        ctx.log.append("stop")
        return ctx

    ran = []
    ctx = Chain([recorder("a"), stop, recorder("c")]).run(Ctx(), terminal=lambda c: ran.append(1) or c)
    assert ctx.log == ["a>", "stop", "<a"]
    assert ran == []


def test_terminal_runs_innermost():
    ctx = Chain([recorder("a")]).run(Ctx(), terminal=lambda c: (c.log.append("T"), c)[1])
    assert ctx.log == ["a>", "T", "<a"]


def test_next_called_twice_is_an_error_naming_the_middleware():
    def twice(ctx, next):
        next(ctx)
        return next(ctx)

    with pytest.raises(ChainError, match=r"twice.*called next\(\) more than once"):
        Chain([twice], label="pre_execution").run(Ctx())


def test_async_next_called_twice_is_an_error():
    async def twice(ctx, next):
        await next(ctx)
        return await next(ctx)

    with pytest.raises(ChainError, match="more than once"):
        asyncio.run(Chain([twice]).arun(Ctx()))


def test_returning_something_else_than_the_context_is_a_type_error_naming_it():
    def forgetful(ctx, next):
        next(ctx)

    with pytest.raises(TypeError, match=r"forgetful at stage 'post_execution' returned NoneType"):
        Chain([forgetful], label="post_execution").run(Ctx())


def test_exceptions_propagate_unchanged_with_a_note_naming_middleware_and_stage():
    class Boom(Exception):
        pass

    def boom(ctx, next):
        raise Boom("no")

    with pytest.raises(Boom) as info:
        Chain([recorder("outer"), boom], label="tool_call").run(Ctx())
    notes = info.value.__notes__
    assert len(notes) == 1 and "boom" in notes[0] and "'tool_call'" in notes[0]


def test_errors_from_the_terminal_get_no_middleware_note():
    def terminal(ctx):
        raise KeyError("real work failed")

    with pytest.raises(KeyError) as info:
        Chain([recorder("a")]).run(Ctx(), terminal=terminal)
    assert not getattr(info.value, "__notes__", [])


def test_registration_rejects_non_callables_and_wrong_arity():
    with pytest.raises(TypeError, match="must be callable"):
        Chain([42])  # type: ignore[list-item]
    with pytest.raises(TypeError, match=r"must accept exactly \(ctx, next\)"):
        Chain([lambda ctx: ctx])


def test_chains_are_immutable():
    base = Chain([recorder("a")])
    longer = base.append(recorder("b"))
    assert len(base) == 1 and len(longer) == 2
    assert len(longer.remove(next(iter(longer)))) == 1
