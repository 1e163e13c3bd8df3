"""The versions a scoring service serves: the registry's ``champion`` and, optionally, its ``challenger``.

A version serves only once verified: its artifact files hash to the digest register recorded on the version
(``model_sha256``), it loads through the scorer's loader, and it scores its own stored input example with finite
values. :class:`ModelSlots` checks the aliases on a schedule; when one moves it loads and verifies the new
version beside the old, then swaps the reference (requests under way finish on the version they started with).
A version that fails stays out, the old one keeps serving, and the failure is reported. It is tried again with
exponential back-off (:data:`RETRY_FIRST_S` after the first failure, twice as long after each further one, at most
:data:`RETRY_MAX_S`; at the first refresh after that time): a transient failure (the registry or the artifact store
briefly unreachable) recovers by itself, while a tampered artifact fails every retry and stays out. Moving the
alias to another version starts again at once.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipelines.config import UseCase
from pipelines.features.feature_identity import FEATURES_CONFIG_TAG
from pipelines.modeling.tracking import (
    CHALLENGER_ALIAS,
    CHAMPION_ALIAS,
    MODEL_DIGEST_TAG,
    ArtifactRefused,
    decision_threshold,
    load_verified_folder,
    model_name,
    predict_proba,
    scores_of,
    verified_download,
    version_by_alias,
)

log = logging.getLogger("mlops.serve")

# a version that failed to load is tried again this long after its first failure, then after twice as long each
# time, up to RETRY_MAX_S (ServeSettings.retry_first_s and retry_max_s)
RETRY_FIRST_S = 30.0
RETRY_MAX_S = 900.0


class ModelRefused(Exception):
    """A registered version failed verification: it is not served."""


@dataclass
class ServedModel:
    """One verified, loaded version. ``score`` maps model-input columns (pipelines.features.model_inputs.model_input_columns)
    to scores: the flavour's own model called directly where :func:`direct_scorer` verified it, else the
    pyfunc (``runtime`` says which)."""

    alias: str
    version: str
    run_id: str
    candidate: str | None
    model: Any
    threshold: float | None
    digest: str
    folder: Path
    score: Callable[[Mapping[str, Any]], Any]
    runtime: str
    single_record: SingleRecordScorer | None = None
    # the features config hash it was trained with (tag features_config_hash; None: registered before the tag)
    features_config: str | None = None

    def scores(self, inputs: Mapping[str, Any], rows: int) -> tuple[Any, str]:
        """(scores of model-input columns, the runtime that made them): the single-record scorer for one row
        when the model has one, else ``score``."""
        if rows == 1 and self.single_record is not None:
            return self.single_record.score(inputs), self.single_record.runtime
        return self.score(inputs), self.runtime

    def describe(self) -> dict[str, Any]:
        return {
            "alias": self.alias,
            "version": self.version,
            "run_id": self.run_id,
            "candidate": self.candidate,
            "sha256": self.digest,
            "decision_threshold": self.threshold,
            "runtime": self.runtime,
            "single_record": None if self.single_record is None else self.single_record.describe(),
            "features_config_hash": self.features_config,
        }

    def release(self) -> None:
        """Remove the downloaded artifacts (the model is in memory)."""
        shutil.rmtree(self.folder, ignore_errors=True)


def smoke_test(model: Any, folder: Path, classification: bool) -> int:
    """Score the model's stored input example (logged with it by train); raise ModelRefused unless every score
    is finite (and a probability, for a classifier). Returns the number of rows scored."""
    import numpy as np

    try:
        example = model.metadata.load_input_example(str(folder))
    except Exception as exc:
        raise ModelRefused(f"its stored input example cannot be read: {type(exc).__name__}: {exc}") from None
    if example is None or len(example) == 0:
        raise ModelRefused("it has no stored input example to score (train logs one with every model)")
    try:
        scores = predict_proba(model, example)
    except Exception as exc:
        raise ModelRefused(f"it cannot score its input example: {type(exc).__name__}: {exc}") from None
    if len(scores) != len(example) or not np.isfinite(scores).all():
        raise ModelRefused(f"it scored its {len(example)}-row input example as {scores.tolist()[:5]}")
    if classification and ((scores < 0) | (scores > 1)).any():
        raise ModelRefused(
            f"its probabilities for its input example are outside [0, 1]: {scores.tolist()[:5]}"
        )
    return len(example)


def pyfunc_scorer(model: Any) -> Callable[[Mapping[str, Any]], Any]:
    """Scores through the pyfunc (MLflow's schema check included)."""

    def score(columns: Mapping[str, Any]) -> Any:
        import pandas as pd

        return predict_proba(model, pd.DataFrame(columns))

    return score


def direct_scorer(model: Any, classification: bool) -> Callable[[Mapping[str, Any]], Any] | None:
    """The model of a flavour this project logs, called without the pyfunc layer (MLflow's per-request input
    schema check; the service validated the records against the use case's schema already): the Keras
    wrapper's ``predict_columns``, or a scikit-learn model's ``predict_proba`` (``predict`` for a regressor).
    None for another flavour. :func:`load_verified` serves it only when it scores the stored input example
    exactly as the pyfunc does."""
    import pandas as pd

    try:
        python_model = model.unwrap_python_model()
    except Exception:
        python_model = None
    predict_columns = getattr(python_model, "predict_columns", None)
    if predict_columns is not None:
        return lambda columns: scores_of(predict_columns(columns))
    try:
        raw = model.get_raw_model()
    except Exception:
        return None
    if not hasattr(raw, "predict") or (classification and not hasattr(raw, "predict_proba")):
        return None

    predict = raw.predict_proba if classification else raw.predict
    return lambda columns: scores_of(predict(pd.DataFrame(columns)))


def choose_scorer(
    model: Any, usecase: UseCase, folder: Path
) -> tuple[Callable[[Mapping[str, Any]], Any], str]:
    """(the scorer to serve with, its runtime name): :func:`direct_scorer` when it gives exactly the pyfunc's
    scores on the stored input example, else the pyfunc."""
    import numpy as np

    from pipelines.features.model_inputs import model_input_columns

    direct = direct_scorer(model, usecase.task == "classification")
    if direct is None:
        return pyfunc_scorer(model), "pyfunc"
    try:
        example = model.metadata.load_input_example(str(folder))
        columns = model_input_columns(usecase, example, "the stored input example")
        expected, given = pyfunc_scorer(model)(columns), direct(columns)
        if given.shape == expected.shape and np.array_equal(given, expected, equal_nan=True):
            return direct, "direct"
        reason = f"its scores differ from the pyfunc's by up to {np.nanmax(np.abs(given - expected)):.3g}"
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}"
    log.warning("%s: served through the pyfunc (the direct call is not used: %s)", folder.name, reason)
    return pyfunc_scorer(model), "pyfunc"


