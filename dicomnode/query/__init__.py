"""Priors from the PACS: C-FIND the patient's earlier CT studies, choose the most relevant
study and its best head-CT series, C-MOVE it to the node (docs/followup.md).

A stage like the others: it imports no other stage. The pipeline passes it the rules it needs
(same patient, series eligibility) and records what it did.
"""

from dicomnode.query.choose import candidate_studies, choose_series, study_datetime
from dicomnode.query.retrieve import PriorRequest, retrieve_prior
from dicomnode.query.scu import Peer, SeriesMatch, StudyMatch

__all__ = ["Peer", "PriorRequest", "SeriesMatch", "StudyMatch", "candidate_studies",
           "choose_series", "retrieve_prior", "study_datetime"]
