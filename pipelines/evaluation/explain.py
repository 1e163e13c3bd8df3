"""Model explanation helpers: error cohorts (error analysis) and training-versus-holdout feature distributions.

Error cohorts follow Microsoft's Error Analysis: a shallow decision tree fitted on the holdout rows' errors finds
the cohorts (its leaves) where the model errs most, each described by a rule in the original feature terms. The
data explorer compares every feature's training and holdout distributions, with the population stability index.
Every value returned is JSON-able: Python floats, ints, strings or None, never NaN.
"""

from __future__ import annotations

import contextlib
import math
from typing import TYPE_CHECKING, Any

from pipelines.evaluation.metrics import NULL_SLICE, clean

if TYPE_CHECKING:
    from collections.abc import Callable

    import numpy as np
    import pandas as pd

Z_95 = 1.959963984540054
MAX_ONE_HOT = 30  # categorical values per column the error tree may split on; rarer values are never named
OTHER = "(other)"
TASKS = ("classification", "regression")


def wilson_interval(errors: int, n: int, z: float = Z_95) -> tuple[float | None, float | None]:
    """Wilson score interval of the share ``errors / n``; (None, None) when ``n`` is 0."""
    if n <= 0:
        return None, None
    p = errors / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    low = 0.0 if errors <= 0 else max(0.0, centre - half)
    high = 1.0 if errors >= n else min(1.0, centre + half)
    return clean(low), clean(high)


def mean_interval(values: np.ndarray, z: float = Z_95) -> tuple[float | None, float | None]:
    """Normal interval ``mean ± z·sd/sqrt(n)`` of non-negative ``values`` (sample sd; the low end clipped at 0)."""
    import numpy as np

    n = len(values)
    if n == 0:
        return None, None
    mean = float(np.mean(values))
    sd = float(np.std(values, ddof=1)) if n > 1 else 0.0
    half = z * sd / math.sqrt(n)
    return clean(max(0.0, mean - half)), clean(mean + half)


