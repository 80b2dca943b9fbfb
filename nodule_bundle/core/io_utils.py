"""Atomic output: a file appears whole or not at all, and inputs are never opened for writing."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib
from isal import igzip


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it and rename it over ``path``.

    The temporary name keeps the target's suffixes (``.nii.gz``), so writers that choose their format
    by extension write the right one. The file gets the usual permissions (``0o666`` less the umask),
    not the private ones of a temporary file.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(target.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name[: len(target.name) - len(suffix)]}.", suffix=suffix, dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp_path, 0o666 & ~_UMASK)
        os.replace(tmp_path, target)
    finally:
        tmp_path.unlink(missing_ok=True)


def _read_umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it: done once, at import, not per write
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2) + "\n")


def save_nifti_atomic(image: nib.Nifti1Image, path: str | os.PathLike) -> None:
    """``nib.save(image, path)``, atomically, with the qform and sform set to ``image.affine`` (code 1,
    scanner anatomy, as MONAI's writer sets them); a ``.gz`` file compressed by ISA-L's ``igzip`` (the
    same gzip format as nibabel's, at its level 1, about 15x faster than zlib)."""
    image.set_qform(image.affine, code=1)
    image.set_sform(image.affine, code=1)
    with atomic_path(path) as tmp:
        if tmp.name.endswith(".gz"):
            with igzip.open(tmp, "wb", compresslevel=1) as file:
                image.to_stream(file)
        else:
            nib.save(image, tmp)
