"""`python -m rlm_events durable list|show|decide|resume|serve`: durable runs from the command line."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import sys
from typing import Any

from .control import decide, open_store
from .decisions import Approve, Decision, Edit, Reject
from .durable import Durable
from .errors import DurableError


def add_parser(commands: Any) -> None:
    """Add the `durable` command to the program's subcommands."""
    what = "list, show, decide and resume durable runs; serve a page to decide suspended steps"
    durable = commands.add_parser("durable", help=what, description=f"Durable runs in a store: {what}.")
    actions = durable.add_subparsers(dest="durable_command", required=True)

    def with_store(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        parser.add_argument("--store", required=True, help="a SQLite file, or a postgresql:// URL")
        return parser

    listing = with_store(actions.add_parser("list", help="the runs, newest first"))
    listing.add_argument("--status", choices=["running", "suspended", "done", "failed"])
    with_store(actions.add_parser("show", help="one run: its record as JSON")).add_argument("run_id")
    deciding = with_store(actions.add_parser("decide", help="decide the step a suspended run waits on"))
    deciding.add_argument("run_id")
    choice = deciding.add_mutually_exclusive_group(required=True)
    choice.add_argument("--approve", action="store_true", help="run the step as it is")
    choice.add_argument("--reject", metavar="REASON", help="do not run it; the LM reads REASON")
    choice.add_argument("--code", metavar="CODE", help="run this code instead")
    choice.add_argument("--kwargs", metavar="JSON", help="call the tool with these keyword arguments")
    resuming = with_store(actions.add_parser("resume", help="continue a run in this process"))
    resuming.add_argument("run_id")
    resuming.add_argument(
        "--rlm", required=True, metavar="MODULE:FACTORY", help="a function returning the RLM to run it with"
    )
    resuming.add_argument("--wait", type=float, default=0.0, help="seconds to wait for another worker's lease")
    serving = with_store(actions.add_parser("serve", help="a local page to decide suspended steps"))
    serving.add_argument("--host", default="127.0.0.1")
    serving.add_argument("--port", type=int, default=8765)


def _decision(args: argparse.Namespace) -> Decision:
    if args.approve:
        return Approve()
    if args.reject is not None:
        return Reject(args.reject)
    if args.code is not None:
        return Edit(code=args.code)
    kwargs = json.loads(args.kwargs)
    if not isinstance(kwargs, dict):
        raise ValueError("--kwargs must be a JSON object")
    return Edit(kwargs=kwargs)


def _rlm(spec: str) -> Any:
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"--rlm must be MODULE:FACTORY, got {spec!r}")
    factory = getattr(importlib.import_module(module_name), attribute)
    return factory()


def _durable_of(rlm: Any, store: str) -> Durable:
    import rlm_events

    events = rlm_events.instrumentation_of(rlm) or rlm_events.instrument(rlm)
    found = next((mw for mw in events.plan.chains[rlm_events.Stage.RUN_START] if isinstance(mw, Durable)), None)
    return found if found is not None else Durable(store).install(events)


def run(args: argparse.Namespace) -> int:
    """Carry out `python -m rlm_events durable ...`; the exit status."""
    try:
        store = open_store(args.store)
        command = args.durable_command
        if command == "list":
            for stored in store.runs(args.status):
                pending = stored.pending or {}
                waits = f" waits on {pending.get('kind')} of iteration {int(pending.get('iteration') or 0) + 1}"
                link = f" ({stored.relation} of {stored.parent})" if stored.parent else ""
                shown = waits if stored.status == "suspended" and stored.decision is None else ""
                print(f"{stored.run_id}  {stored.status:9}  {stored.iteration} iterations{link}{shown}")
        elif command == "show":
            stored = store.load(args.run_id)
            record = {k: v for k, v in vars(stored).items() if k != "steps"}
            record["steps"] = [vars(step) for step in stored.steps]
            print(json.dumps(record, indent=1, ensure_ascii=False, default=repr))
        elif command == "decide":
            decide(store, args.run_id, _decision(args))
            print(f"decided run {args.run_id}: a worker resumes it (python -m rlm_events durable resume ...)")
        elif command == "resume":
            rlm = _rlm(args.rlm)
            prediction = _durable_of(rlm, args.store).resume(args.run_id, rlm=rlm, wait=args.wait)
            fields = {k: v for k, v in prediction.items() if k != "trajectory"}
            print(json.dumps(fields, ensure_ascii=False, default=repr))
        else:  # serve
            from .web import DecisionServer

            server = DecisionServer(store, host=args.host, port=args.port)
            print(f"serving pending decisions on http://{args.host}:{args.port}/ (Ctrl-C stops)")
            with contextlib.suppress(KeyboardInterrupt):
                server.serve_forever()
    except (DurableError, ValueError, ImportError, AttributeError) as exc:
        print(f"durable {args.durable_command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


__all__ = ["add_parser", "run"]
