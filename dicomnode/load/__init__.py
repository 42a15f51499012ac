"""Load stage: stored instances -> a CT volume in HU with exact geometry.

``load_series`` builds a :class:`~dicomnode.domain.CTVolume`; ``to_source_grid`` takes a label
map on that volume back onto the source image planes. See docs/loading.md.
"""

from .volume import load_series

__all__ = ["load_series"]
