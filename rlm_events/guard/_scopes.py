"""Which binding each name of the code refers to, scope by scope, as Python resolves it: which names are local to
each function, lambda and comprehension, as the tree shows them (`_namespaces`) or, where the tree cannot tell,
Python's own `symtable` (this module then maps the syntax tree's scopes onto its tables); it answers, for one use
of a name, whether it can only mean a variable of a function (`function_scope()`), and, for a use looked up in
the module's namespace, whether the code has certainly bound it before (`_certain.certainly_bound()`, from the
statement index kept here): a binding in a branch, a loop, another function or a `del` does not count, since the
use may then fall through to the built-ins or a module left in the REPL.

Where the tree and the tables cannot be matched one to one (two scopes of the same name on one line), the scopes
concerned are treated as the module's namespace: the guard then resolves their names more strictly, never less.
"""

from __future__ import annotations

import ast
import symtable
from collections import defaultdict
from collections.abc import Callable, Iterator
from itertools import repeat

from ._bindings import BINDING_NODES
from ._certain import BINDING_STATEMENTS, bound_names
from ._namespaces import COMPREHENSIONS, FUNCTION_SCOPES, HANDLERS, SPECIAL_NAMES, Namespaces, mangled

_FUNCTIONS = FUNCTION_SCOPES
_COMPREHENSIONS = COMPREHENSIONS
_SCOPES = (*_FUNCTIONS, ast.ClassDef, *_COMPREHENSIONS)
_BLOCKS = (ast.Module, ast.stmt, ast.excepthandler, ast.match_case)  # what can hold a block of statements
_TABLE_NAMES = {ast.ListComp: "listcomp", ast.SetComp: "setcomp", ast.DictComp: "dictcomp", ast.GeneratorExp: "genexpr"}


def _table_name(node: ast.AST) -> str:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return node.name
    if isinstance(node, ast.Lambda):
        return "lambda"
    return _TABLE_NAMES.get(type(node), "?")


def _outer_parts(node: ast.AST) -> Iterator[ast.AST]:
    """The parts of the scope-making `node` that are evaluated in the enclosing scope."""
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
        if not isinstance(node, ast.Lambda):
            yield from node.decorator_list
            if node.returns is not None:
                yield node.returns
            arguments = [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs]
            arguments += [a for a in (node.args.vararg, node.args.kwarg) if a is not None]
            yield from (a.annotation for a in arguments if a.annotation is not None)
        yield from node.args.defaults
        yield from (d for d in node.args.kw_defaults if d is not None)
    elif isinstance(node, ast.ClassDef):
        yield from node.decorator_list
        yield from node.bases
        yield from node.keywords
    elif isinstance(node, _COMPREHENSIONS):
        yield node.generators[0].iter
    yield from getattr(node, "type_params", ())  # PEP 695 (3.12+): checked as the enclosing scope's


def child_nodes(node: ast.AST) -> list[ast.AST]:
    """`ast.iter_child_nodes(node)` as a list, in the same order, without the operator and load/store markers
    (shared singletons that no rule reads): the guard's hottest loop, so each node type's fields are sorted out
    once (`_layout()`)."""
    children: list[ast.AST] = []
    for field in _layout(type(node))[0]:
        value = getattr(node, field, None)
        if type(value) is list:
            children.extend([item for item in value if item is not None])  # (Dict.keys holds None for **x)
        elif value is not None:
            children.append(value)
    return children


# Fields that never hold a node worth visiting: names, flags, constants, and the operator and context markers.
_SCALAR_FIELDS = frozenset(
    {"ctx", "op", "ops", "id", "attr", "arg", "name", "asname", "module", "level", "kind", "type_comment"}
    | {"conversion", "is_async", "simple", "tag", "rest", "kwd_attrs", "lineno"}
)
_MAY_HOLD_NONE = frozenset({ast.Dict, ast.arguments})  # Dict.keys (for **x), arguments.kw_defaults hold None
_NO_CHILDREN: list[ast.AST] = []  # the children of every leaf (shared: never changed)
# node type -> (fields that hold nodes, fields that hold a block of statements, whether it makes a scope)
_LAYOUTS: dict[type, tuple[tuple[str, ...], tuple[str, ...], bool]] = {}


