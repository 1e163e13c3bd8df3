"""The ``mlops`` command: every ``python -m pipelines`` command plus ``mlops demo`` (which drives Airflow)."""

from __future__ import annotations

import sys
from datetime import date
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


def _add_land(sub: Any) -> None:
    land = sub.add_parser(
        "land",
        help="land the 2013 demo files of some days in the configured lake's landing zone (the arrival sensor "
        "of <usecase>_ingest then starts ingestion)",
    )
    land.add_argument("--usecase", default="flight_delay")
    land.add_argument("--date", required=True, type=date.fromisoformat, help="first day, YYYY-MM-DD (2013)")
    land.add_argument("--days", type=int, default=1, help="number of days from --date (default 1)")


def _add_commands(sub: Any) -> None:
    _add_demo(sub)
    _add_land(sub)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("demo", "land"):
        import argparse

        parser = argparse.ArgumentParser(prog="mlops")
        _add_commands(parser.add_subparsers(dest="command", required=True))
        args = parser.parse_args(argv)
        if args.command == "land":
            from mlops_airflow.demo import land_demo_days

            for uri in land_demo_days(args.usecase, args.date, args.days):
                print(uri)
            return 0
        from mlops_airflow.demo import run_demo

        return run_demo(args.usecase, months=args.months, fresh=not args.keep, runner_name=args.runner)
    return pipelines_main(argv, extend=_add_commands)


if __name__ == "__main__":
    raise SystemExit(main())
