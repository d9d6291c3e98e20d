"""The latency benchmark's scenarios (see ``benchmarks/latency.py``): the tools and sub-LM it calls, which sleep
fixed times and answer from their arguments only, and the code each scenario's main LM plays."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

TOOL_MS = {"lookup_price": 60, "check_stock": 120, "lookup_detail": 90, "fetch_seed": 60}
CHAIN_MS = {"step_a": 30, "step_b": 90, "step_c": 60}
SUB_LM_MS = 150
X = "\u00d7"  # the multiplication sign of the table's ratios
PRICES = {"apple": 1.5, "pear": 2.5, "plum": 0.5, "fig": 1.2, "kiwi": 3.0}


def sleep_ms(ms: float) -> None:
    time.sleep(ms / 1000)


# -- tools: fixed sleeps, outputs that depend only on the arguments -------------------------------------------


def lookup_price(item: str) -> float:
    """The price of one item."""
    sleep_ms(TOOL_MS["lookup_price"])
    return PRICES.get(item, 9.99)


def check_stock(warehouse: str) -> dict:
    """Stock levels of a warehouse."""
    sleep_ms(TOOL_MS["check_stock"])
    return {"warehouse": warehouse, "units": 40 + len(warehouse)}


def lookup_detail(item: str) -> str:
    """A description of one item."""
    sleep_ms(TOOL_MS["lookup_detail"])
    return f"{item}: {len(item)} letters, grade {'ABC'[len(item) % 3]}"


SEEDS = {"value": 7}
SEED_LOCK = threading.Lock()


def fetch_seed() -> int:
    """A value from outside (not pure: never called ahead)."""
    sleep_ms(TOOL_MS["fetch_seed"])
    with SEED_LOCK:
        return SEEDS["value"]


def step_a(x: int) -> int:
    """First step of the chain."""
    sleep_ms(CHAIN_MS["step_a"])
    return x * 3 + 1


def step_b(x: int) -> int:
    """Second step of the chain."""
    sleep_ms(CHAIN_MS["step_b"])
    return x * x % 1009


def step_c(x: int) -> int:
    """Third step of the chain."""
    sleep_ms(CHAIN_MS["step_c"])
    return x + 11


def sub_lm_answer(prompt: str) -> str:
    sleep_ms(SUB_LM_MS)
    words = prompt.split()
    return f"[{len(prompt)}] " + " ".join(w.strip(".,:").lower() for w in words[-4:])


# -- scenarios ------------------------------------------------------------------------------------------------


@dataclass
class Scenario:
    name: str
    steps: list[str]
    tools: list[Callable[..., Any]]
    pure: list[Callable[..., Any]]
    inputs: dict[str, Any]
    critical_path_ms: float
    """The tool and sub-LM time of the run if every independent call of each iteration ran at once."""
    target: float
    expected: str


TEXT = " ".join(f"Sentence {i} is about topic {i % 7} and item {i * 13 % 29}." for i in range(120))

SCENARIOS = [
    Scenario(
        name="reference",
        steps=[
            "prices = {}\n"
            'for item in ["apple", "pear", "plum", "fig", "kiwi"]:\n'
            "    prices[item] = lookup_price(item=item)\n"
            'stock = check_stock(warehouse="north")\n'
            "print(prices, stock)",
            "cheap = sorted(name for name, price in prices.items() if price < 2.0)\n"
            "details = {name: lookup_detail(item=name) for name in cheap}\n"
            "print(details)",
            "notes = []\n"
            "for name in cheap:\n"
            '    notes.append(llm_query(f"Write one line about {name}: {details[name]}"))\n'
            'ratings = llm_query_batched([f"Rate {name} from 1 to 5" for name in cheap])\n'
            "print(notes, ratings)",
            'SUBMIT(answer=" / ".join(notes) + " | " + ", ".join(ratings) + f" | {stock[\'units\']} units")',
        ],
        tools=[lookup_price, check_stock, lookup_detail],
        pure=[lookup_price, check_stock, lookup_detail],
        inputs={"text": "prices of fruit"},
        # it. 1: 5 x 60 ms and 120 ms at once -> 120; it. 2: 3 x 90 at once -> 90; it. 3: 4 sub-LM calls -> 150
        critical_path_ms=TOOL_MS["check_stock"] + TOOL_MS["lookup_detail"] + SUB_LM_MS,
        target=2.0,
        expected="",
    ),
    Scenario(
        name="fan-out",
        steps=[
            "chunks = [text[i:i + 480] for i in range(0, len(text), 480)]\n"
            "print(len(chunks), [len(c) for c in chunks])",
            "summaries = []\n"
            "for chunk in chunks:\n"
            '    summaries.append(llm_query(f"Summarize in five words: {chunk}"))\n'
            "print(summaries)",
            'SUBMIT(answer=" | ".join(summaries))',
        ],
        tools=[],
        pure=[],
        inputs={"text": TEXT[: 480 * 10]},
        critical_path_ms=SUB_LM_MS,  # 10 sub-LM calls at once
        target=4.0,
        expected="",
    ),
    Scenario(
        name="past-unknown",
        steps=[
            "def relabel(name):\n    global label\n    label = name\nprint('defined')",
            "import time\nnow = time.perf_counter\nt0 = now()\nlabel = 'apple'\nprices = {}\n"
            'for item in ["apple", "pear", "plum"]:\n'
            "    prices[item] = lookup_price(item=item)\n"
            "relabel('kiwi')\n"  # a function of the code the planner cannot follow: it rebinds `label`
            'note = llm_query(f"One line about {label}")\n'  # planned with 'apple': a misprediction, wasted
            'stock = check_stock(warehouse="north")\n'  # planned past the unknown call: claimed
            "elapsed = round(now() - t0, 3)\nprint(prices, note, stock)",
            "SUBMIT(answer=f\"{note} | {stock['units']} units\")",
        ],
        tools=[lookup_price, check_stock],
        pure=[lookup_price, check_stock],
        inputs={"text": "labels"},
        # it. 2: 3 x 60 ms at once, then the sub-LM call on the label relabel() set; check_stock alongside
        critical_path_ms=TOOL_MS["lookup_price"] + SUB_LM_MS,
        target=1.5,
        expected="",
    ),
    Scenario(
        name="dependent",
        steps=[
            "seed = fetch_seed()\na = step_a(x=seed)\nb = step_b(x=a)\nc = step_c(x=b)\nprint(seed, a, b, c)",
            "d = step_a(x=fetch_seed() + c)\ne = step_b(x=d)\n"
            'note = llm_query(f"Explain the number {e}")\nprint(d, e, note)',
            'SUBMIT(answer=f"{c} {e} {note}")',
        ],
        tools=[fetch_seed, step_a, step_b, step_c],
        pure=[step_a, step_b, step_c],
        inputs={"text": "a chain"},
        critical_path_ms=(
            TOOL_MS["fetch_seed"]
            + sum(CHAIN_MS.values())
            + TOOL_MS["fetch_seed"]
            + CHAIN_MS["step_a"]
            + CHAIN_MS["step_b"]
            + SUB_LM_MS
        ),
        target=0.97,
        expected="",
    ),
]
