"""``python -m mlops_cli ...``: the ``mlops`` command."""

from mlops_cli.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
