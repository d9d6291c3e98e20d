"""CodeGuard's presets on the corpus in tests/guard_corpus: how many escapes each refuses, how much ordinary analysis
code each lets through, per category. Run with ``-s`` to see the table.

Targets (issue 21): strict blocks >= 99% and default >= 97% of escapes, including the ones written with the guard's
source in hand (escapes_informed.py); both allow >= 98% of ordinary code.
"""

from __future__ import annotations

import sys
from collections import defaultdict

import pytest
from guard_corpus.escapes import ESCAPES as GENERAL_ESCAPES
from guard_corpus.escapes_informed import DATA_ESCAPES, INFORMED
from guard_corpus.ordinary import ORDINARY as GENERAL_ORDINARY
from guard_corpus.ordinary_informed import DATA_ORDINARY, ORDINARY_INFORMED

from rlm_events.builtins import GuardPolicy

ESCAPES = GENERAL_ESCAPES + INFORMED  # the informed ones were written with the guard's source in hand
ORDINARY = GENERAL_ORDINARY + ORDINARY_INFORMED
TARGETS = {"strict": (0.99, 0.98), "default": (0.97, 0.98)}  # (escapes blocked, ordinary allowed)


def measure(policy: GuardPolicy) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
    """Per category: [refused, total] for the escapes, [allowed, total] for the ordinary snippets."""
    escapes: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    ordinary: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for category, code in ESCAPES:
        escapes[category][0] += bool(policy.check(code))
        escapes[category][1] += 1
    for category, code in ORDINARY:
        ordinary[category][0] += not policy.check(code)
        ordinary[category][1] += 1
    return escapes, ordinary


def rate(counts: dict[str, list[int]]) -> float:
    return sum(c[0] for c in counts.values()) / sum(c[1] for c in counts.values())


def table(name: str, escapes: dict[str, list[int]], ordinary: dict[str, list[int]]) -> str:
    lines = [
        f"{name}: blocks {rate(escapes):.1%} of {len(ESCAPES)} escapes, allows {rate(ordinary):.1%} of "
        f"{len(ORDINARY)} ordinary snippets"
    ]
    lines += [f"  escape   {cat:<15} {n}/{total}" for cat, (n, total) in escapes.items()]
    lines += [f"  ordinary {cat:<15} {n}/{total}" for cat, (n, total) in ordinary.items()]
    return "\n".join(lines)


def test_the_corpus_has_every_class_of_escape_and_of_ordinary_code():
    assert len(ESCAPES) >= 150 and len(ORDINARY) >= 40
    assert {c for c, _ in ESCAPES} >= {
        "shell", "files", "network", "internals", "dynamic-code", "importers", "reexports", "c-twins",
        "smuggled-names", "obfuscated", "parser-skew",
    }  # fmt: skip
    assert len({code for _, code in ESCAPES}) == len(ESCAPES)
    assert len({code for _, code in ORDINARY}) == len(ORDINARY)


@pytest.mark.parametrize("name", ["strict", "default"])
def test_preset_meets_its_targets_on_the_corpus(name):
    escapes, ordinary = measure(GuardPolicy.named(name))
    report = table(name, escapes, ordinary)
    print(report)
    blocked, allowed = TARGETS[name]
    assert rate(escapes) >= blocked, report
    assert rate(ordinary) >= allowed, report


def test_strict_refuses_at_least_what_default_refuses():
    default, strict = GuardPolicy.default(), GuardPolicy.strict()
    for _, code in ESCAPES + ORDINARY:
        if default.check(code):
            assert strict.check(code), code


@pytest.mark.parametrize("name", ["strict", "default"])
def test_every_refusal_says_what_to_do_instead(name):
    policy = GuardPolicy.named(name)
    for _, code in ESCAPES:
        for violation in policy.check(code):
            assert violation.hint, (code, violation)


@pytest.mark.parametrize(
    "policy",
    [GuardPolicy.data_analysis(), GuardPolicy.named("data"), GuardPolicy.default().allow(modules={"numpy", "pandas"})],
)
def test_numpy_and_pandas_without_their_file_pickle_and_network_io(policy):
    for module in ("numpy", "pandas"):  # the guard reads their public members from the installed packages
        pytest.importorskip(module)
    passed = [code for _, code in DATA_ESCAPES if not policy.check(code)]
    refused = {code: policy.check(code) for _, code in DATA_ORDINARY if policy.check(code)}
    assert passed == [] and len(DATA_ESCAPES) >= 10
    assert refused == {}, refused


@pytest.mark.parametrize("name", ["strict", "default"])
def test_every_informed_escape_is_refused(name):
    """Each class of hole found by reading the guard's source is closed as a class: every variant is refused."""
    policy = GuardPolicy.named(name)
    assert [(category, code) for category, code in INFORMED if not policy.check(code)] == []


def test_refusals_list_the_modules_a_policy_adds():
    from rlm_events.guard import refusal

    policy = GuardPolicy.default().allow(modules={"numpy", "pandas"})
    text = refusal(policy.check("import os"), policy)
    assert "numpy" in text and "pandas" in text and "json" in text
    assert "numpy" not in refusal(GuardPolicy.default().check("import os"), GuardPolicy.default())
    assert "import os.path" in policy.check("import os")[0].hint


@pytest.mark.skipif(sys.version_info < (3, 12), reason="PEP 695 syntax needs Python 3.12 to parse")
@pytest.mark.parametrize(
    "code",
    [
        "def g[T: __import__('os').system('id')]():\n    pass",
        "class C[T: (eval,)]:\n    pass",
        "type A[T: open('/tmp/x', 'w')] = list[T]",
    ],
)
def test_type_parameter_bounds_are_checked(code):
    for name in ("strict", "default"):
        assert GuardPolicy.named(name).check(code), code
