"""Airflow side of the platform: the task factory that turns a pipelines step into an Airflow task, the landing
arrival sensor, notifiers, pools and the DAGs' shared wiring. Airflow puts this ``plugins/`` folder on ``sys.path``
and its plugin manager imports it in every component, so it holds only what the DAGs and tasks need: the ``mlops``
command, the replay driver and the UI launcher are the top-level package ``mlops_cli``, which imports this one
(never the other way round)."""
