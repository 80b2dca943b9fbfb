"""File checksums: a file's sha256, and the sha256 a bundle's ``large_files.yml`` lists for one of its files."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import yaml


def sha256_file(path: str | os.PathLike) -> str:
    """The file's sha256, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def large_file_entries(path: str | os.PathLike) -> list[dict]:
    """The entries (``path``, ``url``, ``hash_val``, ``hash_type``) of a bundle's ``large_files.yml``."""
    return (yaml.safe_load(Path(path).read_text()) or {}).get("large_files", [])


def listed_sha256(large_files: Path, path: Path) -> str | None:
    """The sha256 that ``large_files.yml`` lists for ``path`` (its paths are relative to its folder)."""
    for entry in large_file_entries(large_files):
        if (large_files.parent / str(entry.get("path", ""))).resolve() == path.resolve():
            return str(entry.get("hash_val") or "") or None
    return None
