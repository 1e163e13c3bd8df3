"""Write synthetic feature rows that carry their labels as the features step writes them: the features table
without the label, and the labels table (the keys, the date, the label and when it became known) beside it."""

from __future__ import annotations

from typing import Any

import pandas as pd

from pipelines.config import OUTCOME_KNOWN_AT, UseCase
from pipelines.lake import DATE, LATEST, Commit, Lake, features_table, labels_table


def write_features_and_labels(
    lake: Lake,
    usecase: UseCase,
    frame: pd.DataFrame,
    *,
    facts: dict[str, Any] | None = None,
    read_version: Any = LATEST,
) -> Commit:
    """Commit ``frame`` (features plus ``target.column`` and ``outcome_known_at``) to the features table without
    the label columns, and its labelled rows to the labels table (a day without labels is left empty there);
    return the features commit."""
    label = usecase.target.column
    keys = [k for k in usecase.features.keys if k != DATE]
    commit = lake.write_partitions(
        features_table(usecase.name),
        frame.drop(columns=[label, OUTCOME_KNOWN_AT]),
        read_version=read_version,
        facts=facts,
    )
    # like the features step: the extent the train DAG's form proposes its newest date from
    lake.record_extent(features_table(usecase.name), set(frame[DATE].astype(str)), commit.version)
    labelled = frame.loc[frame[label].notna(), [*keys, DATE, label, OUTCOME_KNOWN_AT]]
    lake.write_partitions(
        labels_table(usecase.name),
        labelled,
        read_version=LATEST,
        empty_dates=sorted(set(frame[DATE].astype(str))),
    )
    return commit
