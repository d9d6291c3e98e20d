"""Command line: ``python -m rlm_events demo`` and ``python -m rlm_events view TRACE.jsonl``."""

from __future__ import annotations

import argparse
import sys
import webbrowser
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m rlm_events", description="rlm-events: guard, steer, meter and observe dspy.RLM's loop."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo",
        help="run an instrumented dspy.RLM on a scripted LM, print each stage and write a JSONL trace",
        description="Count TODO/FIXME lines in a bundled text with a real dspy.RLM: code guard, budget, progress, "
        "one line per stage, and a JSONL trace to view with 'python -m rlm_events view'.",
    )
    demo.add_argument("--model", help="use a real LM through DSPy (e.g. openai/gpt-4o-mini) instead of the script")
    demo.add_argument("--trace", default="rlm-trace.jsonl", metavar="PATH", help="where to write the JSONL trace")
    demo.add_argument(
        "--mlflow",
        action="store_true",
        help="also record the call as an MLflow trace (mlflow.dspy.autolog() and MlflowTap), for 'mlflow ui'",
    )
    demo.add_argument(
        "--tracking-uri",
        metavar="URI",
        help="the MLflow tracking store for --mlflow (default: sqlite:///mlruns.db in the working directory)",
    )
    view = commands.add_parser(
        "view",
        help="render a JSONL trace as one self-contained HTML page",
        description="Render a JSONL trace written by rlm_events.trace.JsonlTrace as one HTML file (no network).",
    )
    view.add_argument("trace", metavar="TRACE.jsonl", help="the trace to render")
    view.add_argument("-o", "--output", metavar="OUT.html", help="where to write the page (default: TRACE.html)")
    view.add_argument("--open", action="store_true", help="open the page in the default browser")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "demo":
        from .demo import DEFAULT_MLFLOW_URI, run_demo

        if args.tracking_uri and not args.mlflow:
            print("--tracking-uri is for --mlflow", file=sys.stderr)
            return 2
        try:
            run_demo(
                model=args.model,
                trace_path=args.trace,
                mlflow_uri=(args.tracking_uri or DEFAULT_MLFLOW_URI) if args.mlflow else None,
            )
        except Exception as exc:
            print(f"demo failed: {type(exc).__name__}: {exc}\nthe trace {args.trace} records the call", file=sys.stderr)
            return 1
        return 0
    from .trace.viewer import write_html

    source = Path(args.trace)
    if not source.is_file():
        print(f"no such trace file: {source}", file=sys.stderr)
        return 2
    try:
        page = write_html(source, args.output)
    except ValueError as exc:
        print(f"cannot render {source}: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {page}")
    if args.open:
        webbrowser.open(page.resolve().as_uri())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
