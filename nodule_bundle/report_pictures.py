"""Pictures of the nodules a report lists: three orthogonal views with the mask contour, a montage of
all of them, and the masks as a label map over the scan (for 3D Slicer).

Views come from :class:`~nodule_bundle.transforms.NoduleMeasured`'s crops (RAS-aligned, isotropic,
channel 0 HU, channel 1 mask) and are shown the radiological way: the patient's right on the image's
left, anterior (axial) or superior (coronal, sagittal) at the top.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.image import imsave
from monai.data import MetaTensor, NibabelWriter
from scipy import ndimage as ndi

from nodule_bundle.io_utils import atomic_path
from nodule_bundle.transforms import label_map

PLANES = ("axial", "coronal", "sagittal")
CONTOUR_RGB = (255, 196, 0)
DISPLAY_WINDOW_HU = (-1000.0, 400.0)  # lung window; the nodule, vessels and chest wall all show


def _display(plane: np.ndarray) -> np.ndarray:
    """A ``[first axis, second axis]`` slice of a RAS crop turned to screen rows and columns."""
    return plane.T[::-1, ::-1]


def nodule_views(crop: torch.Tensor, zoom: int = 3) -> dict[str, np.ndarray]:
    """Axial, coronal and sagittal RGB views (uint8) of a ``[2, n, n, n]`` crop, each through the
    slice where the mask is largest (the centre if there is no mask), the mask's outline drawn on top."""
    hu, mask = np.asarray(crop[0], dtype=np.float32), np.asarray(crop[1]) > 0
    low, high = DISPLAY_WINDOW_HU
    gray = (np.clip((hu - low) / (high - low), 0.0, 1.0) * 255).astype(np.uint8)
    views = {}
    for axis, name in zip((2, 1, 0), PLANES):
        areas = mask.sum(axis=tuple(a for a in range(3) if a != axis))
        index = int(np.argmax(areas)) if areas.any() else hu.shape[axis] // 2
        g, m = (_display(np.take(a, index, axis=axis)) for a in (gray, mask))
        rgb = np.repeat(np.repeat(np.stack([g] * 3, axis=-1), zoom, axis=0), zoom, axis=1)
        big = np.repeat(np.repeat(m, zoom, axis=0), zoom, axis=1)
        rgb[big & ~ndi.binary_erosion(big, iterations=max(zoom // 2, 1))] = CONTOUR_RGB
        views[name] = rgb
    return views


def png_bytes(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    imsave(buffer, rgb, format="png")
    return buffer.getvalue()


def write_montage(path: str | Path, tiles: Sequence[tuple[str, np.ndarray]], title: str, columns: int = 5) -> None:
    """All nodules' axial views in one PNG, each titled (e.g. id, size, probability)."""
    rows = max(1, -(-len(tiles) // columns))
    height = 2.5 * rows + 0.4
    fig = Figure(figsize=(2.2 * columns, height), dpi=100)
    axes = np.atleast_1d(fig.subplots(rows, columns, gridspec_kw={"left": 0.01, "right": 0.99, "bottom": 0.01, "top": 1 - 0.85 / height,
                                                                  "hspace": 0.35, "wspace": 0.05})).ravel()  # fmt: skip
    for ax in axes:
        ax.axis("off")
    for ax, (caption, rgb) in zip(axes, tiles):
        ax.imshow(rgb)
        ax.text(0.5, 1.02, caption, fontsize=8, ha="center", va="bottom", transform=ax.transAxes)  # cheaper to lay out than titles
    if not tiles:
        axes[0].text(0.5, 0.5, "no nodules reported", ha="center", va="center")
    fig.suptitle(title, fontsize=10, y=1 - 0.1 / height, va="top")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def write_label_map(path: str | Path, crops: Sequence[MetaTensor], scan_meta: Mapping) -> None:
    """The masks of ``crops`` as a NIfTI label map on the scan's own grid (``original_affine`` and
    ``spatial_shape`` of the image as read), nodule ``i`` of the report labelled ``i + 1``."""
    affine, shape = np.asarray(scan_meta["original_affine"], dtype=np.float64), [int(s) for s in np.asarray(scan_meta["spatial_shape"])]
    label = label_map(crops, shape, affine, scan_meta.get("space", "RAS"))
    writer = NibabelWriter(output_dtype=np.uint8)
    writer.set_data_array(label, channel_dim=0)
    writer.set_metadata({"affine": label.affine, "original_affine": label.affine, "space": scan_meta.get("space", "RAS")}, resample=False)
    with atomic_path(path) as tmp:
        writer.write(str(tmp), verbose=False)