def _require(frame: pd.DataFrame, columns: list[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{what} lacks column(s): {', '.join(map(str, missing))}")


def _as_text(series: pd.Series, null: str | None) -> pd.Series:
    """Values as str; missing values become ``null`` (None keeps them missing)."""
    import pandas as pd

    present = series.notna().to_numpy()
    text = [str(v) if ok else null for v, ok in zip(series.to_numpy(), present, strict=True)]
    return pd.Series(text, index=series.index, dtype=object)


def _numeric(series: pd.Series) -> np.ndarray:
    """float64 values with non-numbers and infinities as NaN."""
    import numpy as np
    import pandas as pd

    values = pd.to_numeric(series, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
    values[~np.isfinite(values)] = np.nan
    return values


def _fmt(value: float, digits: int = 6) -> str:
    """A short number: ``17.5``, ``3``, ``0.000125``."""
    value = float(value)
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.{digits}g}"


def _design(
    features: pd.DataFrame, numeric: list[str], categorical: list[str]
) -> tuple[np.ndarray, list[tuple[str, str, str | None]]]:
    """The tree's design matrix and what each column is: (kind, feature, one-hot value or None)."""
    import numpy as np

    columns: list[np.ndarray] = []
    meta: list[tuple[str, str, str | None]] = []
    for col in numeric:
        values = _numeric(features[col])
        finite = values[~np.isnan(values)]
        fill = float(np.median(finite)) if len(finite) else 0.0
        columns.append(np.where(np.isnan(values), fill, values))
        meta.append(("numeric", col, None))
    for col in categorical:
        text = _as_text(features[col], NULL_SLICE)
        counts = text.value_counts()
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:MAX_ONE_HOT]
        values = text.to_numpy()
        for value, _ in ranked:
            columns.append((values == value).astype("float64"))
            meta.append(("categorical", col, str(value)))
    if not columns:
        return np.zeros((len(features), 0)), meta
    return np.column_stack(columns), meta


def _rule(conditions: list[tuple[int, bool, float]], meta: list[tuple[str, str, str | None]]) -> str:
    """Readable rule from the path's splits (feature index, went right, threshold), merged per feature."""
    order: list[str] = []
    lower: dict[str, float] = {}  # numeric: x > lower
    upper: dict[str, float] = {}  # numeric: x <= upper
    equal: dict[str, str] = {}
    not_equal: dict[str, list[str]] = {}
    for index, right, threshold in conditions:
        kind, col, value = meta[index]
        if col not in order:
            order.append(col)
        if kind == "numeric":
            if right:
                lower[col] = max(lower.get(col, -math.inf), threshold)
            else:
                upper[col] = min(upper.get(col, math.inf), threshold)
        elif right:
            equal[col] = str(value)
        else:
            not_equal.setdefault(col, [])
            if value not in not_equal[col]:
                not_equal[col].append(str(value))
    parts: list[str] = []
    for col in order:
        if col in lower:
            parts.append(f"{col} > {_fmt(lower[col])}")
        if col in upper:
            parts.append(f"{col} <= {_fmt(upper[col])}")
        if col in equal:
            parts.append(f"{col} = {equal[col]}")
        elif col in not_equal:
            parts.extend(f"{col} != {value}" for value in not_equal[col])
    return " and ".join(parts) if parts else "all rows"


def _leaf_rules(tree: Any, meta: list[tuple[str, str, str | None]]) -> dict[int, str]:
    """Each leaf's node id and its rule."""
    t = tree.tree_
    rules: dict[int, str] = {}
    stack: list[tuple[int, list[tuple[int, bool, float]]]] = [(0, [])]
    while stack:
        node, path = stack.pop()
        left, right = int(t.children_left[node]), int(t.children_right[node])
        if left == right:  # a leaf (both -1)
            rules[node] = _rule(path, meta)
            continue
        feature, threshold = int(t.feature[node]), float(t.threshold[node])
        stack.append((right, [*path, (feature, True, threshold)]))
        stack.append((left, [*path, (feature, False, threshold)]))
    return rules


def error_cohorts(
    features: pd.DataFrame,
    errors: np.ndarray,
    *,
    task: str,
    numeric: list[str],
    categorical: list[str],
    max_depth: int = 3,
    min_rows: int | None = None,
    seed: int = 0,
    top: int = 8,
) -> dict:
    """Cohorts (leaves of a shallow decision tree fitted on the holdout errors) with the highest error.

    Classification: ``errors`` is 0/1 (1 = wrongly decided at the threshold), a cohort's ``error_rate`` is its share
    of errors with a Wilson 95% interval. Regression: ``errors`` are absolute errors, ``error_rate`` is their mean
    with a normal 95% interval. Rows with a non-finite error are left out. Numeric features enter the tree with
    missing values as the column median, categorical ones one-hot (missing as ``(null)``); rules read in the
    original feature terms, e.g. ``dep_hour > 17.5 and carrier = UA and origin != JFK``.
    """
    import numpy as np
    from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, not {task!r}")
    _require(features, [*numeric, *categorical], "features")
    err = np.asarray(errors, dtype="float64").reshape(-1)
    if len(err) != len(features):
        raise ValueError(f"errors has {len(err)} values for {len(features)} feature rows")
    keep = np.isfinite(err)
    frame = features if keep.all() else features.iloc[np.flatnonzero(keep)]
    err = err[keep]
    if task == "classification" and not np.isin(err, (0.0, 1.0)).all():
        raise ValueError("classification errors must be 0/1")

    n = len(err)
    result: dict[str, Any] = {
        "method": f"decision tree (depth <= {max_depth}) on the holdout errors",
        "error": "wrongly decided at the decision threshold"
        if task == "classification"
        else "absolute error",
        "overall_error": clean(err.mean()) if n else None,
        "rows": int(n),
        "cohorts": [],
    }
    if n == 0:
        return result

    x, meta = _design(frame, numeric, categorical)
    leaf_min = int(min_rows) if min_rows is not None else max(50, math.ceil(0.02 * n))
    if x.shape[1] == 0 or len(np.unique(err)) < 2:
        leaves = np.zeros(n, dtype="int64")
        rules = {0: "all rows"}
    else:
        if task == "classification":
            tree = DecisionTreeClassifier(
                max_depth=max_depth, min_samples_leaf=max(1, leaf_min), random_state=seed
            )
            tree.fit(x, err.astype("int64"))
        else:
            tree = DecisionTreeRegressor(
                max_depth=max_depth, min_samples_leaf=max(1, leaf_min), random_state=seed
            )
            tree.fit(x, err)
        leaves = tree.apply(x)
        rules = _leaf_rules(tree, meta)

    cohorts = []
    for leaf, rule in rules.items():
        values = err[leaves == leaf]
        rows = len(values)
        if rows == 0:
            continue
        if task == "classification":
            low, high = wilson_interval(int(values.sum()), rows)
        else:
            low, high = mean_interval(values)
        cohorts.append(
            {"rule": rule, "rows": int(rows), "error_rate": clean(values.mean()), "low": low, "high": high}
        )
    cohorts.sort(key=lambda c: (-(c["error_rate"] or 0.0), -c["rows"], c["rule"]))
    result["cohorts"] = cohorts[: max(0, int(top))]
    return result


def psi(expected_shares: list[float], actual_shares: list[float], eps: float = 1e-4) -> float | None:
    """Population stability index ``sum((a - e) * ln(a / e))`` over matching bins, shares clipped at ``eps``.

    None when there are no bins or a share is not finite; ValueError when the bin counts differ.
    """
    import numpy as np

    e = np.asarray(expected_shares, dtype="float64").reshape(-1)
    a = np.asarray(actual_shares, dtype="float64").reshape(-1)
    if len(e) != len(a):
        raise ValueError(f"psi needs matching bins: {len(e)} expected shares, {len(a)} actual shares")
    if len(e) == 0 or not (np.isfinite(e).all() and np.isfinite(a).all()):
        return None
    e, a = np.clip(e, eps, None), np.clip(a, eps, None)
    return clean(np.sum((a - e) * np.log(a / e)))


def _shares(codes: np.ndarray, n_bins: int) -> list[float]:
    """Share of each bin among ``codes`` (all 0.0 when there are none)."""
    import numpy as np

    counts = np.bincount(codes, minlength=n_bins).astype("float64")
    total = counts.sum()
    return [float(c / total) if total else 0.0 for c in counts]


def _missing_share(missing: np.ndarray) -> float:
    return float(missing.mean()) if len(missing) else 0.0


def _numeric_cuts(train: np.ndarray, bins: int) -> list[float]:
    """Cut points from the train quantiles, unique and below the train maximum (none for a constant column)."""
    import numpy as np

    finite = train[~np.isnan(train)]
    if len(finite) == 0 or bins < 2:
        return []
    cuts = np.unique(np.quantile(finite, np.linspace(0.0, 1.0, bins + 1)[1:-1], method="inverted_cdf"))
    return [float(c) for c in cuts if c < finite.max()]


def _numeric_labels(cuts: list[float]) -> list[str]:
    """``<= a``, ``(a, b]``, ..., ``> z``; enough digits to keep the labels distinct."""
    if not cuts:
        return ["all values"]
    for digits in (4, 6, 8, 12, 17):
        text = [_fmt(c, digits) for c in cuts]
        if len(set(text)) == len(text):
            break
    labels = [f"<= {text[0]}"]
    labels += [f"({lo}, {hi}]" for lo, hi in zip(text[:-1], text[1:], strict=True)]
    labels.append(f"> {text[-1]}")
    return labels


def _numeric_feature(train: pd.Series, holdout: pd.Series, bins: int) -> dict:
    import numpy as np

    tr, ho = _numeric(train), _numeric(holdout)
    cuts = _numeric_cuts(tr, bins)
    labels = _numeric_labels(cuts)
    edges = np.asarray(cuts, dtype="float64")

    def side(values: np.ndarray) -> tuple[float, list[float]]:
        present = values[~np.isnan(values)]
        codes = np.searchsorted(edges, present, side="left")  # cuts[i-1] < v <= cuts[i] -> i
        return _missing_share(np.isnan(values)), _shares(codes, len(labels))

    return _feature_entry("numeric", labels, side(tr), side(ho))


def _categorical_feature(train: pd.Series, holdout: pd.Series, top_categories: int) -> dict:
    import numpy as np

    tr, ho = _as_text(train, None), _as_text(holdout, None)
    counts = tr.dropna().value_counts()
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[: max(0, int(top_categories))]
    labels = [str(v) for v, _ in ranked] + [OTHER]
    index = {label: i for i, label in enumerate(labels[:-1])}

    def side(values: pd.Series) -> tuple[float, list[float]]:
        missing = values.isna().to_numpy()
        present = values[~missing]
        codes = np.fromiter(
            (index.get(v, len(labels) - 1) for v in present), dtype="int64", count=len(present)
        )
        return _missing_share(missing), _shares(codes, len(labels))

    return _feature_entry("categorical", labels, side(tr), side(ho))


def _feature_entry(
    kind: str, labels: list[str], train: tuple[float, list[float]], holdout: tuple[float, list[float]]
) -> dict:
    has_train, has_holdout = sum(train[1]) > 0, sum(holdout[1]) > 0
    return {
        "kind": kind,
        "train_missing": train[0],
        "holdout_missing": holdout[0],
        "psi": psi(train[1], holdout[1]) if has_train and has_holdout else None,
        "train": {"bins": list(labels), "shares": train[1]},
        "holdout": {"bins": list(labels), "shares": holdout[1]},
    }


def data_explorer(
    train: pd.DataFrame,
    holdout: pd.DataFrame,
    *,
    numeric: list[str],
    categorical: list[str],
    bins: int = 10,
    top_categories: int = 10,
) -> dict:
    """Training versus holdout distribution of every feature (numeric first, then categorical), with PSI.

    Numeric bins come from the train quantiles with open-ended first and last bins, so holdout values outside the
    train range are counted; categorical bins are the train's ``top_categories`` most frequent values plus
    ``(other)``. Shares are over non-missing values; missing values are reported as ``*_missing`` shares.
    """
    columns = [*numeric, *categorical]
    _require(train, columns, "train")
    _require(holdout, columns, "holdout")
    out = []
    for col in numeric:
        out.append({"feature": col, **_numeric_feature(train[col], holdout[col], bins)})
    for col in categorical:
        out.append({"feature": col, **_categorical_feature(train[col], holdout[col], top_categories)})
    return {"features": out, "train_rows": int(len(train)), "holdout_rows": int(len(holdout))}


TREE_FAMILIES = ("hist_gradient_boosting",)
# scikit-learn pipelines (preprocessing + one estimator): explained on the transformed frame
PIPELINE_FAMILIES = ("logistic_regression", "ridge", "hist_gradient_boosting")


def _shap() -> Any:
    """shap, its own numba functions imported with numba's JIT off. Compiling them costs about 4 s in every
    process that explains (each report task is one), more than the explanations of a 200-row summary take; as
    plain Python they give the same values in a few tenths of a second. The JIT setting is restored at once, so
    any other numba user keeps it."""
    import sys

    if "shap" in sys.modules:
        return sys.modules["shap"]
    import numba

    jit_off = numba.config.DISABLE_JIT
    numba.config.DISABLE_JIT = True  # read by numba's decorators as shap's modules define their functions
    try:
        import shap
    finally:
        numba.config.DISABLE_JIT = jit_off
    return shap


SHAP_FLOOR_ROWS = 10  # explained whatever the budget: a summary of fewer rows says nothing


def _explain(
    output: Callable[[np.ndarray], Any],
    Z: np.ndarray,
    Z_background: np.ndarray,
    *,
    rows: int,
    seed: int,
    budget_s: float | None,
    started: float,
) -> tuple[np.ndarray, np.ndarray, float, int]:
    """SHAP values of ``output`` for (up to the budget's) first ``rows`` rows of ``Z``: values, the rows
    explained, the additivity error and how many rows the budget allowed. The budget counts from ``started``
    (``time.perf_counter``), so shap's import and the preparation are inside it. The first
    :data:`SHAP_FLOOR_ROWS` rows are explained first and timed, which sizes the rest by what a row really costs
    (the model's calls and shap's own work); the explainer continues its seeded permutations across the two
    calls, so the values are those of one call."""
    import time

    import numpy as np

    shap = _shap()
    evals = 2 * Z.shape[1] + 1
    explainer = shap.PermutationExplainer(
        output, shap.maskers.Independent(Z_background, max_samples=len(Z_background)), seed=seed
    )

    def explain(part: np.ndarray) -> Any:
        # one model call per explained row (all its masked samples at once). shap's default ("auto") batching
        # gives the same values but spends far more in its own bookkeeping than the model does
        return explainer(part, max_evals=evals, silent=True, batch_size=evals)

    floor = min(rows, SHAP_FLOOR_ROWS)
    timed = time.perf_counter()
    parts = [explain(Z[:floor])]
    allowed = rows
    if budget_s is not None:
        per_row = max((time.perf_counter() - timed) / max(floor, 1), 1e-6)
        left = budget_s - (time.perf_counter() - started)
        allowed = max(floor, min(rows, floor + int(0.9 * left / per_row)))
    if allowed > floor:
        parts.append(explain(Z[floor:allowed]))
    Z = Z[:allowed]
    values = np.concatenate([np.asarray(part.values, dtype="float64") for part in parts])
    base = np.concatenate([np.asarray(part.base_values, dtype="float64").reshape(-1) for part in parts])
    additivity = float(np.max(np.abs(values.sum(axis=1) + base - output(Z))))
    return values, Z, additivity, allowed


def _encoded(X: pd.DataFrame) -> tuple[np.ndarray, Callable[[np.ndarray], pd.DataFrame]]:
    """``X`` as a float matrix for shap's masker (a text column as the code of its value, -1 for a null) and
    the function that turns such a matrix back into the model's input frame (same columns, same dtypes)."""
    import numpy as np
    import pandas as pd

    columns, decoders = [], []
    for name in X.columns:
        column = X[name]
        if pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column):
            columns.append(column.to_numpy(dtype="float64", na_value=np.nan))
            decoders.append(None)
        else:
            codes, values = pd.factorize(column, use_na_sentinel=True)
            columns.append(codes.astype("float64"))
            decoders.append(np.asarray(list(values), dtype=object))
    matrix = np.column_stack(columns) if columns else np.zeros((len(X), 0))
    dtypes = X.dtypes.to_dict()

    def decode(Z: np.ndarray) -> pd.DataFrame:
        data: dict[str, Any] = {}
        for index, name in enumerate(X.columns):
            values = decoders[index]
            if values is None:
                data[name] = Z[:, index]
            else:
                codes = Z[:, index].astype("int64")
                data[name] = np.where(codes >= 0, values[np.clip(codes, 0, max(len(values) - 1, 0))], None)
        frame = pd.DataFrame(data)
        for name, dtype in dtypes.items():
            # a null in an integer column stays as it is: the model's own input checks decide
            with contextlib.suppress(TypeError, ValueError):
                frame[name] = frame[name].astype(dtype)
        return frame

    return matrix, decode


