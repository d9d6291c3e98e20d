"""A corpus for CodeGuard: known sandbox-escape snippets and ordinary analysis snippets, each with its category.

Data only: nothing here is ever executed. ``escapes.ESCAPES`` and ``ordinary.ORDINARY`` are lists of
``(category, code)``; ``tests/test_guard_corpus.py`` measures how many of each a policy refuses.
"""
