"""Bundle files on disk: the sha256 manifest, and zip archives checked entry by entry before extraction.

The manifest is ``manifest.sha256`` at the bundle root in ``sha256sum`` format (``<hex>  <path>``),
so ``sha256sum -c manifest.sha256`` checks it too. A zip is refused before anything is written when an
entry is absolute, climbs out with ``..``, is a symlink or a duplicate, or the archive would unpack
to more than :data:`MAX_UNPACKED_BYTES` or at a compression ratio beyond :data:`MAX_RATIO` (a zip bomb).
"""

from __future__ import annotations

import os
import stat
import zipfile
from pathlib import Path, PurePosixPath

from nodule_bundle.core.checksums import sha256_file
from nodule_bundle.core.errors import NoduleBundleError

MANIFEST = "manifest.sha256"
MAX_UNPACKED_BYTES = 4 * 1024**3
MAX_RATIO = 200.0


class BundleArchiveError(NoduleBundleError):
    """An archive or bundle folder that must not be unpacked or trusted."""


def bundle_files(root: str | os.PathLike) -> list[str]:
    """Every regular file and symlink under ``root`` as a sorted POSIX path, the manifest excepted."""
    root = Path(root)
    found = (p for p in root.rglob("*") if p.is_symlink() or p.is_file())
    return sorted(p.relative_to(root).as_posix() for p in found if p.relative_to(root).as_posix() != MANIFEST)


def write_manifest(root: str | os.PathLike) -> Path:
    """Hash every file of the bundle at ``root`` into ``manifest.sha256``."""
    root = Path(root)
    lines = [f"{sha256_file(root / name)}  {name}\n" for name in bundle_files(root)]
    path = root / MANIFEST
    path.write_text("".join(lines))
    return path


def read_manifest(root: str | os.PathLike) -> dict[str, str]:
    """``{path: sha256}`` from the bundle's manifest; a malformed line raises naming the line."""
    path = Path(root) / MANIFEST
    entries = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64 or not name:
            raise BundleArchiveError(f"{path}:{number}: not a '<sha256>  <path>' line")
        entries[name] = digest
    return entries


def manifest_problems(root: str | os.PathLike) -> list[str]:
    """Files that differ from the manifest (tampered or corrupt), are missing, or are not listed."""
    root = Path(root)
    if not (root / MANIFEST).is_file():
        return [f"{MANIFEST}: missing"]
    listed, present = read_manifest(root), set(bundle_files(root))
    problems = [f"{name}: listed in {MANIFEST} but missing" for name in sorted(set(listed) - present)]
    problems += [f"{name}: not listed in {MANIFEST}" for name in sorted(present - set(listed))]
    for name in sorted(present & set(listed)):
        if (root / name).is_symlink():
            problems.append(f"{name}: a symlink")
        elif sha256_file(root / name) != listed[name]:
            problems.append(f"{name}: sha256 differs from {MANIFEST} (tampered or corrupt)")
    return problems


def zip_problems(path: str | os.PathLike) -> list[str]:
    """Why the zip at ``path`` must not be extracted (empty when it is safe); reads only its directory."""
    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, OSError) as e:
        return [f"{path}: not a readable zip archive ({e})"]
    problems, seen, total, packed = [], set(), 0, 0
    for info in entries:
        name = info.filename
        parts = PurePosixPath(name.replace("\\", "/")).parts
        if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
            problems.append(f"{name}: absolute path in the archive")
        elif ".." in parts:
            problems.append(f"{name}: path climbs out of the bundle ('..')")
        if stat.S_ISLNK(info.external_attr >> 16):
            problems.append(f"{name}: a symlink")
        if name in seen:
            problems.append(f"{name}: appears twice in the archive")
        seen.add(name)
        total, packed = total + info.file_size, packed + info.compress_size
    if total > MAX_UNPACKED_BYTES:
        problems.append(f"{path}: would unpack to {total / 1024**3:.1f} GiB (limit {MAX_UNPACKED_BYTES / 1024**3:.0f} GiB)")
    elif packed and total / packed > MAX_RATIO:
        problems.append(f"{path}: compression ratio {total / packed:.0f}:1 (a zip bomb?; limit {MAX_RATIO:.0f}:1)")
    return problems


def safe_extract(path: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Extract the zip at ``path`` into ``dest`` after :func:`zip_problems` found nothing; else raise."""
    problems = zip_problems(path)
    if problems:
        raise BundleArchiveError(f"{path}: refused before extraction: " + "; ".join(problems))
    dest = Path(dest)
    with zipfile.ZipFile(path) as archive:
        archive.extractall(dest)
    return dest


def write_zip(root: str | os.PathLike, path: str | os.PathLike) -> None:
    """Zip every file under ``root`` (paths relative to it, fixed timestamps: same bundle, same bytes)."""
    root = Path(root)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name in [*bundle_files(root), MANIFEST]:
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, (root / name).read_bytes())
