"""Synthetic head CT: haemorrhage phantoms, follow-up scans and cohorts with known truth.

See docs/synthetic-data.md for the anatomy, lesion and outcome models.
"""

from .cohort import bayes_optimal_auc, sample_cohort_arrays, sample_cohort_table
from .cohort_io import make_cohort
from .lesion import SITES, Markers
from .study import StudyTruth, make_study

__all__ = [
    "SITES",
    "Markers",
    "StudyTruth",
    "bayes_optimal_auc",
    "make_cohort",
    "make_study",
    "sample_cohort_arrays",
    "sample_cohort_table",
]
