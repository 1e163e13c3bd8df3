"""The identity of a use case's features: :func:`features_config_hash`, the hash of everything in the
configuration that shapes the features (not the models or schedules).

The features step records it in the facts of every features and online snapshot partition it writes
(``config_hash``); train and register record it on every model run and version (tag ``features_config_hash``).
Batch scoring refuses a snapshot built with another one, and the scoring service refuses to answer from a
snapshot whose hash differs from its model's (pipelines.serving.service). No Spark is imported here.
"""

from __future__ import annotations

import hashlib
import json

from pipelines.config import UseCase
from pipelines.features.transforms import TRANSFORMS_VERSION, joined_sources

# the model version and run tag naming the features config hash a model was trained with
FEATURES_CONFIG_TAG = "features_config_hash"


def features_config_hash(usecase: UseCase) -> str:
    """Hash of everything in the configuration that shapes the features (not the models or schedules)."""
    payload = {
        "features": usecase.features.model_dump(mode="json"),
        "target": usecase.target.model_dump(mode="json"),
        "time": usecase.time.model_dump(mode="json"),
        "slices": usecase.evaluated_columns,
        "columns": {
            s: {c: spec.type for c, spec in usecase.sources[s].columns.items()}
            for s in input_sources(usecase)
        },
        "transforms_version": TRANSFORMS_VERSION,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def input_sources(usecase: UseCase) -> list[str]:
    """The sources the features read: the primary one, the outcome source, then the joined ones."""
    sources = [usecase.features.primary_source, usecase.outcome_source, *joined_sources(usecase.features)]
    return list(dict.fromkeys(sources))
