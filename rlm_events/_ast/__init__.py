"""Reading generated code without running it: shared by every part of rlm-events that reads the LM's code.

Its API (everything else in this package is an implementation detail):

* parsing: `parse()` (the tree, or `None`), `converted()` (any AST conversion, safe to run at once), `AST_LOCK`
  (held around every source/AST/code conversion and traceback formatting);
* names: `bound_names()`, `assigned_names()`, `class_members()`, `base_name()`,
  `walk_local()`, `escapes()`;
* the bounded evaluator: `Evaluator` over plain data (`plain()` copies REPL values into it,
  `Unknown` is what it cannot know, `needs_of()` what an unknown part needs), with one set of
  `Limits` (`LIMITS` by default) for every evaluation.

Modules: `parse`, `names`, `values`, `limits`, `scope` (name resolution), `operations` (the modelled
operations), `expressions`, `statements` (`Evaluator`).
"""

from __future__ import annotations

from .limits import LIMITS, Limits
from .names import assigned_names, base_name, bound_names, class_members, escapes, walk_local
from .parse import AST_LOCK, converted, parse
from .statements import Evaluator
from .values import UNKNOWN, Opaque, Ref, Unknown, needs_of, plain

__all__ = [
    "AST_LOCK",
    "LIMITS",
    "UNKNOWN",
    "Evaluator",
    "Limits",
    "Opaque",
    "Ref",
    "Unknown",
    "assigned_names",
    "base_name",
    "bound_names",
    "class_members",
    "converted",
    "escapes",
    "needs_of",
    "parse",
    "plain",
    "walk_local",
]
