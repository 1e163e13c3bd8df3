"""The ``mlops`` command (``python -m mlops_cli``): every ``python -m pipelines`` command plus ``mlops demo`` and
``mlops run`` (replays that drive Airflow, :mod:`mlops_cli.replay`), ``mlops land``, ``mlops ui``
(:mod:`mlops_cli.ui`) and ``mlops backtest`` (the steps in-process, :mod:`pipelines.backtest`)."""

from __future__ import annotations

import sys
from datetime import date
from pathlib import Path
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
        help="put files into the configured lake's landing zone, atomically (the arrival sensor of "
        "<usecase>_ingest then starts ingestion); without PATH, the 2013 demo files of --date and --days",
        description="Each file (a directory: its files) must match a source's file_pattern. Without --date, an "
        "events source's rows are dated by their event_time (a file spanning several dates is split by date); "
        "a reference source needs --date. Every file is checked before anything lands.",
    )
    land.add_argument("paths", nargs="*", type=Path, metavar="PATH", help="files or directories to land")
    land.add_argument("--usecase", default="flight_delay")
    land.add_argument(
        "--date",
        type=date.fromisoformat,
        help="land every file under this date, YYYY-MM-DD (without PATH: the first demo day, in 2013)",
    )
    land.add_argument("--days", type=int, default=1, help="demo files only: number of days from --date")
    land.add_argument(
        "--arrived-at",
        metavar="TIME",
        help="when the files arrived, for a backfill of files that came earlier (ISO time, e.g. "
        "2024-01-02T06:00; without an offset it is read in the use case's time.timezone), or 'declared' for "
        "history whose arrival is unknown (its rows count from the times the use case declares). Features use "
        "only rows that had arrived by each prediction time: the default, now, makes landed history usable for "
        "predictions from now on only",
    )


def _add_run(sub: Any) -> None:
    run = sub.add_parser(
        "run",
        help="replay a period of landed files through the use case's DAGs (ingest, features, score; train on "
        "each following month's first day), like the demo",
    )
    run.add_argument("--usecase", required=True)
    run.add_argument(
        "--from", dest="first", required=True, type=date.fromisoformat, help="first day, YYYY-MM-DD"
    )
    run.add_argument("--to", dest="last", required=True, type=date.fromisoformat, help="last day, YYYY-MM-DD")
    run.add_argument(
        "--runner",
        choices=["airflow", "direct"],
        default="airflow",
        help="airflow: every step as an Airflow task (default); direct: the same steps without Airflow",
    )


def _add_ui(sub: Any) -> None:
    ui = sub.add_parser(
        "ui",
        help="the Airflow UI (airflow standalone) and the MLflow UI over the state in MLOPS_HOME; Ctrl-C stops both",
    )
    ui.add_argument("--port", type=int, default=8080, help="Airflow UI and API port (default 8080)")
    ui.add_argument("--mlflow-port", type=int, default=5000, help="MLflow UI port (default 5000)")
    ui.add_argument("--no-mlflow", action="store_true", help="start only the Airflow UI")


def _add_backtest(sub: Any) -> None:
    from pipelines.backtest import add_arguments

    backtest = sub.add_parser(
        "backtest",
        help="replay a period under retraining policies (never, monthly, drift, nightly) with the steps "
        "in-process, reusing the lake's features and labels; weekly live ROC AUC, retrainings, promotions, "
        "compute seconds as a table, a PNG plot and an HTML page",
    )
    add_arguments(backtest)


def _add_commands(sub: Any) -> None:
    _add_backtest(sub)
    _add_demo(sub)
    _add_land(sub)
    _add_run(sub)
    _add_ui(sub)


def _land(args: Any) -> int:
    from mlops_airflow.operators import patched_environ, s3_environment
    from mlops_cli.demo_data import land_demo_days
    from pipelines.config import ConfigError, load_profile, load_usecase
    from pipelines.ingest.landing import land_paths, parse_arrival
    from pipelines.lake import open_lake

    if not args.paths:
        if args.date is None:
            raise SystemExit("mlops land: give the files to land (PATH ...), or --date for the demo files")
        for uri in land_demo_days(args.usecase, args.date, args.days):
            print(uri)
        return 0
    try:
        usecase = load_usecase(args.usecase)
        arrived_at = parse_arrival(args.arrived_at, usecase.time.timezone)
        profile = load_profile()
        # S3 credentials as the tasks get them: from the Airflow connection when one is defined
        env = s3_environment(profile.s3_connection_id) if profile.lake_uri.startswith("s3://") else {}
        with patched_environ(env):
            uris = land_paths(open_lake(profile.lake_uri), usecase, args.paths, args.date, arrived_at)
    except ConfigError as exc:
        print(f"mlops land: {exc}", file=sys.stderr)
        return 2
    for uri in uris:
        print(uri)
    print(f"landed {len(uris)} file(s) for {usecase.name}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("backtest", "demo", "land", "run", "ui"):
        import argparse

        parser = argparse.ArgumentParser(prog="mlops")
        _add_commands(parser.add_subparsers(dest="command", required=True))
        args = parser.parse_args(argv)
        if args.command == "land":
            return _land(args)
        if args.command == "backtest":
            from pipelines.backtest import main as backtest_main
            from pipelines.config import ConfigError

            try:
                return backtest_main(args)
            except ConfigError as exc:
                print(f"mlops backtest: {exc}", file=sys.stderr)
                return 2
        if args.command == "ui":
            from mlops_cli.ui import run_ui

            return run_ui(args.port, None if args.no_mlflow else args.mlflow_port)
        if args.command == "run":
            from mlops_cli.replay import run_period
            from pipelines.config import ConfigError

            try:
                return run_period(args.usecase, args.first, args.last, runner_name=args.runner)
            except ConfigError as exc:
                print(f"mlops run: {exc}", file=sys.stderr)
                return 2
        from mlops_cli.replay import run_demo

        return run_demo(args.usecase, months=args.months, fresh=not args.keep, runner_name=args.runner)
    return pipelines_main(argv, extend=_add_commands)


if __name__ == "__main__":
    raise SystemExit(main())