def _layout(cls: type) -> tuple[tuple[str, ...], tuple[str, ...], bool]:
    found = _LAYOUTS.get(cls)
    if found is None:
        fields: tuple[str, ...] = getattr(cls, "_fields", ())
        if cls in (ast.Constant, ast.MatchSingleton, ast.Global, ast.Nonlocal):  # constants; lists of names
            nodes: tuple[str, ...] = ()
        else:
            nodes = tuple(f for f in fields if f not in _SCALAR_FIELDS)
        blocks = tuple(f for f in ("body", "orelse", "finalbody") if f in fields) if issubclass(cls, _BLOCKS) else ()
        found = _LAYOUTS[cls] = (nodes, blocks, issubclass(cls, _SCOPES))
    return found


class Scopes:
    """The scopes of one module: for every node, the scope node it is evaluated in (the module is `tree`), and the
    symbol table of each scope that could be matched."""

    def __init__(self, tree: ast.Module) -> None:
        self.tree = tree
        self.nodes: list[ast.AST] = []  # every node, parents before children
        self.parents: dict[ast.AST, ast.AST] = {}
        # where each statement is: (its parent, the block holding it, its index there)
        # (filled in on first use, by `index_blocks()`: most checks never ask)
        self.position: dict[ast.stmt, tuple[ast.AST, list[ast.stmt], int]] = {}
        self.binders: dict[str, list[ast.stmt]] = defaultdict(list)  # statements that certainly bind a name
        self._block_holders: list[tuple[ast.AST, tuple[str, ...]]] | None = []  # None once indexed
        self.scope_of: dict[ast.AST, ast.AST] = {}
        self.parent_scope: dict[ast.AST, ast.AST] = {}
        self.tables: dict[ast.AST, symtable.SymbolTable] = {}
        self.children: dict[ast.AST, list[ast.AST]] = defaultdict(list)
        self.child_nodes: dict[ast.AST, list[ast.AST]] = {}  # each node's children, as `child_nodes()` lists them
        self.by_type: dict[type, list[ast.AST]] = defaultdict(list)  # the nodes of each type, in `nodes` order
        self._first_binders: dict[str, dict[int, int]] = {}
        self.binding_nodes: list[ast.AST] = []  # the nodes `bindings_of()` reads, in `nodes` order
        self.namespaces = Namespaces()  # what each scope binds, as far as the tree tells
        self.matched: dict[ast.AST, str | None] = {}  # scopes matched to a table -> the class whose names it mangles
        self.by_tree = False  # whether `use_tree()` (not `use_symtable()`) was called
        self._assign(tree, tree)
        self.namespaces.settle(self.parents)

    @property
    def needs_symtable(self) -> bool:
        """Whether the tree alone cannot say what `symtable` would: then `use_symtable()` must be called before
        names are resolved; else `use_tree()`."""
        return self.namespaces.needs_symtable

    def use_symtable(self, table: symtable.SymbolTable) -> None:
        """Resolve names with Python's symbol table of the code."""
        self.tables[self.tree] = table
        self._match(self.tree, table)

    def use_tree(self) -> None:
        """Resolve names with the bindings read off the tree (when `needs_symtable` is false)."""
        self.matched[self.tree] = None
        self._match_tree(self.tree, None)
        self.by_tree = True

    def module_names(self) -> set[str]:
        """The names the module's namespace binds (its symbol table's local names)."""
        if self.tables:
            return {s.get_name() for s in self.tables[self.tree].get_symbols() if s.is_local()}
        return set(self.namespaces.bound.get(self.tree, ()))

    def _assign(self, node: ast.AST, scope: ast.AST) -> None:
        # The guard's hottest loop: child_nodes(), _layout() and the namespaces' bookkeeping inlined, the maps bound
        # to locals; leaves (names, constants: half the nodes) take the short way. (A scope's parts evaluated outside
        # it are pushed twice, inside and outside: the later visit, outside, sets their scope.)
        nodes, parents, kids, by_type, scope_of = (
            self.nodes,
            self.parents,
            self.child_nodes,
            self.by_type,
            self.scope_of,
        )
        layouts = _LAYOUTS
        namespaces = self.namespaces
        name_type, load_type, special, handlers, leaf = ast.Name, ast.Load, SPECIAL_NAMES, HANDLERS, _NO_CHILDREN
        binding, binding_types, del_type = self.binding_nodes, BINDING_NODES, ast.Del
        may_hold_none = _MAY_HOLD_NONE
        holders = self._block_holders
        assert holders is not None
        stack = [(node, scope)]
        pop, push = stack.pop, stack.extend
        while stack:
            current, where = pop()
            kind = type(current)
            nodes.append(current)
            by_type[kind].append(current)
            scope_of[current] = where
            if kind is name_type:
                if current.id in special:  # type: ignore[attr-defined]
                    namespaces.needs_symtable = True
                if type(current.ctx) is not load_type:  # type: ignore[attr-defined]
                    namespaces.bind_name(current, where)  # type: ignore[arg-type]
                    if type(current.ctx) is del_type:  # type: ignore[attr-defined]
                        binding.append(current)
                kids[current] = leaf
                continue
            if kind in binding_types:
                binding.append(current)
            handler = handlers.get(kind)
            if handler is not None:
                handler(namespaces, current, where)
            layout = layouts.get(kind) or _layout(kind)
            if not layout[0]:
                kids[current] = leaf
                continue
            children: list[ast.AST] = []
            for field in layout[0]:
                value = getattr(current, field, None)
                if type(value) is list:
                    children += value
                elif value is not None:
                    children.append(value)
            if kind in may_hold_none:
                children = [child for child in children if child is not None]
            kids[current] = children
            for child in children:
                parents[child] = current
            if layout[1]:
                holders.append((current, layout[1]))
            if layout[2]:
                self.parent_scope[current] = where
                self.children[where].append(current)
                outer = list(_outer_parts(current))
                outer_ids = {id(o) for o in outer}
                push([(o, where) for o in outer])
                push([(c, current) for c in children if id(c) not in outer_ids])
            else:
                push(zip(children, repeat(where)))

    def index_blocks(self) -> dict[ast.stmt, tuple[ast.AST, list[ast.stmt], int]]:
        """`position` (and `binders`), filled in the first time they are needed."""
        if self._block_holders is not None:
            for node, fields in self._block_holders:
                self._blocks(node, fields)
            self._block_holders = None
        return self.position

    def _blocks(self, node: ast.AST, fields: tuple[str, ...]) -> None:
        for field in fields:
            block = getattr(node, field, None)
            if isinstance(block, list):
                for index, statement in enumerate(block):
                    self.position[statement] = (node, block, index)
                    if type(statement) in BINDING_STATEMENTS:
                        for name in bound_names(statement):
                            self.binders[name].append(statement)

    def _match(self, scope: ast.AST, table: symtable.SymbolTable) -> None:
        by_key: dict[tuple[str, int], list[symtable.SymbolTable]] = defaultdict(list)
        for child in table.get_children():
            by_key[(child.get_name(), child.get_lineno())].append(child)
        nodes: dict[tuple[str, int], list[ast.AST]] = defaultdict(list)
        for node in self.children.get(scope, ()):
            nodes[(_table_name(node), getattr(node, "lineno", 0))].append(node)
        for key, found in nodes.items():
            tables = by_key.get(key, [])
            if len(found) == 1 and len(tables) == 1:
                self.tables[found[0]] = tables[0]
                self._match(found[0], tables[0])
            # otherwise unmatched: that scope and the ones inside it resolve their names in the module's namespace

    def _match_tree(self, scope: ast.AST, class_name: str | None) -> None:
        """`_match()` for the scopes read off the tree: a scope is matched unless a sibling has its name and line."""
        keys: dict[tuple[str, int], list[ast.AST]] = defaultdict(list)
        for node in self.children.get(scope, ()):
            keys[(_table_name(node), getattr(node, "lineno", 0))].append(node)
        for found in keys.values():
            if len(found) == 1:
                node = found[0]
                inner = node.name if isinstance(node, ast.ClassDef) else class_name
                self.matched[node] = inner
                self._match_tree(node, inner)

    def _tree_function_scope(self, node: ast.Name) -> ast.AST | None:
        scope = self.scope_of.get(node)
        if scope is None or scope is self.tree or scope not in self.matched:
            return None
        name = node.id
        if name[:2] == "__" and mangled(name, self.matched[scope]):
            return None  # `symtable` knows it by its mangled name only
        bound = self.namespaces.bound
        if name in bound.get(scope, ()):
            return None if isinstance(scope, ast.ClassDef) else scope
        # free (a variable of an enclosing function) or global
        outer = self.parent_scope.get(scope)
        while outer is not None and outer is not self.tree:
            if outer not in self.matched:
                return None
            if not isinstance(outer, ast.ClassDef) and name in bound.get(outer, ()):
                return outer
            outer = self.parent_scope.get(outer)
        return None

    def _tree_class_local(self, node: ast.Name) -> bool:
        scope = self.scope_of.get(node)
        return (
            isinstance(scope, ast.ClassDef)
            and scope in self.matched
            and not mangled(node.id, self.matched[scope])
            and node.id in self.namespaces.bound.get(scope, ())
        )

    def lookups(self) -> tuple[Callable[[ast.Name], ast.AST | None], Callable[[ast.Name], bool]]:
        """`function_scope` and `class_local`, as bound methods of the way names are resolved (the tree's or the
        symbol table's), for callers that ask many times. (Not kept on the instance: that would make a reference
        cycle, and every check's tree garbage only the cyclic collector frees.)"""
        if self.by_tree:
            return self._tree_function_scope, self._tree_class_local
        return self._table_function_scope, self._table_class_local

    def function_scope(self, node: ast.Name) -> ast.AST | None:
        """The function, lambda or comprehension whose variable the use `node` is (local there, or a free variable
        of an enclosing one), or `None` when the name is looked up in a class body or the module's namespace."""
        return self.lookups()[0](node)

    def class_local(self, node: ast.Name) -> bool:
        """Whether the use `node` is in a class body that binds its name (looked up there before the module)."""
        return self.lookups()[1](node)

    def _table_function_scope(self, node: ast.Name) -> ast.AST | None:
        scope = self.scope_of.get(node)
        if scope is None:
            return None
        table = self.tables.get(scope)
        if table is None:
            return None
        symbol = _lookup(table, node.id)
        if symbol is None:
            return None
        if table.get_type() == "function" and symbol.is_local() and not symbol.is_global():
            return scope
        if not symbol.is_free():
            return None
        outer = self.parent_scope.get(scope)
        while outer is not None and outer is not self.tree:
            outer_table = self.tables.get(outer)
            if outer_table is None:
                return None
            if outer_table.get_type() == "function":
                found = _lookup(outer_table, node.id)
                if found is not None and found.is_local() and not found.is_global():
                    return outer
            outer = self.parent_scope.get(outer)
        return None

    def first_binders(self, name: str) -> dict[int, int]:
        """For each block (by id) holding a statement that certainly binds `name`: the first such statement's index."""
        found = self._first_binders.get(name)
        if found is None:
            found = self._first_binders[name] = {}
            self.index_blocks()
            for statement in self.binders.get(name, ()):
                _, block, index = self.position[statement]
                if index < found.get(id(block), index + 1):
                    found[id(block)] = index
        return found

    def stored_names(self, node: ast.AST) -> set[str]:
        """The names stored or deleted anywhere in `node` (as `ast.walk(node)` finds them, from the children lists)."""
        found: set[str] = set()
        kids, stack = self.child_nodes, [node]
        while stack:
            current = stack.pop()
            if type(current) is ast.Name:
                if type(current.ctx) is not ast.Load:
                    found.add(current.id)
            else:
                children = kids.get(current)
                stack.extend(children if children is not None else child_nodes(current))
        return found

    def of_type(self, *types: type) -> list[ast.AST]:
        """The nodes of these exact types (each type's in tree order, one type after the other)."""
        return [node for cls in types for node in self.by_type.get(cls, ())]

    def _table_class_local(self, node: ast.Name) -> bool:
        scope = self.scope_of.get(node)
        table = self.tables.get(scope) if scope is not None else None
        symbol = _lookup(table, node.id) if table is not None and table.get_type() == "class" else None
        return symbol is not None and symbol.is_local()


def _lookup(table: symtable.SymbolTable, name: str) -> symtable.Symbol | None:
    try:
        return table.lookup(name)
    except KeyError:
        return None


__all__ = ["Scopes", "child_nodes"]