def _raw_model(model: Any) -> Any:
    """The estimator under an MLflow pyfunc, or the model itself: a pyfunc of our own Python model (the Keras
    wrapper) has ``get_raw_model`` but raises NotImplementedError from it."""
    try:
        return model.get_raw_model() if hasattr(model, "get_raw_model") else model
    except NotImplementedError:
        return model


def shap_summary(
    model: Any,
    X: pd.DataFrame,
    *,
    family: str,
    seed: int = 0,
    rows: int = 200,
    background: int = 50,
    budget_s: float | None = None,
    task: str = "classification",
) -> dict[str, Any]:
    """SHAP values of the chosen candidate on ``rows`` holdout rows, for a summary (beeswarm) plot, whatever its
    family, with the model-agnostic permutation explainer (exact in additivity, which is checked and reported):

    - a scikit-learn pipeline (``family`` in PIPELINE_FAMILIES: logistic regression, ridge, histogram gradient
      boosting) is explained on the pipeline's transformed frame, on the estimator's raw output (log-odds, or a
      regressor's value), and transformed columns are summed back to the feature they came from (one-hot
      columns; ordinal and passthrough columns map one to one). shap's TreeExplainer misreads the native
      categorical splits of histogram gradient boosting (9.8 off in log-odds, measured with shap 0.51), hence
      the permutation explainer there too;
    - any other model (the Keras MLP) is explained on its input columns through the pyfunc's own prediction
      (``tracking.predict_proba``; a classifier's probability as log-odds), a text column masked by its code.

    ``budget_s`` caps the run from this call on (shap's import, the first one in a process, included): the first
    ten rows, explained and timed, size how many more fit in what is left, and a cut is reported (``cut``)."""
    import time

    import numpy as np

    started = time.perf_counter()

    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(len(X), size=min(rows, len(X)), replace=False))
    pool = np.sort(rng.choice(len(X), size=min(background, len(X)), replace=False))
    raw = _raw_model(model)
    pipeline = getattr(raw, "regressor_", raw)  # a TransformedTargetRegressor explains its inner pipeline
    if family in PIPELINE_FAMILIES and hasattr(pipeline, "steps"):
        preprocess, estimator = pipeline[:-1], pipeline[-1]
        Z = np.asarray(preprocess.transform(X.iloc[chosen]), dtype="float64")
        Z_background = np.asarray(preprocess.transform(X.iloc[pool]), dtype="float64")
        names = [str(n) for n in preprocess.get_feature_names_out()]
        output = estimator.decision_function if hasattr(estimator, "decision_function") else estimator.predict
        scale = "log-odds" if hasattr(estimator, "decision_function") else "predicted value"
        method = f"SHAP permutation explainer on the transformed frame ({scale})"
    else:
        from pipelines.modeling.tracking import predict_proba

        matrix, decode = _encoded(X)
        Z, Z_background = matrix[chosen], matrix[pool]
        names = [str(c) for c in X.columns]
        classification = task == "classification"

        def output(values: np.ndarray) -> np.ndarray:
            scores = np.asarray(predict_proba(model, decode(values)), dtype="float64").reshape(-1)
            if classification:
                scores = np.clip(scores, 1e-6, 1 - 1e-6)
                return np.log(scores / (1 - scores))
            return scores

        scale = "log-odds of the probability" if classification else "predicted value"
        method = (
            f"SHAP permutation explainer on the model's input columns through its pyfunc prediction ({scale})"
        )
    values, Z, additivity, allowed = _explain(
        output, Z, Z_background, rows=len(chosen), seed=seed, budget_s=budget_s, started=started
    )
    features = list(X.columns)

    def owner(name: str) -> str:
        matches = [f for f in features if name == f or name.startswith(f"{f}_")]
        return max(matches, key=len) if matches else name

    by_feature: dict[str, list[int]] = {}
    for index, name in enumerate(names):
        by_feature.setdefault(owner(name), []).append(index)
    summary = []
    for feature, columns in by_feature.items():
        contribution = values[:, columns].sum(axis=1)
        shown = Z[:, columns[0]] if len(columns) == 1 else np.argmax(Z[:, columns], axis=1).astype("float64")
        finite = np.isfinite(shown)
        ranks = np.full(len(shown), np.nan)
        if finite.any():
            order = shown[finite].argsort().argsort()
            ranks[finite] = order / max(finite.sum() - 1, 1)
        summary.append(
            {
                "feature": feature,
                "mean_abs": clean(np.mean(np.abs(contribution))),
                "points": [
                    [clean(round(float(c), 5)), None if np.isnan(r) else round(float(r), 3)]
                    for c, r in zip(contribution, ranks, strict=True)
                ],
            }
        )
    summary.sort(key=lambda f: -(f["mean_abs"] or 0.0))
    out: dict[str, Any] = {
        "method": method,
        "family": family,
        "rows": int(allowed),
        "background_rows": len(pool),
        "additivity_error": clean(additivity),
        "features": summary,
    }
    if allowed < len(chosen):
        out["cut"] = f"{allowed} of {len(chosen)} rows explained to fit the {budget_s:g} s budget"
    return out


