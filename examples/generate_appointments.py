"""Generate the data of the `appointment_no_show` example use case (config/usecases/appointment_no_show.yaml).

A documented generator, seeded so every run gives the same files, shaped like the public "medical appointment
no-shows" data: clinic appointments booked ahead, each with the patient's gender and age band (sensitive
attributes: evaluated and gated for fairness, never model inputs), and an attendance record that arrives after
the appointment with ``no_show`` as ``YES`` or ``NO`` (a few records lack it). Whether a patient misses an
appointment depends on the lead time, an SMS reminder, the clinic, the weekday, the hour and the age band, with
noise, so models can learn something but not everything.

Writes one file per source for the whole period, as a download would be; ``mlops land`` splits them by day:

    .venv/bin/python examples/generate_appointments.py /tmp/appointments --from 2024-01-01 --to 2024-02-29
    .venv/bin/mlops land --usecase appointment_no_show --arrived-at declared /tmp/appointments
    .venv/bin/mlops run --usecase appointment_no_show --from 2024-01-01 --to 2024-02-29
"""

from __future__ import annotations

import argparse
from datetime import date, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

TIMEZONE = "America/Sao_Paulo"
CLINICS = {"CENTRO": 0.0, "JARDIM": 0.35, "PRAIA": -0.25, "MORRO": 0.6, "PORTO": 0.1}
SPECIALTIES = ["general", "dental", "pediatrics", "cardiology"]
AGE_BANDS = {"0-17": 0.1, "18-29": 0.45, "30-49": 0.1, "50-69": -0.2, "70+": -0.1}
ROWS_PER_DAY = 420


def generate(first: date, last: date, seed: int = 7) -> dict[str, pd.DataFrame]:
    """The appointments scheduled from ``first`` to ``last`` and their attendance records."""
    rng = np.random.default_rng(seed)
    zone = ZoneInfo(TIMEZONE)
    appointments, attendance = [], []
    next_id = 100_000
    day = first
    while day <= last:
        rows = ROWS_PER_DAY if day.weekday() < 5 else ROWS_PER_DAY // 4
        hours = rng.integers(7, 19, rows)
        minutes = rng.choice([0, 15, 30, 45], rows)
        local = [
            pd.Timestamp(day.year, day.month, day.day, int(h), int(m), tz=zone)
            for h, m in zip(hours, minutes, strict=True)
        ]
        clinic = rng.choice(list(CLINICS), rows, p=[0.3, 0.25, 0.2, 0.15, 0.1])
        age_band = rng.choice(list(AGE_BANDS), rows, p=[0.2, 0.2, 0.3, 0.2, 0.1])
        gender = rng.choice(["F", "M"], rows, p=[0.62, 0.38])
        lead_days = rng.geometric(0.12, rows) - 1
        sms = (rng.random(rows) < 0.45).astype(int)
        logit = (
            -2.3
            + 0.05 * np.minimum(lead_days, 60)
            - 1.0 * sms
            + np.array([CLINICS[c] for c in clinic])
            + np.array([AGE_BANDS[a] for a in age_band])
            + 0.25 * (day.weekday() == 0)
            + 0.03 * (hours - 12)
            + rng.normal(0, 0.3, rows)
        )
        no_show = rng.random(rows) < 1 / (1 + np.exp(-logit))
        ids = np.arange(next_id, next_id + rows)
        next_id += rows
        utc = [t.tz_convert("UTC").strftime("%Y-%m-%dT%H:%M:%SZ") for t in local]
        appointments.append(
            pd.DataFrame(
                {
                    "appointment_id": ids,
                    "patient_id": rng.integers(1, 40_000, rows),
                    "clinic": clinic,
                    "specialty": rng.choice(SPECIALTIES, rows),
                    "gender": gender,
                    "age_band": age_band,
                    "lead_days": lead_days,
                    "sms_reminder": sms,
                    "scheduled_at": utc,
                }
            )
        )
        label = np.where(no_show, "YES", "NO").astype(object)
        label[rng.random(rows) < 0.01] = ""  # the clinic did not record it: no label (missing_outcome: drop)
        attendance.append(pd.DataFrame({"appointment_id": ids, "scheduled_at": utc, "no_show": label}))
        day += timedelta(days=1)
    return {"appointments": pd.concat(appointments), "attendance": pd.concat(attendance)}


def write(folder: Path, first: date, last: date, seed: int = 7) -> list[Path]:
    """Write ``appointments_<first>_<last>.csv`` and ``attendance_<first>_<last>.csv`` into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for source, frame in generate(first, last, seed).items():
        path = folder / f"{source}_{first}_{last}.csv"
        frame.to_csv(path, index=False)
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--from", dest="first", type=date.fromisoformat, default=date(2024, 1, 1))
    parser.add_argument("--to", dest="last", type=date.fromisoformat, default=date(2024, 2, 29))
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    for path in write(args.folder, args.first, args.last, args.seed):
        print(path)


if __name__ == "__main__":
    main()
