"""The ``mlops`` command: every ``python -m pipelines`` command plus ``mlops demo`` (which drives Airflow)."""

from __future__ import annotations

import sys
from typing import Any

from pipelines.cli import main as pipelines_main


def _add_demo(sub: Any) -> None:
    demo = sub.add_parser("demo", help="replay 2013 through the whole lifecycle, orchestrated by Airflow")
    demo.add_argument("--usecase", default="flight_delay")
    demo.add_argument(
        "--months",
        type=int,
        default=12,
        choices=range(1, 13),
        metavar="N",
        help="number of months to replay, 1-12 (default 12)",
    )
    demo.add_argument(
        "--keep",
        action="store_true",
        help="keep the previous demo state under MLOPS_HOME (default: start from a clean state)",
    )
    demo.add_argument(
        "--runner",
        choices=["airflow", "direct"],
        default="airflow",
        help="airflow: every step as an Airflow task (default); direct: the same steps without Airflow",
    )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "demo":
        import argparse

        parser = argparse.ArgumentParser(prog="mlops")
        _add_demo(parser.add_subparsers(dest="command", required=True))
        args = parser.parse_args(argv)
        from mlops_airflow.demo import run_demo

        return run_demo(args.usecase, months=args.months, fresh=not args.keep, runner_name=args.runner)
    return pipelines_main(argv, extend=_add_demo)


if __name__ == "__main__":
    raise SystemExit(main())
