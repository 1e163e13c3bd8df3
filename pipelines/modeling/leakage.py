"""Model inputs that give the label away: each input's score on its own, on the training rows.

``mlops validate`` refuses the columns known to be known only with the outcome (pipelines.usecase_checks); this catches
the ones nobody marked, from the data: a proxy of the label (the delay in hours next to the delay in minutes, a
status column written when the outcome arrives) predicts the label almost perfectly on its own, which an honest
input known at the prediction time practically never does.

Single-feature score, on the training rows the candidates are fitted on:

- classification: ROC AUC of the column's values against the label, in either direction (max(AUC, 1 - AUC));
  a missing value ranks below every value and, separately, above every value, and the higher AUC counts (so a
  column that is missing exactly when the label is 0 is caught too);
- regression: R-squared of the label on the column, the larger of a straight-line fit (Pearson r squared) and a
  fit of the ranks (Spearman rho squared, any monotone relation), over the rows with a value;
- categorical columns (both tasks): each category's mean label, learnt on one half of the rows and scored on the
  other (two seeded halves, both ways), then its ROC AUC or R-squared: an identifier with one row per value
  scores nothing, as a model could not use it on new rows either.

A column reaching ``leakage.max_single_feature_score`` (default 0.99) fails the train naming it, unless
``leakage.allowed`` lists it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pipelines.config import UseCase
from pipelines.context import StepFailed

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

MIN_ROWS = 50  # fewer rows with a value: no score


def _auc(y: np.ndarray, x: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score

    if len(y) < MIN_ROWS or y.min() == y.max():
        return None
    auc = float(roc_auc_score(y, x))
    return max(auc, 1.0 - auc)


def _numeric_score(task: str, x: np.ndarray, y: np.ndarray) -> float | None:
    import numpy as np
    from scipy.stats import rankdata

    if task == "classification":
        finite = np.isfinite(x)
        if finite.sum() < MIN_ROWS:
            return None
        if finite.all():
            return _auc(y, x)
        low, high = float(x[finite].min()), float(x[finite].max())
        scores = [_auc(y, np.where(finite, x, fill)) for fill in (low - 1.0, high + 1.0)]
        return max((s for s in scores if s is not None), default=None)
    finite = np.isfinite(x) & np.isfinite(y)
    x, y = x[finite], y[finite]
    if len(x) < MIN_ROWS or x.min() == x.max() or y.min() == y.max():
        return None
    pearson = float(np.corrcoef(x, y)[0, 1])
    spearman = float(np.corrcoef(rankdata(x), rankdata(y))[0, 1])
    return max(pearson**2, spearman**2)


def _categorical_score(task: str, values: np.ndarray, y: np.ndarray, seed: int) -> float | None:
    import numpy as np
    import pandas as pd

    if len(y) < 2 * MIN_ROWS:
        return None
    keys = pd.Series(values, dtype="object").fillna("\x00null").to_numpy()
    half = np.random.default_rng(seed).permutation(len(y)) % 2 == 0
    encoded = np.empty(len(y), dtype="float64")
    for learn, apply in ((half, ~half), (~half, half)):
        means = pd.Series(y[learn]).groupby(keys[learn]).mean()
        encoded[apply] = pd.Series(keys[apply]).map(means).fillna(float(y[learn].mean())).to_numpy()
    if task == "classification":
        return _auc(y, encoded)
    total = float(((y - y.mean()) ** 2).sum())
    if total == 0:
        return None
    return max(0.0, 1.0 - float(((y - encoded) ** 2).sum()) / total)


def single_feature_scores(usecase: UseCase, X: pd.DataFrame, y: Any) -> dict[str, float | None]:
    """Each model input's score on its own against ``y`` (module doc); None where it is undefined (too few rows
    with a value, a constant column or label)."""
    import numpy as np

    y = np.asarray(y, dtype="float64")
    scores: dict[str, float | None] = {}
    for column in usecase.features.numeric:
        scores[column] = _numeric_score(usecase.task, np.asarray(X[column], dtype="float64"), y)
    for column in usecase.features.categorical:
        scores[column] = _categorical_score(
            usecase.task, np.asarray(X[column], dtype="object"), y, usecase.split.seed
        )
    return {k: (None if v is None else round(v, 6)) for k, v in scores.items()}


def check_leakage(usecase: UseCase, X: pd.DataFrame, y: Any, where: str) -> dict[str, float | None]:
    """The single-feature scores of the model inputs on ``where`` (the training rows); StepFailed naming every
    input at or above ``leakage.max_single_feature_score`` that ``leakage.allowed`` does not list."""
    scores = single_feature_scores(usecase, X, y)
    limit = usecase.leakage.max_single_feature_score
    measure = "ROC AUC" if usecase.task == "classification" else "R-squared"
    leaky = {
        c: s for c, s in scores.items() if s is not None and s >= limit and c not in usecase.leakage.allowed
    }
    if leaky:
        named = ", ".join(f"{c!r} ({measure} {s:.4f})" for c, s in sorted(leaky.items(), key=lambda i: -i[1]))
        field = {
            c: "features.categorical" if c in usecase.features.categorical else "features.numeric"
            for c in leaky
        }
        raise StepFailed(
            f"model input(s) {named} of use case {usecase.name!r} predict the label "
            f"{usecase.target.column!r} almost perfectly on their own on {where} (leakage.max_single_feature_score "
            f"{limit}): a column known only with the outcome, or a proxy of the label, fits a model that fails on "
            f"live rows. Fix config/usecases/{usecase.name}.yaml: remove it from "
            f"{sorted(set(field.values()))} (mark its source column known_with_outcome: true so validate refuses "
            "it), or, if its value is truly known at the prediction time, list it in leakage.allowed",
            {"single_feature_scores": scores, "leaky": sorted(leaky)},
        )
    return scores
