"""Lifecycle steps. Each module exposes ``add_arguments(parser)`` and ``run(ctx, args) -> dict``.

Steps import nothing from Airflow; they are called by ``python -m pipelines <step>`` (see pipelines.cli), which
prints the returned dict as one JSON object on the last line of stdout.
"""

from __future__ import annotations

# step name -> module that implements it (imported lazily: a step's heavy imports stay in its own process)
STEPS: dict[str, str] = {
    "ingest": "pipelines.steps.ingest",
    "features": "pipelines.steps.features",
    "train": "pipelines.steps.train",
    "evaluate": "pipelines.steps.evaluate",
    "gate": "pipelines.steps.gate",
    "register": "pipelines.steps.register",
    "promote": "pipelines.steps.promote",
    "report": "pipelines.steps.report",
    "score": "pipelines.steps.score",
    "outcomes": "pipelines.steps.outcomes",
    "maintain": "pipelines.steps.maintain",
    "monitor": "pipelines.steps.monitor",
}

# the task kind of each step: which image runs it with task_runtime docker (docker/<kind>.Dockerfile).
# Steps that load a model need the train image, since a champion may be a Keras model.
STEP_KINDS: dict[str, str] = {
    "ingest": "base",
    "features": "spark",
    "train": "train",
    "evaluate": "train",
    "gate": "base",
    "register": "base",
    "promote": "base",
    "report": "train",  # loads the chosen candidate, which may be a Keras model
    "score": "train",
    "outcomes": "base",
    "maintain": "base",
    "monitor": "train",  # loads the champion (maybe Keras) to build its reference; Evidently is in that image
}

# steps whose work benefits from a GPU host (the task factory adds a GPU request for them when configured)
GPU_STEPS = {"train"}