SINGLE_RECORD_TOLERANCE = 1e-6  # the bound for another runtime on the single-record path


@dataclass(frozen=True)
class SingleRecordScorer:
    """Another runtime for one-record requests, used only where its scores differ from the model's own by less
    than :data:`SINGLE_RECORD_TOLERANCE` (``max_difference``, measured at load)."""

    score: Callable[[Mapping[str, Any]], Any]
    runtime: str
    max_difference: float

    def describe(self) -> dict[str, Any]:
        return {"runtime": self.runtime, "max_difference": self.max_difference}


def single_record_scorer(model: Any, usecase: UseCase, folder: Path) -> SingleRecordScorer | None:
    """The Keras wrapper's numpy pass for one record (pipelines.keras_pyfunc.single_record_scorer) when it stays
    within :data:`SINGLE_RECORD_TOLERANCE` of TensorFlow on the stored input example and random rows; None for
    other models, or (logged) when it does not."""
    from pipelines.features.model_inputs import model_input_columns

    try:
        make = getattr(model.unwrap_python_model(), "single_record_scorer", None)
    except Exception:  # not a pyfunc PythonModel (the scikit-learn flavour)
        make = None
    if make is None:
        return None
    try:
        example = model.metadata.load_input_example(str(folder))
        made = make(model_input_columns(usecase, example, "the stored input example"))
    except Exception as exc:
        log.warning("%s: no single-record numpy pass (%s: %s)", folder.name, type(exc).__name__, exc)
        return None
    if made is None:
        return None
    score, difference = made
    if not difference < SINGLE_RECORD_TOLERANCE:
        log.warning(
            "%s: single records go through TensorFlow: the numpy pass differs by up to %.3g (allowed %.0e)",
            folder.name,
            difference,
            SINGLE_RECORD_TOLERANCE,
        )
        return None
    return SingleRecordScorer(
        score=lambda columns: scores_of(score(columns)), runtime="numpy", max_difference=difference
    )


# how far the numpy pass of a linear pipeline may be from the pipeline's own scores (the service's parity bound
# with batch scoring is 1e-9; the two differ by rounding only, about 1e-16)
NUMPY_PASS_TOLERANCE = 1e-12


def _verification_rows(example: Any, usecase: UseCase) -> Any:
    """The stored input example, and copies of it with each input missing and each categorical input a value the
    model never saw: the cases where an encoder or imputer takes another branch."""
    import pandas as pd

    frames = [example]
    for column in example.columns:
        frames.append(
            example.assign(**{column: None if column in usecase.features.categorical else float("nan")})
        )
        if column in usecase.features.categorical:
            frames.append(example.assign(**{column: "<never seen in training>"}))
    return pd.concat(frames, ignore_index=True)


