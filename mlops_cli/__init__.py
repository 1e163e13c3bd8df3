"""The ``mlops`` command (:mod:`mlops_cli.cli`): every ``python -m pipelines`` command, plus the commands that
drive Airflow: ``mlops demo`` and ``mlops run`` (:mod:`mlops_cli.replay`, with the demo data of
:mod:`mlops_cli.demo_data` and the runners of :mod:`mlops_cli.runners`), ``mlops land`` and ``mlops ui``
(:mod:`mlops_cli.ui`). It imports ``mlops_airflow`` and Airflow; ``mlops_airflow`` (imported by Airflow's plugin
manager in every component) never imports it. ``python -m mlops_cli`` is the same command."""
