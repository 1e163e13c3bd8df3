"""No DAG: the import error of the invalid use case files, so that a bad file fails only its own DAGs.

The lifecycle DAG files (ingest, features, train, score, maintenance) leave out a use case whose file does not
validate; this file then fails to import with every invalid file and its problems, which Airflow shows as an
import error (UI banner, `airflow dags list-import-errors`). The other use cases' DAGs load. `mlops validate`
prints the same problems, and more, before anything is deployed.
"""

from mlops_airflow.wiring import config_errors
from pipelines.config import ConfigError

_errors = config_errors()
if _errors:
    raise ConfigError(
        f"{len(_errors)} use case file(s) invalid; their DAGs are not loaded (the other use cases' DAGs are). "
        "Fix them (mlops validate lists every problem):\n\n" + "\n\n".join(_errors.values())
    )