def linear_numpy_scorer(
    model: Any, usecase: UseCase, folder: Path, direct: Callable[[Mapping[str, Any]], Any]
) -> SingleRecordScorer | None:
    """A linear pipeline's numpy pass (pipelines.serving.linear) for every request, when its scores stay within
    :data:`NUMPY_PASS_TOLERANCE` of the pipeline's own (``direct``) on :func:`_verification_rows`, scored whole
    and one row at a time; None for other models, or (logged) when it does not. Should a request's columns ever
    not convert (a type the verification did not see), that request goes through ``direct``."""
    import numpy as np

    from pipelines.features.model_inputs import model_input_columns
    from pipelines.serving.linear import linear_pass

    try:
        raw = model.get_raw_model()
    except Exception:  # not the scikit-learn flavour
        return None
    fast = linear_pass(raw, usecase.task == "classification")
    if fast is None:
        return None
    try:
        example = model.metadata.load_input_example(str(folder))
        rows = _verification_rows(example, usecase)
        columns = model_input_columns(usecase, rows, "the stored input example")
        expected = direct(columns)
        whole = fast(columns)
        one_by_one = np.concatenate(
            [fast(model_input_columns(usecase, rows.iloc[i : i + 1], "a row")) for i in range(len(rows))]
        )
        difference = float(max(np.max(np.abs(whole - expected)), np.max(np.abs(one_by_one - expected))))
    except Exception as exc:
        log.warning("%s: no numpy pass of the linear pipeline (%s: %s)", folder.name, type(exc).__name__, exc)
        return None
    if not difference <= NUMPY_PASS_TOLERANCE:
        log.warning(
            "%s: served through scikit-learn: its numpy pass differs by up to %.3g (allowed %.0e)",
            folder.name,
            difference,
            NUMPY_PASS_TOLERANCE,
        )
        return None

    fallbacks = [0]

    def score(columns: Mapping[str, Any]) -> Any:
        try:
            return fast(columns)
        except (TypeError, ValueError) as exc:
            fallbacks[0] += 1
            if fallbacks[0] & (fallbacks[0] - 1) == 0:  # the 1st, 2nd, 4th, 8th ...: seen, not a log flood
                log.warning(
                    "%s: a request went through scikit-learn, not the numpy pass (%s: %s); %d so far",
                    folder.name,
                    type(exc).__name__,
                    exc,
                    fallbacks[0],
                )
            return direct(columns)

    return SingleRecordScorer(score=score, runtime="numpy", max_difference=difference)


def load_verified(usecase: UseCase, version: Any, alias: str) -> ServedModel:
    """Download, check and load registry ModelVersion ``version``; raise ModelRefused with the reason when it
    may not serve."""

    name = model_name(usecase)
    expected = (version.tags or {}).get(MODEL_DIGEST_TAG)
    if not expected:
        raise ModelRefused(
            f"version {version.version} of {name!r} has no {MODEL_DIGEST_TAG!r} tag, so its artifacts cannot be "
            "verified; register it again (python -m pipelines register --usecase ... --date <its training date>)"
        )
    folder = Path(tempfile.mkdtemp(prefix=f"mlops-serve-{name}-v{version.version}-"))
    try:
        try:
            path = verified_download(f"models:/{name}/{version.version}", expected, folder)
        except ArtifactRefused as exc:
            raise ModelRefused(f"version {version.version} of {name!r}: {exc}") from None
        try:
            model = load_verified_folder(path)
        except Exception as exc:
            raise ModelRefused(
                f"version {version.version} of {name!r} cannot be loaded: {type(exc).__name__}: {exc}"
            ) from None
        try:
            smoke_test(model, path, usecase.task == "classification")
        except ModelRefused as exc:
            raise ModelRefused(f"version {version.version} of {name!r}: {exc}") from None
        threshold = decision_threshold(model) if usecase.task == "classification" else None
        score, runtime = choose_scorer(model, usecase, path)
        single = single_record_scorer(model, usecase, path) if runtime == "direct" else None
        numpy_pass = (
            linear_numpy_scorer(model, usecase, path, score)
            if runtime == "direct" and single is None
            else None
        )
        if numpy_pass is not None:  # every request, one record or a batch
            score, runtime, single = numpy_pass.score, numpy_pass.runtime, numpy_pass
        return ServedModel(
            alias=alias,
            version=str(version.version),
            run_id=version.run_id,
            candidate=(version.tags or {}).get("candidate"),
            model=model,
            threshold=threshold,
            digest=expected,
            folder=folder,
            score=score,
            runtime=runtime,
            single_record=single,
            features_config=(version.tags or {}).get(FEATURES_CONFIG_TAG) or None,
        )
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


