"""Realistic synthetic three-party demo data (insurer, hospital, statistics bureau).

The joint population is ``n_core`` IBD patients known to all three parties; each party also holds
people the others do not know, so table sizes are uneven and the overlap is partial. A known app
effect on healthcare costs is planted (see :data:`PLANTED_EFFECT`).

The hospital also records, per patient, ``followup_days`` (whole days 1..730 from the index visit
to the first readmission or to the end of follow-up) and ``readmitted`` (True: readmitted on that
day; False: censored, i.e. still not readmitted when follow-up ended). Both are complete (no missing
values). App users are readmitted later: see :data:`PLANTED_SURVIVAL`. These columns come from a
separate random generator (``seed + 1000``), so every other column is identical to the data
generated before they were added.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

LINK = "pseudonym"
REGIONS = ("North", "East", "South", "West", "Central")
REGION_P = (0.22, 0.20, 0.24, 0.19, 0.15)
EDUCATION = ("low", "medium", "high")
INCOME_BANDS = ("Q1", "Q2", "Q3", "Q4", "Q5")
HOUSEHOLDS = ("single", "couple", "family", "other")
HOUSEHOLD_P = (0.32, 0.30, 0.36, 0.02)
COST_TREND = 0.04
COST_PER_ADMISSION = 600.0
APP_SAVING = {"Q1": 50.0, "Q2": 150.0, "Q3": 300.0, "Q4": 450.0, "Q5": 600.0}
MEAN_INTENSITY = 3.0
FOLLOWUP_DAYS = 730
READMISSION_DAYS = 900.0  # mean days to readmission of a non-user at average activity
APP_HAZARD_RATIO = 0.6
DROPOUT_DAYS = 2500.0  # mean days to loss to follow-up

PLANTED_EFFECT = """\
Planted effect (ppa_kernel.analyst.synthetic.generate): among the IBD patients known to all three
parties, yearly healthcare costs follow a general trend of +4% from 2020 to 2021
(cost_2021 = base * 1.04 + 600 euro per admission + noise). Patients enrolled in the hospital's
eHealth app (app_user) additionally save, in 2021, an amount set by their income band (bureau):
Q1 50, Q2 150, Q3 300, Q4 450, Q5 600 euro, scaled per person by app use intensity
(factor 0.5 + 0.5 * logins per week / 3, on average 1). Non-users follow the trend only, so the
planted difference in mean cost change (cost_2021 - cost_2020) between app users and non-users is
-50 (Q1), -150 (Q2), -300 (Q3), -450 (Q4) and -600 euro (Q5). Because education drives income,
the saving also looks larger for higher education. App enrolment is likelier for higher
education and younger patients and rare in 'other' households.
At the defaults (n_core=4200, seed=7) the three-way join has 4200 people (1521 app users); the
mean cost change of non-users is +145 euro overall (+114 to +178 per band) and the realised
differences (users minus non-users) are -81 (Q1), -99 (Q2), -274 (Q3), -408 (Q4) and -610 euro (Q5).
Only 8 app users live in an 'other' household (0 to 3 per income band), so these cells must be
suppressed at a minimum cell size of 10.
"""

PLANTED_SURVIVAL = """\
Planted survival effect (hospital: followup_days, readmitted): days to the first readmission are
exponential with hazard exp(0.15 * (disease_activity - 3)) / 900 per day, times 0.6 for app users
(hazard ratio 0.6: app users are readmitted later). Follow-up ends at a random loss to follow-up
(exponential, mean 2500 days) or at 730 days, whichever is first; readmitted is False (censored)
when follow-up ended before readmission. followup_days is the whole number of days (rounded up,
1..730) to the readmission or the end of follow-up.
At the defaults (n_core=4200, seed=7) the three-way join has 4200 people, of whom 1967 were
readmitted; the Kaplan-Meier estimate of the share not yet readmitted after 365 days is 0.62 for
non-users and 0.76 for app users (log-rank chi-square 115.8 on 1 df, p < 1e-20).
"""


def generate(
    n_core: int = 4200,
    seed: int = 7,
    *,
    insurer_extra: float = 1.5,
    bureau_extra: float = 2.5,
    hospital_extra: float = 0.15,
) -> dict[str, pd.DataFrame]:
    """Generate the insurer, hospital and bureau tables, linked by the ``pseudonym`` column.

    ``n_core`` people are at all three parties; the insurer adds ``round(n_core*insurer_extra)``
    people (also known to the bureau as far as ``bureau_extra`` allows), the bureau adds
    ``round(n_core*bureau_extra)`` people in total and the hospital ``round(n_core*hospital_extra)``
    people only it knows. Deterministic for a given seed.
    """
    if n_core < 1 or min(insurer_extra, bureau_extra, hospital_extra) < 0:
        raise ValueError("n_core must be positive and the extra fractions non-negative")
    rng = np.random.default_rng(seed)
    survival_rng = np.random.default_rng(seed + 1000)  # separate: other columns stay as they were
    groups = _group_sizes(n_core, insurer_extra, bureau_extra, hospital_extra)
    people = _people(rng, groups)
    people = _add_clinical(rng, people)
    people = _add_costs(rng, people)
    frames = {
        "insurer": _insurer(people),
        "hospital": _hospital(rng, people, survival_rng),
        "bureau": _bureau(people),
    }
    frames = {name: _shuffle(rng, frame) for name, frame in frames.items()}
    logger.info("generated synthetic data: %s", {k: len(v) for k, v in frames.items()})
    return frames


def write_demo_data(
    folder: str | Path, n_core: int = 4200, seed: int = 7, fmt: str = "csv"
) -> dict[str, Path]:
    """Write insurer.csv, hospital.csv (hospital.parquet if ``fmt="mixed"``) and bureau.csv."""
    if fmt not in ("csv", "mixed"):
        raise ValueError(f"fmt must be 'csv' or 'mixed', not {fmt!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for name, frame in generate(n_core, seed).items():
        if name == "hospital" and fmt == "mixed":
            paths[name] = folder / f"{name}.parquet"
            frame.to_parquet(paths[name], index=False)
        else:
            paths[name] = folder / f"{name}.csv"
            frame.to_csv(paths[name], index=False)
    logger.info("wrote demo data to %s", folder)
    return paths


# --------------------------------------------------------------------------- population


def party_rows(n_core: int = 4200, *, insurer_extra: float = 1.5, bureau_extra: float = 2.5,
               hospital_extra: float = 0.15) -> dict[str, int]:
    """Rows per party that :func:`generate` makes for these arguments, without making them."""
    groups = _group_sizes(n_core, insurer_extra, bureau_extra, hospital_extra)
    return {"insurer": n_core + groups["insurer_bureau"] + groups["insurer_only"],
            "hospital": n_core + groups["hospital_only"],
            "bureau": n_core + groups["insurer_bureau"] + groups["bureau_only"]}


def _group_sizes(
    n_core: int, insurer_extra: float, bureau_extra: float, hospital_extra: float
) -> dict[str, int]:
    """Sizes of the disjoint groups: core, insurer+bureau, insurer only, bureau only, hospital."""
    n_insurer = round(n_core * insurer_extra)
    n_bureau = round(n_core * bureau_extra)
    shared = min(n_insurer, n_bureau)
    return {
        "core": n_core,
        "insurer_bureau": shared,
        "insurer_only": n_insurer - shared,
        "bureau_only": n_bureau - shared,
        "hospital_only": round(n_core * hospital_extra),
    }


def _pseudonyms(rng: np.random.Generator, n: int) -> np.ndarray:
    width = max(7, len(str(20 * n)))
    numbers = rng.choice(10**width, size=n, replace=False)
    return np.array([f"P{k:0{width}d}" for k in numbers])


def _people(rng: np.random.Generator, groups: dict[str, int]) -> pd.DataFrame:
    """One row per person with group membership and demographics."""
    group = np.repeat(list(groups), list(groups.values()))
    n = len(group)
    ibd = np.isin(group, ("core", "hospital_only"))
    age = np.where(ibd, rng.normal(44, 15, n), rng.normal(48, 18, n))
    age = np.clip(np.round(age), 18, 90).astype(int)
    education = _education(rng, age)
    return pd.DataFrame(
        {
            LINK: _pseudonyms(rng, n),
            "group": group,
            "ibd": ibd,
            "age": age,
            "sex": rng.choice(["F", "M"], size=n, p=[0.52, 0.48]),
            "region": rng.choice(REGIONS, size=n, p=REGION_P),
            "education": np.asarray(EDUCATION)[education],
            "income_band": _income_band(rng, education, age),
            "household": rng.choice(HOUSEHOLDS, size=n, p=HOUSEHOLD_P),
        }
    )


def _education(rng: np.random.Generator, age: np.ndarray) -> np.ndarray:
    """Education level code 0/1/2 (low/medium/high); younger people are more educated."""
    latent = -0.015 * (age - 45) + rng.normal(0, 1, len(age))
    return np.digitize(latent, [-0.5, 0.6])


def _income_band(rng: np.random.Generator, education: np.ndarray, age: np.ndarray) -> np.ndarray:
    """Income quintile correlated with education and (mildly, concave) with age."""
    latent = 0.9 * education - 0.0006 * (age - 50) ** 2 + rng.normal(0, 1, len(age))
    cuts = np.quantile(latent, [0.2, 0.4, 0.6, 0.8])
    return np.asarray(INCOME_BANDS)[np.digitize(latent, cuts)]


def _add_clinical(rng: np.random.Generator, people: pd.DataFrame) -> pd.DataFrame:
    """Diagnosis, disease activity, visits and app enrolment / use."""
    n = len(people)
    crohn = rng.random(n) < 0.55
    people["diagnosis"] = np.where(people["ibd"], np.where(crohn, "Crohn", "UC"), "Other")
    activity_p = rng.beta(3, 6, n) + 0.05 * crohn
    people["disease_activity"] = rng.binomial(10, np.clip(activity_p, 0, 1))
    people["outpatient_visits"] = rng.poisson(2 + 0.5 * people["disease_activity"])
    education = people["education"].map({e: i for i, e in enumerate(EDUCATION)}).to_numpy()
    logit = (
        -0.55
        + 0.35 * (education - 1)
        - 0.02 * (people["age"].to_numpy() - 44)
        - 2.3 * (people["household"].to_numpy() == "other")
    )
    people["app_user"] = people["ibd"].to_numpy() & (rng.random(n) < 1 / (1 + np.exp(-logit)))
    intensity = rng.gamma(3.0, MEAN_INTENSITY / 3.0, n)
    people["true_intensity"] = np.where(people["app_user"], intensity, 0.0)
    return people


def _add_costs(rng: np.random.Generator, people: pd.DataFrame) -> pd.DataFrame:
    """Yearly admissions and right-skewed costs with trend and the planted app saving."""
    n = len(people)
    ibd = people["ibd"].to_numpy()
    activity = people["disease_activity"].to_numpy()
    base = np.where(
        ibd,
        600 + rng.lognormal(np.log(1800) + 0.08 * activity, 0.7, n),
        100 + rng.lognormal(np.log(900), 0.9, n),
    )
    rate = np.where(ibd, 0.05 + 0.03 * activity, 0.06)
    adm_2020 = rng.poisson(rate, n)
    adm_2021 = rng.binomial(adm_2020, 0.4) + rng.poisson(0.6 * rate, n)  # persistent, same mean
    saving = people["income_band"].map(APP_SAVING).to_numpy() * (
        0.5 + 0.5 * people["true_intensity"].to_numpy() / MEAN_INTENSITY
    )
    saving = np.where(people["app_user"], saving, 0.0)
    cost_2020 = base + COST_PER_ADMISSION * adm_2020
    cost_2021 = base * (1 + COST_TREND) + COST_PER_ADMISSION * adm_2021
    cost_2021 = np.maximum(cost_2021 + rng.normal(0, 150, n) - saving, 0.1 * base)
    cost_2021[rng.random(n) < 0.02] = np.nan
    people["admissions_2020"], people["admissions_2021"] = adm_2020, adm_2021
    people["cost_2020"], people["cost_2021"] = np.round(cost_2020, 2), np.round(cost_2021, 2)
    return people


# --------------------------------------------------------------------------- party tables


def _members(people: pd.DataFrame, *groups: str) -> pd.DataFrame:
    return people[people["group"].isin(groups)]


def _insurer(people: pd.DataFrame) -> pd.DataFrame:
    columns = [LINK, "age", "sex", "region", "diagnosis", "cost_2020", "cost_2021"]
    columns += ["admissions_2020", "admissions_2021"]
    return _members(people, "core", "insurer_bureau", "insurer_only")[columns]


def _hospital(rng: np.random.Generator, people: pd.DataFrame,
              survival_rng: np.random.Generator) -> pd.DataFrame:
    frame = _members(people, "core", "hospital_only")
    users = frame["app_user"].to_numpy()
    intensity = np.round(frame["true_intensity"].to_numpy(), 1)
    intensity[users & (rng.random(len(frame)) < 0.03)] = np.nan
    activity = pd.array(frame["disease_activity"].to_numpy(), dtype="Int64")
    activity[rng.random(len(frame)) < 0.02] = pd.NA
    return pd.DataFrame(
        {
            LINK: frame[LINK].to_numpy(),
            "app_user": users,
            "app_use_intensity": intensity,
            "outpatient_visits": frame["outpatient_visits"].to_numpy(),
            "disease_activity": activity,
            **_readmission(survival_rng, frame),
        }
    )


def _readmission(rng: np.random.Generator, frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """Days to first readmission or censoring, and whether it was a readmission."""
    n = len(frame)
    hazard = np.exp(0.15 * (frame["disease_activity"].to_numpy() - 3)) / READMISSION_DAYS
    hazard = hazard * np.where(frame["app_user"].to_numpy(), APP_HAZARD_RATIO, 1.0)
    readmission = rng.exponential(1 / hazard)
    end = np.minimum(rng.exponential(DROPOUT_DAYS, n), FOLLOWUP_DAYS)
    days = np.clip(np.ceil(np.minimum(readmission, end)), 1, FOLLOWUP_DAYS).astype(np.int64)
    return {"followup_days": days, "readmitted": readmission <= end}


def _bureau(people: pd.DataFrame) -> pd.DataFrame:
    columns = [LINK, "education", "income_band", "household"]
    return _members(people, "core", "insurer_bureau", "bureau_only")[columns]


def _shuffle(rng: np.random.Generator, frame: pd.DataFrame) -> pd.DataFrame:
    return frame.iloc[rng.permutation(len(frame))].reset_index(drop=True)
