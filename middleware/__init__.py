"""A small, dependency-free `(ctx, next)` middleware chain engine (sync and async).

```pycon
>>> from middleware import Chain
>>> def shout(ctx, next):
...     ctx["text"] = ctx["text"].upper()
...     return next(ctx)
>>> Chain([shout]).run({"text": "hi"})
{'text': 'HI'}

```
"""

from ._loop import run_sync
from .chain import Chain, Middleware, Terminal, compose, is_async_callable
from .errors import ChainError, add_note, middleware_name

__all__ = [
    "Chain",
    "ChainError",
    "Middleware",
    "Terminal",
    "add_note",
    "compose",
    "is_async_callable",
    "middleware_name",
    "run_sync",
]
