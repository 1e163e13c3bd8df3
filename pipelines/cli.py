"""Command line: ``python -m pipelines <step> --usecase NAME --date YYYY-MM-DD [...]`` and ``mlops ...``.

A step prints progress on stderr and its result as one JSON object on the last line of stdout; it exits 0 on
success, 1 when the step failed on its input (the JSON line still carries counts and report locations), and
2 on a configuration or usage error.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from collections.abc import Callable
from datetime import date
from typing import Any

from pipelines.config import ConfigError, load_profile, load_usecase
from pipelines.context import StepContext, StepFailed, write_line
from pipelines.environ import cap_threads
from pipelines.lake import Lake, LakeError
from pipelines.steps import STEPS
from pipelines.usecase_checks import require_valid


def _iso_date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date as YYYY-MM-DD, got {text!r}") from None


def build_parser(extend: Callable[[Any], None] | None = None) -> argparse.ArgumentParser:
    """The command-line parser; ``extend(subparsers)`` adds commands that live outside pipelines/ (the demo)."""
    parser = argparse.ArgumentParser(prog="mlops", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module_name in STEPS.items():
        module = importlib.import_module(module_name)
        step = sub.add_parser(name, help=(module.__doc__ or "").strip().split("\n")[0])
        step.add_argument("--usecase", required=True, help="use case name (config/usecases/<name>.yaml)")
        step.add_argument("--date", required=True, type=_iso_date, help="logical date, YYYY-MM-DD")
        module.add_arguments(step)

    if extend is not None:
        extend(sub)
    validate = sub.add_parser(
        "validate", help="check use case files before anything runs: every problem with file, field and fix"
    )
    validate.add_argument("usecases", nargs="*", metavar="USECASE", help="use case names (default: all)")
    validate.add_argument(
        "--against-lake",
        action="store_true",
        help="also say where the configured lake shows rows arriving later than the use case declares",
    )
    models = sub.add_parser("models", help="model versions in the MLflow registry")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    listing = models_sub.add_parser("list", help="versions with their gate results; the champion is marked")
    listing.add_argument("usecase", nargs="?", help="use case name (or --usecase)")
    listing.add_argument("--usecase", dest="usecase_option", help="use case name")
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    show = models_sub.add_parser(
        "show",
        help="one version: metrics, gate decision, approval, lineage (data versions, windows), alias moves",
    )
    show.add_argument("version", type=int, help="model version number in the registry")
    promote = models_sub.add_parser(
        "promote",
        help="make a version the champion (only one whose gate passed; --force --reason overrides, recorded)",
    )
    promote.add_argument("version", type=int, help="model version number in the registry")
    promote.add_argument(
        "--force", action="store_true", help="promote although its gate did not pass (needs --reason)"
    )
    promote.add_argument("--reason", default=None, help="why (recorded; required with --force)")
    rollback = models_sub.add_parser(
        "rollback", help="move the champion back to the previous champion in one alias move (recorded)"
    )
    rollback.add_argument("--reason", required=True, help="why (recorded)")
    history = models_sub.add_parser(
        "history", help="every move of the champion alias in order (gate promotions and manual moves alike)"
    )
    for command in (show, promote, rollback, history):
        command.add_argument("--usecase", required=True, help="use case name (config/usecases/<name>.yaml)")
        command.add_argument("--json", action="store_true", help="print JSON")
    for command in (promote, rollback):
        command.add_argument(
            "--by",
            default=None,
            help="who moves the alias (recorded; default: $MLOPS_USER, else the OS user)",
        )

    lineage = sub.add_parser(
        "lineage", help="the lake versions, config, code and image a registered model version was trained on"
    )
    lineage.add_argument("usecase")
    lineage.add_argument("version", type=int, help="model version number in the registry")
    lineage.add_argument(
        "--reload",
        action="store_true",
        help="rebuild the training set from the recorded versions and check it is identical (exit 1 if not)",
    )
    lineage.add_argument("--json", action="store_true", help="print JSON")

    serve = sub.add_parser(
        "serve",
        help="the REST scoring service of a use case's champion (features from the online snapshot)",
        description="Scores raw records over HTTP: /v1/usecases/<usecase>/predict, MLflow's /invocations, the "
        "Open Inference Protocol (/v2), /health, /ready, /metrics, /docs.",
    )
    from pipelines.serving.server import add_arguments as add_serve_arguments

    add_serve_arguments(serve)
    capture = sub.add_parser(
        "capture",
        help="the service's captured requests (captures/<usecase>)",
        description="`mlops capture inputs`: the model inputs of captured requests, rebuilt from their request "
        "fields and the snapshot version they were answered with (serving.capture.model_inputs is off by default).",
    )
    from pipelines.serving.recapture import add_arguments as add_capture_arguments

    add_capture_arguments(capture)

    lake = sub.add_parser("lake", help="the lake's Delta tables")
    lake_sub = lake.add_subparsers(dest="lake_command", required=True)
    tables = lake_sub.add_parser("tables", help="a use case's tables: version, partitions, rows")
    tables.add_argument("usecase")
    tables.add_argument("--json", action="store_true", help="print JSON instead of a table")
    read = lake_sub.add_parser(
        "read", help="read a table through its log; print rows and content hash (JSON)"
    )
    read.add_argument("table", help="table key, e.g. raw/flight_delay/flights or features/flight_delay")
    read.add_argument(
        "--date", action="append", dest="dates", help="a partition date (repeatable; default all)"
    )
    read.add_argument("--version", type=int, default=None, help="table version (default: the latest)")
    return parser


def run_step(argv: list[str], started: float | None = None) -> dict[str, Any]:
    """Run one step in this process from its command-line arguments and return its result, with ``timings``:
    its fixed costs apart from its work (:mod:`pipelines.timings`; ``started``: the seconds the process had run
    before, its interpreter start, for a process started for this step).

    Raises :class:`StepFailed` when the step failed on its input (its result carries the timings too),
    :class:`ConfigError` on bad configuration.
    """
    from pipelines.timings import fixed_cost, step_timer

    before = {} if started is None else {"interpreter_start": started}
    with step_timer() as timer:
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.command not in STEPS:
            raise SystemExit(f"run_step runs steps only, not {args.command!r}")
        with fixed_cost("imports"):
            module = importlib.import_module(STEPS[args.command])
        with fixed_cost("config", imports_apart=True):
            profile = load_profile()
            cap_threads(profile.threads_per_task)
            usecase = load_usecase(args.usecase)
            require_valid(usecase)  # every static problem at once, before any data is read
            ctx = StepContext(usecase=usecase, day=args.date, profile=profile, lake=Lake(profile.lake_uri))
        try:
            result = module.run(ctx, args)
        except StepFailed as exc:
            exc.result = {**exc.result, "timings": timer.result(before)}
            raise
        timings = timer.result(before)
    return {
        "step": args.command,
        "usecase": args.usecase,
        "date": args.date.isoformat(),
        **result,
        "timings": timings,
    }


def main(argv: list[str] | None = None, extend: Callable[[Any], None] | None = None) -> int:
    """Run a step (``python -m pipelines <step> ...``) or a command (``models ...``); returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    from pipelines.timings import process_age

    started = process_age()  # a process started for this step: its interpreter start and first imports so far
    logging.basicConfig(
        level=os.environ.get("MLOPS_LOG_LEVEL", "INFO"),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if argv and argv[0] in STEPS:
        # the step's first word: container start overhead is measured up to this line (bench/containers.py)
        logging.getLogger("pipelines.cli").info("starting step: %s", " ".join(argv))
        try:
            result = run_step(argv, started)
        except StepFailed as exc:
            write_line(f"ERROR: {exc}", sys.stderr)
            write_line(
                json.dumps({"step": argv[0], "failed": True, "error": str(exc), **exc.result}, default=str)
            )
            return 1
        except ConfigError as exc:
            write_line(f"CONFIG ERROR: {exc}", sys.stderr)
            return 2
        write_line(json.dumps(result, default=str))
        return 0

    args = build_parser(extend).parse_args(argv)
    try:
        if args.command == "validate":
            from pipelines.usecase_checks import run_validate

            return run_validate(args.usecases, against_lake=args.against_lake)
        if args.command == "models":
            if args.models_command != "list":
                from pipelines.modeling.model_ops import main as models_main

                return models_main(args)
            from pipelines.modeling.registry import print_models

            usecase = args.usecase_option or args.usecase
            if not usecase:
                write_line("ERROR: name the use case: `mlops models list --usecase NAME`", sys.stderr)
                return 2
            print_models(usecase, as_json=args.json)
            return 0
        if args.command == "serve":
            from pipelines.serving.server import serve

            return serve(args)
        if args.command == "capture":
            from pipelines.serving.recapture import main as capture_main

            return capture_main(args)
        if args.command == "lineage":
            from pipelines.modeling.lineage import print_lineage

            return print_lineage(args.usecase, args.version, reload=args.reload, as_json=args.json)
        if args.command == "lake":
            from pipelines.lake import tables

            if args.lake_command == "tables":
                tables.print_tables(args.usecase, as_json=args.json)
            else:
                print(json.dumps(tables.read_summary(args.table, args.dates, args.version)))
            return 0
    except ConfigError as exc:
        write_line(f"CONFIG ERROR: {exc}", sys.stderr)
        return 2
    except LakeError as exc:
        write_line(f"ERROR: {exc}", sys.stderr)
        return 1
    return 2
