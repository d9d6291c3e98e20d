"""Command line: `python -m rlm_events demo`, `python -m rlm_events view TRACE.jsonl` and
`python -m rlm_events durable ...`."""

from __future__ import annotations

import argparse
import math
import os
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
    demo.add_argument(
        "--model",
        help="use a real LM through DSPy's LiteLLM client instead of the script (e.g. openai/gpt-4o-mini, or "
        "openai/<name> with --api-base); DSPy's cache is off, so every run makes its calls",
    )
    demo.add_argument(
        "--api-base",
        metavar="URL",
        help="the base URL of an OpenAI-compatible server for --model openai/<name> (e.g. http://127.0.0.1:8000/v1 "
        "for vLLM, http://127.0.0.1:11434/v1 for Ollama)",
    )
    demo.add_argument(
        "--api-key",
        metavar="KEY",
        help="the API key for --model (default: the one LiteLLM finds in the provider's variable, e.g. "
        "OPENAI_API_KEY; with --api-base and no OPENAI_API_KEY set, a placeholder, as local servers need none)",
    )
    demo.add_argument(
        "--price",
        nargs=2,
        type=float,
        metavar=("INPUT", "OUTPUT"),
        help="the --model's price in USD per million input and output tokens, for a model LiteLLM does not price: "
        "the budget then keeps its dollar cap (without a price it has none, and the cost is reported unknown)",
    )
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
    from .durable.cli import add_parser as add_durable

    add_durable(commands)
    return parser


def _demo_usage_error(args: argparse.Namespace) -> str | None:
    """What is wrong with the demo's options, if anything."""
    if args.tracking_uri and not args.mlflow:
        return "--tracking-uri is for --mlflow"
    for option, value in (("--api-base", args.api_base), ("--api-key", args.api_key), ("--price", args.price)):
        if value is not None and not args.model:
            return f"{option} is for --model (e.g. --model openai/<name> --api-base http://127.0.0.1:8000/v1)"
    if args.api_base is not None and not args.api_base.startswith(("http://", "https://")):
        return f"--api-base must be an http(s) URL such as http://127.0.0.1:8000/v1, got {args.api_base!r}"
    if args.price is not None and any(not math.isfinite(p) or p < 0 for p in args.price):
        return f"--price takes two numbers >= 0 (USD per million input and output tokens), got {args.price}"
    return None


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "demo":
        # The program, not the library, chooses LiteLLM's bundled prices (the demo runs offline).
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        from .demo import DEFAULT_MLFLOW_URI, run_demo
        from .errors import UnknownCostError

        problem = _demo_usage_error(args)
        if problem:
            print(problem, file=sys.stderr)
            return 2
        try:
            run_demo(
                model=args.model,
                trace_path=args.trace,
                mlflow_uri=(args.tracking_uri or DEFAULT_MLFLOW_URI) if args.mlflow else None,
                api_base=args.api_base,
                api_key=args.api_key,
                price=tuple(args.price) if args.price is not None else None,
            )
        except Exception as exc:
            # The first line says what went wrong (DSPy's parse errors go on with the LM's whole answer, which the
            # progress line above and the trace already show).
            reason = (str(exc).strip().splitlines() or [""])[0]
            if isinstance(exc, UnknownCostError):
                reason += f"\nfor the demo, give {args.model}'s price: --price INPUT OUTPUT (USD per million tokens)"
            print(
                f"demo failed: {type(exc).__name__}: {reason}\n"
                f"the trace {args.trace} records the call: python -m rlm_events view {args.trace} --open",
                file=sys.stderr,
            )
            return 1
        return 0
    if args.command == "durable":
        from .durable.cli import run

        return run(args)
    from .trace.viewer import write_html

    source = Path(args.trace)
    if not source.is_file():
        print(f"no such trace file: {source}", file=sys.stderr)
        return 2
    try:
        page = write_html(source, args.output)
    except Exception as exc:  # one line, never a traceback: TraceError, OSError, or a bug of ours
        reason = (str(exc).strip().splitlines() or [""])[0]
        print(f"cannot render {source}: {type(exc).__name__}: {reason}", file=sys.stderr)
        return 1
    print(f"wrote {page}")
    if args.open:
        webbrowser.open(page.resolve().as_uri())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
