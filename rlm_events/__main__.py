"""Command line: ``python -m rlm_events demo``."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rlm_events", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="run an instrumented dspy.RLM on a scripted LM and print each stage")
    demo.add_argument("--model", help="use a real LM through DSPy (e.g. openai/gpt-4o-mini) instead of the script")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from .demo import run_demo

        run_demo(sys.stdout, model=args.model)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
