"""Follow-up scans: matching to the patient's earlier scans, rigid registration and change.

``compare`` gets the prior's stored results from the pipeline, never by calling an earlier
stage (docs/architecture.md).
"""

from dicomnode.compare.change import (
    ExpansionRule,
    compare_scans,
    compare_with_plane,
    compartment_volumes_ml,
)
from dicomnode.compare.matching import (
    ScanKey,
    choose_priors,
    in_order,
    patient_key,
    same_patient,
    scan_datetime,
)
from dicomnode.compare.register import register_rigid

__all__ = ["ExpansionRule", "ScanKey", "choose_priors", "compare_scans", "compare_with_plane",
           "compartment_volumes_ml", "in_order", "same_patient", "patient_key", "register_rigid",
           "scan_datetime"]