class _Probabilities:
    """A scikit-learn-like view of any pyfunc model for dice-ml: ``predict_proba`` through the scorer's own
    ``tracking.predict_proba`` (the whole pipeline, from the model's input columns), rescaled monotonically so
    that the decision threshold maps to 0.5, where dice-ml decides (the real probability is reported)."""

    def __init__(self, model: Any, columns: list[str], threshold: float = 0.5) -> None:
        self.model, self.columns, self.threshold = model, columns, threshold

    def probability(self, frame: pd.DataFrame) -> np.ndarray:
        from pipelines.modeling.tracking import predict_proba

        return predict_proba(self.model, frame[self.columns])

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        import numpy as np

        p, t = self.probability(frame), self.threshold
        q = np.where(p < t, p / (2 * t), 0.5 + (p - t) / (2 * (1 - t)))
        return np.column_stack([1.0 - q, q])

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        return (self.predict_proba(frame)[:, 1] >= 0.5).astype("int64")


def _complete(frame: pd.DataFrame, numeric: list[str], categorical: list[str], medians: Any) -> pd.DataFrame:
    out = frame.copy()
    out[numeric] = out[numeric].astype("float64").fillna(medians)
    for column in categorical:
        out[column] = out[column].astype(object).where(out[column].notna(), NULL_SLICE).astype(str)
    return out


