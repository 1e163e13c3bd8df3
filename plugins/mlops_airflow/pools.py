"""Airflow pools of the lifecycle DAGs: ``<usecase>_train``, one slot, shared by the ``promote`` task of every
train DAG of the use case (``<uc>_train``, ``<uc>_train_nightly``), so two train runs never promote at the same
time. MLflow has no compare-and-set for an alias: promote reads the champion alias, checks it is still the
version the gate compared against, then sets it; the pool closes the window between the read and the set.

The scheduler never runs a task whose pool does not exist (it logs "Tasks using non-existent pool"), so the pools
are created where the metadata database is set up, after ``airflow db migrate``: ``python -m mlops_airflow.pools``
(the compose stack's ``airflow-init``, ``mlops ui``). ``dag.test`` runs tasks without checking pools (measured
with Airflow 3.3.2), so tests and the embedded demo need no pool, but creating them there does no harm.
"""

from __future__ import annotations

TRAIN_POOL_SLOTS = 1


def train_pool(usecase_name: str) -> str:
    """The pool the promote tasks of a use case's train DAGs share."""
    return f"{usecase_name}_train"


def ensure_pools(usecase_names: list[str] | None = None) -> dict[str, int]:
    """Create (or reset to one slot) the train pool of every use case (default: every valid file of
    config/usecases/); returns pool name -> slots. More than one slot would let two promotes overlap."""
    from airflow.models.pool import Pool
    from airflow.utils.session import create_session

    if usecase_names is None:
        from mlops_airflow.wiring import usecases

        usecase_names = [usecase.name for usecase in usecases()]
    pools = {}
    with create_session() as session:
        for name in usecase_names:
            pool = train_pool(name)
            Pool.create_or_update_pool(
                pool,
                slots=TRAIN_POOL_SLOTS,
                description=f"{name}: one promote of the champion alias at a time (train DAGs)",
                include_deferred=False,
                session=session,
            )
            pools[pool] = TRAIN_POOL_SLOTS
    return pools


if __name__ == "__main__":  # after `airflow db migrate`
    for created, slots in ensure_pools().items():
        print(f"pool {created}: {slots} slot(s)")
