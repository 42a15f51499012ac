"""Quality checks around the models: is this a scan the model was made for, and is its answer
plausible? (docs/qa.md)

Inputs: a :class:`~dicomnode.domain.CTVolume` (input checks), then its
:class:`~dicomnode.domain.LabelMap` and :class:`~dicomnode.domain.Measurements` (output checks),
and optionally a second reader's label map. Outputs: :class:`~dicomnode.domain.QAReport`.
Side effects: none. The policy (which failures refuse and which only warn) is
``[qa] warn_only``; ``QAReport.status`` is the worst outcome.
"""

from dicomnode.qa.input_checks import input_checks
from dicomnode.qa.output_checks import output_checks
from dicomnode.qa.second_reader import compare_readers

__all__ = ["compare_readers", "input_checks", "output_checks"]
