"""The old name of :mod:`pipelines.usecase_checks` (static checks of a use case file), kept only while
``plugins/mlops_airflow/demo.py`` imports ``require_valid`` from here; delete it once that import names
``pipelines.usecase_checks`` (tests/test_layout.py lists it as the one alias allowed)."""

from pipelines.usecase_checks import require_valid as require_valid

__all__ = ["require_valid"]
