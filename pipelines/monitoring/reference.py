"""What a monitored window is compared with: the reference of the model version that scored it.

Built once per model version from the training set its lineage names (``pipelines.modeling.lineage``: the features and
labels versions and the window it was trained on, read back by Delta time travel) and kept in the lake beside the
monitoring table, so a nightly monitor run reads one small file instead of rebuilding it:

- a seeded sample of the rows the model was fitted on (``monitoring.reference_rows``): the reference of data drift;
- the holdout rows, which the model never saw, with its scores and the labels: the reference of the score
  distribution, the model's reference value of the primary metric, and the labelled scores the estimate is
  calibrated on until the model has enough outcomes of its own (``pipelines.monitoring.performance``).
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipelines.context import StepContext, StepFailed, progress
from pipelines.lake import DATE, LakeError, table_key

if TYPE_CHECKING:
    import pandas as pd

# bump when the stored reference changes shape: older files are then rebuilt
REFERENCE_FORMAT = 1
PART = "_part"
SCORE = "_score"


@dataclass
class Reference:
    """One model version's reference rows (``_part`` train or holdout; holdout rows with ``_score`` and the
    label) and what was derived from them."""

    version: int
    rows: pd.DataFrame
    facts: dict[str, Any]

    @property
    def train(self) -> pd.DataFrame:
        return self.rows[self.rows[PART] == "train"]

    @property
    def holdout(self) -> pd.DataFrame:
        return self.rows[self.rows[PART] == "holdout"]


def reference_key(usecase: str, version: int) -> str:
    return table_key("monitoring", usecase, "_reference", f"v{version}-f{REFERENCE_FORMAT}")


def _build(ctx: StepContext, version: int, model: Any) -> Reference:
    import pandas as pd

    from pipelines.features.model_inputs import model_columns, model_inputs
    from pipelines.modeling.lineage import model_lineage, reload_frames
    from pipelines.modeling.tracking import decision_threshold, predict_proba
    from pipelines.monitoring.performance import point_metric

    usecase = ctx.usecase
    try:
        lineage = model_lineage(usecase.name, version)
        frames, fitted = reload_frames(lineage)
    except (LakeError, StepFailed) as exc:
        raise StepFailed(
            f"the training set of model version {version} cannot be read back for the monitoring reference "
            f"({exc}); maintenance keeps the versions a registered model names: check `mlops lineage "
            f"{usecase.name} {version} --reload`"
        ) from exc
    columns = model_columns(usecase)
    extra = [c for c in dict.fromkeys([*usecase.slices, *usecase.sensitive_attributes]) if c not in columns]
    label = usecase.target.column
    sample = fitted.sample(
        n=min(len(fitted), usecase.monitoring.reference_rows), random_state=usecase.split.seed
    )
    train = sample[[c for c in [*columns, *extra, DATE] if c in sample.columns]].assign(**{PART: "train"})
    holdout = frames.holdout
    holdout_rows = holdout[[c for c in [*columns, *extra, DATE, label] if c in holdout.columns]].copy()
    holdout_rows[SCORE] = predict_proba(model, model_inputs(usecase, holdout, "monitoring reference holdout"))
    holdout_rows[PART] = "holdout"
    rows = pd.concat([train, holdout_rows], ignore_index=True)
    metric = usecase.gate.primary_metric
    y = holdout_rows[label].to_numpy(dtype="float64")
    facts: dict[str, Any] = {
        "version": version,
        "format": REFERENCE_FORMAT,
        "features_version": lineage["features_version"],
        "window": lineage["window"],
        "train_rows": len(train),
        "holdout_rows": len(holdout_rows),
        "metric": metric,
        "reference_value": point_metric(metric, y, holdout_rows[SCORE]),
    }
    if usecase.task == "classification":
        facts["reference_roc_auc"] = point_metric("roc_auc", y, holdout_rows[SCORE])
        facts["decision_threshold"] = decision_threshold(model)
    return Reference(version, rows, facts)


def model_reference(ctx: StepContext, version: int, load_model: Callable[[], Any]) -> Reference:
    """The reference of model ``version`` (read from the lake, or built and stored there the first time, when
    ``load_model`` is called for the model to score its holdout)."""
    import pandas as pd

    key = reference_key(ctx.usecase.name, version)
    if ctx.lake.storage.exists(f"{key}.json") and ctx.lake.storage.exists(f"{key}.parquet"):
        facts = ctx.lake.read_json(f"{key}.json")
        rows = pd.read_parquet(io.BytesIO(ctx.lake.storage.read_bytes(f"{key}.parquet")))
        return Reference(version, rows, facts)
    progress(f"monitor: building the reference of model version {version} from its training set")
    reference = _build(ctx, version, load_model())
    buffer = io.BytesIO()
    reference.rows.to_parquet(buffer, index=False)
    ctx.lake.storage.write_bytes(f"{key}.parquet", buffer.getvalue())
    # the facts last: a reader that finds them finds the rows
    ctx.lake.storage.write_bytes(f"{key}.json", json.dumps(reference.facts, default=str).encode())
    return reference
