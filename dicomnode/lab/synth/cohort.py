"""Cohort generative model: patients, clinical variables, image properties and outcomes.

Pure numbers (no images): 20,000 patients take well under a second. The outcome models are
logistic with fixed, documented coefficients (docs/synthetic-data.md), so a model trained on a
synthetic cohort can be scored against the truth, and the Bayes-optimal AUC (what a perfect
model of the true risk achieves) is known.
"""

from __future__ import annotations

import numpy as np

from .lesion import SITE_MAX_ML

SITE_PROBS = {
    "basal_ganglia": 0.36,
    "thalamus": 0.14,
    "lobar": 0.26,
    "lobar_subcortical": 0.09,
    "cerebellar": 0.10,
    "brainstem": 0.05,
}
SITE_MEDIAN_ML = {
    "basal_ganglia": 14.0,
    "thalamus": 8.0,
    "lobar": 22.0,
    "lobar_subcortical": 9.0,
    "cerebellar": 9.0,
    "brainstem": 3.5,
}

# logit P(HE) = intercept + sum(coef * feature); features defined in he_features().
HE_COEFS = {
    "intercept": -2.77,
    "log2_volume_per_10ml": 0.45,
    "heterogeneity": 1.60,
    "irregularity": 1.20,
    "log2_onset_to_ct_per_3h": -0.45,
    "anticoagulation": 1.00,
}
# logit P(PSE) = intercept + sum(coef * feature); the CAVE items with log-odds weights.
PSE_COEFS = {
    "intercept": -4.66,
    "cortical_involvement": 1.50,
    "volume_over_10ml": 0.90,
    "age_under_65": 0.80,
    "early_seizure": 1.70,
}
# logit P(early seizure within 7 days)
SEIZURE_COEFS = {"intercept": -3.40, "cortical_involvement": 1.60, "log2_volume_per_10ml": 0.30}
HE_ABS_ML, HE_REL = 6.0, 0.33  # clinical definition: growth > 6 mL or > 33 %


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _logit(p: np.ndarray) -> np.ndarray:
    return np.log(p / (1 - p))


