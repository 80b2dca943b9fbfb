"""``nodule-bundle verify``: every check a received bundle must pass before a site runs it.

A zip is checked entry by entry before anything is extracted. Then, without running any of the
bundle's code: the required files, the sha256 manifest, file sizes against ``large_files.yml``,
``metadata.json`` against the schema written from the MONAI bundle specification, the changelog,
the output channels, absolute paths in the configs and a ``weights_only`` load of the weights. Only
when all of these pass are the configs evaluated (their ``$`` expressions are Python): MONAI's
``verify_net_in_out``, the weights in the network and the TorchScript round trip, in a subprocess
that imports the bundle's own copy of the code.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import yaml

from nodule_bundle.apps.sharing import network_checks
from nodule_bundle.apps.sharing.archive import manifest_problems, safe_extract, zip_problems
from nodule_bundle.core.checksums import large_file_entries, sha256_file
from nodule_bundle.core.errors import NoduleBundleError

REQUIRED_FILES = (
    "configs/metadata.json", "configs/inference.json", "models/model.pt", "docs/README.md", "docs/data_license.txt",
    "LICENSE", "large_files.yml",
)  # fmt: skip
MAX_FILE_BYTES = 25 * 1024**2  # the model zoo's limit; larger files go in large_files.yml
SCHEMA_PATH = Path(__file__).with_name("metadata.schema.json")
_ABSOLUTE = re.compile(r"^(/|~/|[A-Za-z]:[\\/])")
_QUOTED = re.compile(r"""(['"])((?:/|~/|[A-Za-z]:[\\/])[^'"]*)\1""")
_CODE_NAME = re.compile(r"\bnodule_bundle(?:\.\w+)+")


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


def verify_bundle(path: str | os.PathLike) -> list[Check]:
    """All checks on a bundle directory or ``.zip``; the bundle passes when every check is ``ok``."""
    path = Path(path)
    if not path.exists():
        raise NoduleBundleError(f"{path}: no such bundle directory or archive")
    if path.is_dir():
        return verify_bundle_dir(path)
    problems = zip_problems(path)
    checks = [Check("archive entries", not problems, "; ".join(problems) or "no absolute, '..', symlink or duplicate entry; size in limits")]
    if problems:
        return checks + [Check("bundle contents", False, "skipped: nothing is extracted from an unsafe archive")]
    with tempfile.TemporaryDirectory(prefix="nodule-bundle-verify-") as tmp:
        return checks + verify_bundle_dir(safe_extract(path, tmp))


def verify_bundle_dir(root: str | os.PathLike) -> list[Check]:
    root = Path(root)
    missing = [name for name in REQUIRED_FILES if not (root / name).is_file()]
    checks = [
        Check("required files", not missing, f"missing: {', '.join(missing)}" if missing else ", ".join(REQUIRED_FILES)),
        _listed("sha256 manifest", manifest_problems(root), "every file listed and unchanged"),
        _listed("file sizes and large_files.yml", _large_file_problems(root), "no file over 25 MB unlisted; listed hashes match"),
    ]
    metadata = _read_json(root / "configs" / "metadata.json")
    checks += [
        _listed("metadata.json schema", _schema_problems(metadata), f"the MONAI bundle specification's fields ({SCHEMA_PATH.name})"),
        _listed("version in changelog", _changelog_problems(metadata), f"version {metadata.get('version') if metadata else '?'} listed"),
        _listed("channel definitions", _channel_problems(metadata), "a channel_def entry for every input and output channel"),
        _listed("no absolute paths in configs", config_path_problems(root / "configs"), "configs/*.json"),
        _listed("configs' code in the bundle", config_code_problems(root), "every nodule_bundle name the configs use is a module of the bundle's own code"),
        _listed("weights load with weights_only=True", _weights_problems(root), "models/model.pt: a state dict of tensors"),
    ]
    if all(c.ok for c in checks):
        checks += _network_checks(root)
    else:
        checks.append(Check("network checks (run the bundle's code)", False, "skipped: the checks above failed, the configs are not evaluated"))
    return checks


def format_checks(checks: list[Check]) -> str:
    """A pass/fail table, one check per line, then the verdict."""
    width = max(len(c.name) for c in checks)
    lines = [f"{'PASS' if c.ok else 'FAIL'}  {c.name:<{width}}  {c.detail}" for c in checks]
    verdict = "bundle verified" if all(c.ok for c in checks) else f"{sum(not c.ok for c in checks)} check(s) failed"
    return "\n".join([*lines, verdict])


def config_path_problems(configs_dir: str | os.PathLike) -> list[str]:
    """Absolute paths in config values: plain strings, and string literals in ``$`` expressions that
    are not appended to another path (``@bundle_root + '/models'`` is relative to the bundle)."""
    problems = []
    for path in sorted(Path(configs_dir).glob("*.json")):
        for key, value in _strings(_read_json(path) or {}):
            if value.startswith("$"):
                bad = [m.group(2) for m in _QUOTED.finditer(value) if not value[: m.start()].rstrip().endswith("+")]
            else:
                bad = [value] if _ABSOLUTE.match(value) else []
            problems += [f"{path.name}: {key}: absolute path {b!r}" for b in bad]
    return problems


def config_code_problems(root: str | os.PathLike) -> list[str]:
    """The ``nodule_bundle...`` names of the configs that are not modules (or names in one) of the
    bundle's own ``nodule_bundle/``: what a receiving site would run but was not given."""
    root, problems = Path(root), []
    for path in sorted((root / "configs").glob("*.json")):
        if path.name == "metadata.json":  # its changelog is prose
            continue
        for name in sorted(set(_CODE_NAME.findall(path.read_text()))):
            if not _resolves(root, name.split(".")):
                problems.append(f"{path.name}: {name} is not in the bundle's code")
    return problems


def _resolves(root: Path, parts: list[str]) -> bool:
    """Whether ``parts`` (``nodule_bundle``, packages ..., a module, then names in it) lies under ``root``."""
    for k in range(1, len(parts) + 1):
        here = root.joinpath(*parts[:k])
        if here.with_suffix(".py").is_file():
            return True
        if not (here / "__init__.py").is_file():
            return False
    return True


def _strings(node, key: str = ""):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _strings(v, f"{key}#{k}" if key else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _strings(v, f"{key}#{i}")
    elif isinstance(node, str):
        yield key, node


def _listed(name: str, problems: list[str], ok_detail: str) -> Check:
    return Check(name, not problems, "; ".join(problems) if problems else ok_detail)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _schema_problems(metadata: dict | None) -> list[str]:
    if metadata is None:
        return ["configs/metadata.json: missing or not JSON"]
    validator = jsonschema.Draft7Validator(json.loads(SCHEMA_PATH.read_text()))
    return [
        f"metadata.json: {'/'.join(map(str, e.absolute_path)) or '(top level)'}: {e.message}"
        for e in sorted(validator.iter_errors(metadata), key=lambda e: list(map(str, e.absolute_path)))
    ]


def _changelog_problems(metadata: dict | None) -> list[str]:
    if not metadata:
        return ["configs/metadata.json: missing or not JSON"]
    version, changelog = metadata.get("version"), metadata.get("changelog") or {}
    return [] if version in changelog else [f"metadata.json: version {version!r} has no changelog entry"]


def _channel_problems(metadata: dict | None) -> list[str]:
    problems = []
    for side in ("inputs", "outputs"):
        for name, fmt in ((metadata or {}).get("network_data_format", {}).get(side, {}) or {}).items():
            defined, channels = set((fmt.get("channel_def") or {}).keys()), fmt.get("num_channels")
            if isinstance(channels, int) and defined != {str(i) for i in range(channels)}:
                problems.append(f"metadata.json: {side}/{name}: channel_def has {sorted(defined)}, num_channels is {channels}")
    return problems


def _large_file_problems(root: Path) -> list[str]:
    listed, problems = {}, []
    path = root / "large_files.yml"
    if path.is_file():
        try:
            entries = large_file_entries(path)
        except yaml.YAMLError as e:
            return [f"large_files.yml: not YAML ({e})"]
        for entry in entries:
            name = str(entry.get("path", ""))
            listed[name] = entry
            if entry.get("hash_type") != "sha256" or not entry.get("hash_val"):
                problems.append(f"large_files.yml: {name}: needs hash_type sha256 and hash_val")
            elif (root / name).is_file() and sha256_file(root / name) != entry["hash_val"]:
                problems.append(f"large_files.yml: {name}: sha256 differs (tampered or corrupt)")
            elif not (root / name).is_file() and not entry.get("url"):
                problems.append(f"large_files.yml: {name}: neither in the bundle nor a download url")
    for file in root.rglob("*"):
        name = file.relative_to(root).as_posix()
        if file.is_file() and file.stat().st_size > MAX_FILE_BYTES and name not in listed:
            problems.append(f"{name}: {file.stat().st_size / 1024**2:.0f} MB, over 25 MB and not in large_files.yml")
    return problems


def _weights_problems(root: Path) -> list[str]:
    try:
        network_checks.load_weights(root / "models" / "model.pt")
    except (NoduleBundleError, OSError) as e:
        return [str(e)]
    return []


def _network_checks(root: Path) -> list[Check]:
    """``network_checks`` (this installation's script) in a subprocess whose working directory and only
    import path is the bundle root: the network comes from the bundle's own code."""
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "PYTHONPATH": str(Path(root).resolve())}
    result = subprocess.run(
        [sys.executable, network_checks.__file__, "."], cwd=root, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    last = result.stdout.strip().splitlines()[-1:] if result.stdout.strip() else []
    try:
        return [Check(c["name"], c["ok"], c["detail"]) for c in json.loads(last[0])]
    except (IndexError, ValueError, KeyError, TypeError):
        return [Check("network checks (run the bundle's code)", False, f"exit {result.returncode}: {result.stderr.strip()[-500:]}")]
