"""Pictures of the nodules a report lists: three orthogonal views with the mask contour, a montage of
all of them, and the masks as a label map over the scan (for 3D Slicer).

Views come from :class:`~nodule_bundle.measuring.transforms.NoduleMeasured`'s crops (RAS-aligned, isotropic,
channel 0 HU, channel 1 mask) and are shown the radiological way: the patient's right on the image's
left, anterior (axial) or superior (coronal, sagittal) at the top.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from monai.data.utils import orientation_ras_lps
from monai.utils import SpaceKeys
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage as ndi

from nodule_bundle.core.io_utils import atomic_path, save_nifti_atomic
from nodule_bundle.measuring.transforms import label_map

PLANES = ("axial", "coronal", "sagittal")
CONTOUR_RGB = (255, 196, 0)
DISPLAY_WINDOW_HU = (-1000.0, 400.0)  # lung window; the nodule, vessels and chest wall all show
PNG_COMPRESS_LEVEL = 1  # zlib level: the montage is about 25 % larger and written twice as fast as at the default 6


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
    Image.fromarray(rgb).save(buffer, format="png", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


def write_montage(path: str | Path, tiles: Sequence[tuple[str, np.ndarray]], title: str, columns: int = 5, font_px: int = 12) -> None:
    """All nodules' axial views in one PNG on a white page, each under its caption (e.g. id, size,
    probability; lines split at ``\\n``), ``columns`` to a row, ``title`` at the top."""
    font = ImageFont.load_default(size=font_px)
    line_px, gap = font_px + 3, 8
    caption_lines = max([caption.count("\n") + 1 for caption, _ in tiles], default=1)
    tile_w = max([rgb.shape[1] for _, rgb in tiles], default=240)
    tile_h = max([rgb.shape[0] for _, rgb in tiles], default=line_px)
    cell_w, cell_h = tile_w + gap, tile_h + caption_lines * line_px + gap
    rows = max(1, -(-len(tiles) // columns))
    top = line_px + 2 * gap
    page = Image.new("RGB", (columns * cell_w + gap, top + rows * cell_h), "white")
    draw = ImageDraw.Draw(page)
    draw.text((page.width / 2, gap), title, fill="black", font=font, anchor="mt")
    for k, (caption, rgb) in enumerate(tiles):
        x, y = gap + (k % columns) * cell_w, top + (k // columns) * cell_h
        draw.multiline_text((x + tile_w / 2, y), caption, fill="black", font=font, anchor="ma", align="center", spacing=3)
        page.paste(Image.fromarray(rgb), (x + (tile_w - rgb.shape[1]) // 2, y + caption_lines * line_px))
    if not tiles:
        draw.text((page.width / 2, top), "no nodules reported", fill="black", font=font, anchor="mt")
    with atomic_path(path) as tmp:
        page.save(tmp, format="png", compress_level=PNG_COMPRESS_LEVEL)


def write_label_map(path: str | Path, crops: Sequence[MetaTensor], scan_meta: Mapping) -> None:
    """The masks of ``crops`` as a NIfTI label map (uint8) on the scan's own grid (``original_affine``
    and ``spatial_shape`` of the image as read), nodule ``i`` of the report labelled ``i + 1``.

    Saved with nibabel straight from :func:`~nodule_bundle.measuring.transforms.label_map`'s slice-by-slice
    array: MONAI's ``NibabelWriter`` makes a C-ordered copy that nibabel then transposes back slice by
    slice, which took 0.5 of the 0.8 s this file cost on a 512x512x300 scan. Compressed by ISA-L
    (:func:`~nodule_bundle.core.io_utils.save_nifti_atomic`: 0.01 s instead of zlib's 0.15 s)."""
    space = scan_meta.get("space", SpaceKeys.RAS)
    affine, shape = np.asarray(scan_meta["original_affine"], dtype=np.float64), [int(s) for s in np.asarray(scan_meta["spatial_shape"])]
    label = label_map(crops, shape, affine, space)
    ras_affine = np.asarray(label.affine, dtype=np.float64)
    image = nib.Nifti1Image(label.as_tensor()[0].numpy(), orientation_ras_lps(ras_affine) if space == SpaceKeys.LPS else ras_affine)
    save_nifti_atomic(image, path)