def he_features(t: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Features of the HE model, in the order of HE_COEFS (without the intercept)."""
    return {
        "log2_volume_per_10ml": np.log2(t["volume_ml"] / 10.0),
        "heterogeneity": t["heterogeneity"],
        "irregularity": t["irregularity"],
        "log2_onset_to_ct_per_3h": np.log2(t["onset_to_ct_h"] / 3.0),
        "anticoagulation": t["anticoagulation"].astype(float),
    }


def pse_features(t: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Features of the PSE model, in the order of PSE_COEFS (without the intercept)."""
    return {
        "cortical_involvement": t["cortical_involvement"].astype(float),
        "volume_over_10ml": (t["volume_ml"] > 10.0).astype(float),
        "age_under_65": (t["age_y"] < 65).astype(float),
        "early_seizure": t["early_seizure"].astype(float),
    }


def _linear(coefs: dict[str, float], feats: dict[str, np.ndarray]) -> np.ndarray:
    return np.asarray(coefs["intercept"] + sum(coefs[k] * v for k, v in feats.items()), dtype=float)


def he_risk(t: dict[str, np.ndarray]) -> np.ndarray:
    """True probability of haematoma expansion for each patient."""
    return _sigmoid(_linear(HE_COEFS, he_features(t)))


def pse_risk(t: dict[str, np.ndarray]) -> np.ndarray:
    """True probability of post-stroke epilepsy for each patient."""
    return _sigmoid(_linear(PSE_COEFS, pse_features(t)))


def growth_ml(rng: np.random.Generator, volume_ml: np.ndarray, he: np.ndarray) -> np.ndarray:
    """Follow-up minus baseline volume, consistent with the drawn HE label.

    Growth of an HE patient clears the clinical threshold min(6 mL, 33 %) by at least 50 %;
    growth of a non-HE patient stays at least 40 % below it (room for voxelisation).
    """
    thr = np.minimum(HE_ABS_ML, HE_REL * volume_ml)
    grow = thr * (1.5 + rng.gamma(2.0, 0.6, volume_ml.shape))
    stable = thr * rng.uniform(-0.6, 0.6, volume_ml.shape)
    return np.where(he, np.minimum(grow, 150.0 - volume_ml), stable)


def sample_cohort_arrays(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Draw ``n`` ICH patients (numbers only) as a dict of equal-length arrays."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    rng = np.random.default_rng([seed, 7])
    sites = np.array(list(SITE_PROBS))
    site = rng.choice(sites, size=n, p=list(SITE_PROBS.values()))
    median = np.array([SITE_MEDIAN_ML[s] for s in site])
    cap = np.array([SITE_MAX_ML[s] for s in site])
    volume = np.clip(median * np.exp(rng.normal(0, 0.95, n)), 0.5, cap)
    age = np.clip(rng.normal(68, 12, n), 25, 95).round()
    sex = np.where(rng.random(n) < 0.58, "M", "F")
    cortical = site == "lobar"
    lv = np.log2(volume / 10.0)
    het = rng.beta(2.0, 3.0, n)
    irr = _sigmoid(_logit(np.clip(rng.beta(2.0, 3.0, n), 1e-3, 1 - 1e-3)) + 0.35 * lv)
    t: dict[str, np.ndarray] = {
        "patient_index": np.arange(n),
        "age_y": age,
        "sex": sex,
        "site": site,
        "cortical_involvement": cortical,
        "volume_ml": volume,
        "heterogeneity": het,
        "irregularity": irr,
        "blend_sign": rng.random(n) < _sigmoid(-3.0 + 3.0 * het),
        "black_hole_sign": rng.random(n) < _sigmoid(-3.4 + 3.0 * het),
        "swirl_sign": rng.random(n) < _sigmoid(-2.6 + 3.0 * het),
        "ivh": rng.random(n) < _sigmoid(-2.2 + 0.6 * lv + 1.0 * np.isin(site, ["thalamus", "basal_ganglia"])),
        "onset_to_ct_h": np.clip(3.0 * np.exp(rng.normal(0, 0.7, n)), 0.5, 24.0),
        "sbp_mmhg": np.clip(rng.normal(172, 26, n), 95, 260).round(),
        "anticoagulation": rng.random(n) < 0.15,
    }
    t["gcs"] = np.clip(
        np.rint(
            15
            - 1.2 * np.maximum(lv + 1, 0)
            - 2.0 * t["ivh"]
            - 2.0 * (site == "brainstem")
            + rng.normal(0, 1.5, n)
        ),
        3,
        15,
    )
    t["early_seizure"] = rng.random(n) < _sigmoid(
        _linear(SEIZURE_COEFS, {"cortical_involvement": cortical.astype(float), "log2_volume_per_10ml": lv})
    )
    t["p_he"] = he_risk(t)
    t["he"] = rng.random(n) < t["p_he"]
    t["p_pse"] = pse_risk(t)
    t["pse"] = rng.random(n) < t["p_pse"]
    t["followup_delay_h"] = rng.uniform(24.0, 72.0, n).round(1)
    t["followup_volume_ml"] = volume + growth_ml(rng, volume, t["he"])
    return t


def sample_cohort_table(n: int, seed: int = 0) -> list[dict]:
    """Draw ``n`` ICH patients (numbers only, no images) as a list of plain-Python rows."""
    t = sample_cohort_arrays(n, seed)
    keys = list(t)
    cols = [t[k].tolist() for k in keys]
    return [dict(zip(keys, row, strict=True)) for row in zip(*cols, strict=True)]


def expected_auc(p: np.ndarray) -> float:
    """AUC that the true risk ``p`` itself achieves, in expectation over the outcomes.

    This is the Bayes-optimal AUC: no model can rank better in expectation. Computed exactly
    from the risks (no outcome draws): sum over pairs of p_i (1 - p_j) [p_i > p_j].
    """
    p = np.asarray(p, dtype=float)
    # group equal risks (the PSE model has discrete strata): a tie counts one half
    _, inv = np.unique(p, return_inverse=True)
    group_neg = np.bincount(inv, weights=1 - p)
    below = np.concatenate([[0.0], np.cumsum(group_neg)[:-1]])
    neg_below = below[inv] + 0.5 * (group_neg[inv] - (1 - p))
    return float((p * neg_below).sum() / (p.sum() * (1 - p).sum()))


def bayes_optimal_auc(outcome: str, n: int = 200_000, seed: int = 12345) -> float:
    """Bayes-optimal AUC of ``'he'`` or ``'pse'`` on a large sample of the cohort model."""
    t = sample_cohort_arrays(n, seed)
    key = {"he": "p_he", "pse": "p_pse"}.get(outcome)
    if key is None:
        raise ValueError(f"outcome must be 'he' or 'pse', got {outcome!r}")
    return expected_auc(t[key])


def fit_logistic(x: np.ndarray, y: np.ndarray, n_iter: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """Maximum-likelihood logistic regression (Newton), intercept first; returns (beta, se)."""
    xd = np.column_stack([np.ones(len(x)), x])
    beta = np.zeros(xd.shape[1])
    for _ in range(n_iter):
        p = _sigmoid(xd @ beta)
        w = p * (1 - p)
        hess = xd.T @ (xd * w[:, None])
        step = np.linalg.solve(hess, xd.T @ (y - p))
        beta += step
        if np.abs(step).max() < 1e-10:
            break
    p = _sigmoid(xd @ beta)
    cov = np.linalg.inv(xd.T @ (xd * (p * (1 - p))[:, None]))
    return beta, np.sqrt(np.diag(cov))
