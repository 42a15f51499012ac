"""Image columns of the HE/PSE feature table (``img_*``): the lesion-centred slice stack.

Image presets take the CT planes around the largest ICH cross-section, plus the lesion mask, as
flattened columns named ``img_c<C>x<H>x<W>_<i>``; the same function makes them for a training
table (``dicomnode.lab``) and for one served study, so the two cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dicomnode.domain import CTVolume, LabelMap


@dataclass(frozen=True)
class ImageSpec:
    """Image stack: planes ``offsets_mm`` from the largest cross-section, ``size`` pixels over
    ``crop_mm`` centred on the lesion; the ICH mask of the central plane is the last channel.

    Method C uses 0, +-1 and +-2 mm on thin slices; the default (0, +-5 mm) suits 5 mm studies.
    """

    offsets_mm: tuple[float, ...] = (-5.0, 0.0, 5.0)
    size: int = 32
    crop_mm: float = 80.0

    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self.offsets_mm) + 1, self.size, self.size)

    def column_names(self) -> list[str]:
        c, h, w = self.shape
        return [f"img_c{c}x{h}x{w}_{i}" for i in range(c * h * w)]


def image_stack(volume: CTVolume, labels: LabelMap, spec: ImageSpec) -> np.ndarray:
    """(C, S, S) float32 from :func:`dicomnode.predict.lesion_slices.deep_slices` (CT planes windowed to
    [0, 1], the ICH mask last); zeros when there is no ICH."""
    from dicomnode.predict.lesion_slices import deep_slices

    try:
        return deep_slices(volume, labels, offsets_mm=spec.offsets_mm, crop_mm=spec.crop_mm,
                           size_px=spec.size, mask_channel=True)
    except ValueError:
        return np.zeros(spec.shape, np.float32)


def image_features(volume: CTVolume, labels: LabelMap, spec: ImageSpec | None = None) -> dict[str, float]:
    """The ``img_*`` columns of one study (serving a preset that uses images): the flattened
    :func:`image_stack`, named like the training table's columns."""
    spec = spec or ImageSpec()
    return dict(zip(spec.column_names(), image_stack(volume, labels, spec).reshape(-1).tolist(), strict=True))
