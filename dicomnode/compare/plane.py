"""The prior on the follow-up's key plane: what the comparison key image shows beside it.

The registration's transform maps prior (baseline) points to follow-up points, so its inverse
resamples the prior onto a plane of the follow-up's grid (CT linear, labels nearest neighbour).
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from dicomnode.domain import ICH, PriorPlane

_AIR_HU = -1024.0


def _largest_ich_slice(labels: sitk.Image) -> int | None:
    area = (sitk.GetArrayViewFromImage(labels) == ICH).sum(axis=(1, 2))
    return int(np.argmax(area)) if area.any() else None


def _mapped_ich_slice(prior_labels: sitk.Image, current: sitk.Image,
                      transform: sitk.Transform) -> int | None:
    """The follow-up slice holding the prior's ICH centroid (after registration)."""
    voxels = np.argwhere(sitk.GetArrayViewFromImage(prior_labels) == ICH)
    if voxels.size == 0:
        return None
    z, y, x = voxels.mean(axis=0)
    point = prior_labels.TransformContinuousIndexToPhysicalPoint((float(x), float(y), float(z)))
    index = current.TransformPhysicalPointToContinuousIndex(transform.TransformPoint(point))
    return int(np.clip(round(index[2]), 0, current.GetSize()[2] - 1))


def _plane_grid(image: sitk.Image, z: int) -> sitk.Image:
    """A one-slice image on slice ``z`` of ``image``'s grid."""
    nx, ny, _ = image.GetSize()
    ref = sitk.Image(nx, ny, 1, sitk.sitkFloat32)
    ref.SetSpacing(image.GetSpacing())
    ref.SetDirection(image.GetDirection())
    ref.SetOrigin(image.TransformIndexToPhysicalPoint((0, 0, int(z))))
    return ref


def prior_plane(prior_image: sitk.Image, prior_labels: sitk.Image, current: sitk.Image,
                transform: sitk.Transform | None, key_slice: int | None) -> PriorPlane:
    """The prior's CT and labels on slice ``key_slice`` of the follow-up's ``current`` grid.

    Without a key slice (no ICH at follow-up) the slice holding the prior's ICH centroid is
    used, else the middle one. Without a transform (failed registration) the prior's own
    largest-ICH slice is returned, ``registered`` False.
    """
    n = current.GetSize()[2]
    if transform is None:
        z0 = _largest_ich_slice(prior_labels)
        z0 = prior_image.GetSize()[2] // 2 if z0 is None else z0
        sx, sy = prior_image.GetSpacing()[:2]
        return PriorPlane(z=min(key_slice if key_slice is not None else n // 2, n - 1),
                          hu=sitk.GetArrayFromImage(prior_image)[z0].astype(np.float32),
                          labels=sitk.GetArrayFromImage(prior_labels)[z0].astype(np.uint8),
                          spacing_mm=(float(sy), float(sx)), registered=False)
    z = key_slice if key_slice is not None and 0 <= key_slice < n else None
    if z is None:
        z = _mapped_ich_slice(prior_labels, current, transform)
    z = n // 2 if z is None else z
    grid = _plane_grid(current, z)
    inverse = transform.GetInverse()
    hu = sitk.Resample(prior_image, grid, inverse, sitk.sitkLinear, _AIR_HU, sitk.sitkFloat32)
    lab = sitk.Resample(prior_labels, grid, inverse, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    sx, sy = current.GetSpacing()[:2]
    return PriorPlane(z=int(z), hu=sitk.GetArrayFromImage(hu)[0],
                      labels=sitk.GetArrayFromImage(lab)[0], spacing_mm=(float(sy), float(sx)),
                      registered=True)