@dataclass
class SlotState:
    """What the service knows about one alias."""

    served: ServedModel | None = None
    refused_version: str | None = None  # the version the alias points to that failed to load or verify
    error: str | None = None  # why (or why the registry could not be asked)
    checked_at: float | None = None
    failures: int = 0  # failed loads of refused_version in a row
    retry_at: float | None = None  # when refused_version is tried again (epoch seconds)

    def retry(self) -> dict[str, Any] | None:
        """The back-off of the refused version: failures so far, when it is tried next."""
        if self.refused_version is None or self.retry_at is None:
            return None
        return {
            "failures": self.failures,
            "next_retry_at": datetime.fromtimestamp(self.retry_at, UTC).isoformat(),
            "next_retry_in_s": round(max(0.0, self.retry_at - time.time()), 1),
        }


class ModelSlots:
    """The champion (required) and challenger (optional) slots, refreshed from the registry."""

    def __init__(
        self,
        usecase: UseCase,
        *,
        challenger: bool = False,
        retry_first_s: float = RETRY_FIRST_S,
        retry_max_s: float = RETRY_MAX_S,
    ) -> None:
        self.usecase = usecase
        self.retry_first_s, self.retry_max_s = retry_first_s, max(retry_first_s, retry_max_s)
        self.aliases = [CHAMPION_ALIAS, *([CHALLENGER_ALIAS] if challenger else [])]
        self.state = {alias: SlotState() for alias in self.aliases}
        self.reload_failures = 0
        self.reloads = 0
        self._lock = threading.Lock()  # one refresh at a time
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def served(self, alias: str) -> ServedModel | None:
        state = self.state.get(alias)
        return None if state is None else state.served

    def refresh(self) -> None:
        """Check every alias once; load and swap in a version that moved to it (see the module doc)."""
        from mlflow import MlflowClient

        with self._lock:
            client = MlflowClient()
            for alias in self.aliases:
                state = self.state[alias]
                state.checked_at = time.time()
                try:
                    version = version_by_alias(client, model_name(self.usecase), alias)
                except Exception as exc:  # keep serving what is loaded; report
                    state.error = (
                        f"the registry could not be asked for {alias!r}: {type(exc).__name__}: {exc}"
                    )
                    continue
                if version is None:
                    if alias != CHAMPION_ALIAS and state.served is not None:  # the challenger was removed
                        old, state.served = state.served, None
                        old.release()
                    state.error = f"no {alias!r} alias on {model_name(self.usecase)!r}"
                    continue
                number = str(version.version)
                if state.served is not None and state.served.version == number:
                    state.error, state.refused_version = None, None
                    continue
                if state.refused_version != number:  # a version not tried yet
                    state.failures, state.retry_at = 0, None
                elif state.retry_at is not None and time.time() < state.retry_at:
                    continue  # refused: reported, and tried again once its back-off has passed
                try:
                    loaded = load_verified(self.usecase, version, alias)
                except Exception as exc:
                    # ModelRefused: it failed verification (a tampered artifact keeps failing); another
                    # exception: the registry or artifact store failed mid-way (which a retry may get past)
                    error = (
                        str(exc)
                        if isinstance(exc, ModelRefused)
                        else f"loading version {number} failed: {type(exc).__name__}: {exc}"
                    )
                    self._refused(alias, state, number, error)
                    continue
                if state.failures:
                    log.warning("%s: version %s loaded after %d failures", alias, number, state.failures)
                old, state.served = state.served, loaded
                state.refused_version, state.error, state.failures, state.retry_at = None, None, 0, None
                self.reloads += 1
                if old is not None:
                    old.release()

    def _refused(self, alias: str, state: SlotState, number: str, error: str) -> None:
        """Record a failed load of ``number`` and when it is tried again (the back-off doubles each failure)."""
        self.reload_failures += 1
        state.refused_version, state.error = number, error
        state.failures += 1
        delay = min(self.retry_max_s, self.retry_first_s * 2 ** (state.failures - 1))
        state.retry_at = time.time() + delay
        log.warning(
            "%s: version %s not served (failure %d; tried again in %.0f s): %s",
            alias,
            number,
            state.failures,
            delay,
            error,
        )

    def start(self, every_s: float) -> None:
        """Refresh every ``every_s`` seconds in a daemon thread."""

        def loop() -> None:
            while not self._stop.wait(every_s):
                try:
                    self.refresh()
                except Exception as exc:  # never let the watcher die
                    self.state[CHAMPION_ALIAS].error = f"refresh failed: {type(exc).__name__}: {exc}"

        self._thread = threading.Thread(target=loop, name="mlops-model-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        for state in self.state.values():
            if state.served is not None:
                state.served.release()

    def report(self) -> dict[str, Any]:
        """Per alias: the version served, the version refused, why, and when it is tried again."""
        return {
            alias: {
                "served": None if state.served is None else state.served.describe(),
                "refused_version": state.refused_version,
                "error": state.error,
                "retry": state.retry(),
            }
            for alias, state in self.state.items()
        }