def counterfactuals(
    model: Any,
    train: pd.DataFrame,
    train_labels: Any,
    holdout: pd.DataFrame,
    holdout_labels: Any,
    scores: Any,
    *,
    threshold: float,
    numeric: list[str],
    categorical: list[str],
    per_kind: int = 3,
    per_row: int = 2,
    seed: int = 0,
    budget_s: float = 30.0,
    sample_size: int = 400,
    sparsity_steps: int = 200,
) -> dict[str, Any]:
    """What would have to change for the model to decide otherwise, for the ``per_kind`` highest-scored holdout
    rows and the ``per_kind`` most wrongly scored ones: dice-ml's ``random`` method on the whole model (the
    genetic method can stall), at most ``per_row`` counterfactuals each, listing only the changed features.
    Missing numeric values are filled with the training median and missing categories shown as ``(null)``
    (dice-ml needs complete rows). Each search draws ``sample_size`` candidates and its sparsity pass takes at
    most ``sparsity_steps`` steps (each a model call: dice-ml's 10000 took 5 minutes on one Keras model); no row
    is started after ``budget_s`` seconds, and the rows left are listed as skipped."""
    import logging
    import time

    import dice_ml
    import numpy as np

    logging.getLogger("dice_ml").setLevel(logging.ERROR)
    label = "__label__"
    columns = [*numeric, *categorical]
    medians = train[numeric].astype("float64").median()
    data = _complete(train[columns], numeric, categorical, medians)
    data[label] = np.asarray(train_labels, dtype="int64")
    explainer = dice_ml.Dice(
        dice_ml.Data(dataframe=data, continuous_features=numeric, outcome_name=label),
        dice_ml.Model(model=(view := _Probabilities(model, columns, threshold)), backend="sklearn"),
        method="random",
    )
    y = np.asarray(holdout_labels, dtype="int64")
    p = np.asarray(scores, dtype="float64")
    wrong = np.flatnonzero((p >= threshold).astype("int64") != y)
    picks = [
        ("high risk", np.argsort(-p, kind="stable")[:per_kind]),
        ("wrongly scored", wrong[np.argsort(-np.abs(y[wrong] - p[wrong]), kind="stable")][:per_kind]),
    ]
    rows = []
    started = time.monotonic()
    for kind, indices in picks:
        for index in indices:
            query = _complete(holdout[columns].iloc[[int(index)]], numeric, categorical, medians)
            entry: dict[str, Any] = {
                "kind": kind,
                "row": int(index),
                "score": clean(p[index]),
                "label": int(y[index]),
                "counterfactuals": [],
            }
            if time.monotonic() - started > budget_s:
                entry["error"] = f"skipped: the {budget_s:.0f} s budget for counterfactuals was spent"
                rows.append(entry)
                continue
            try:
                found = (
                    explainer.generate_counterfactuals(
                        query,
                        total_CFs=per_row,
                        desired_class="opposite",
                        random_seed=seed,
                        verbose=False,
                        sample_size=sample_size,
                        limit_steps_ls=sparsity_steps,
                    )
                    .cf_examples_list[0]
                    .final_cfs_df
                )
            except Exception as exc:  # dice-ml found none, or could not search: shown, not fatal
                entry["error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
                rows.append(entry)
                continue
            original = query.iloc[0]
            for _, cf in (found if found is not None else query.iloc[:0]).iterrows():
                changes = {
                    c: [_plain(original[c]), _plain(cf[c])]
                    for c in columns
                    if _plain(original[c]) != _plain(cf[c])
                }
                new_score = view.probability(cf[columns].to_frame().T.astype(query.dtypes.to_dict()))[0]
                entry["counterfactuals"].append({"changes": changes, "score": clean(new_score)})
            rows.append(entry)
    return {
        "method": "dice-ml random search on the whole model (decision at the threshold flipped)",
        "threshold": float(threshold),
        "rows": rows,
    }


def _plain(value: Any) -> Any:
    """A JSON value for a cell: rounded floats, strings."""
    if isinstance(value, str):
        return value
    number = clean(value)
    return None if number is None else round(number, 4)
