"""Airflow side of the platform: the task factory that turns a pipelines step into an Airflow task, the landing
arrival sensor, and the demo driver. Airflow puts this ``plugins/`` folder on ``sys.path``; the project's
editable install does the same for tests and the ``mlops`` command."""
