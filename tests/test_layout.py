"""The package's layout is the data flow: a handful of stage packages, and a runtime (what the configs
run) that never imports the applications built on it."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).parents[1]
PACKAGE = ROOT / "nodule_bundle"
STAGES = {"core", "reading", "detection", "preprocessing", "network", "measuring", "evaluation", "reports", "data", "followup"}


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def test_the_top_level_is_the_stages_and_the_applications():
    entries = {p.name for p in PACKAGE.iterdir() if p.name != "__pycache__"}
    assert entries == {"__init__.py", "apps", *STAGES}
    for stage in STAGES | {"apps"}:
        assert (PACKAGE / stage / "__init__.py").read_text().startswith('"""'), f"{stage}: say what the stage is"


def test_the_runtime_never_imports_the_applications():
    offenders = [
        f"{path.relative_to(ROOT)}: {name}"
        for stage in STAGES
        for path in (PACKAGE / stage).rglob("*.py")
        for name in _imports(path)
        if name == "nodule_bundle.apps" or name.startswith("nodule_bundle.apps.")
    ]
    assert not offenders


def test_the_configs_use_only_the_runtime():
    used = set()
    for config in (ROOT / "configs").glob("*.json"):
        if config.name == "metadata.json":  # its changelog names the applications too
            continue
        used |= {(config.name, name) for name in re.findall(r"nodule_bundle\.(\w+)", config.read_text())}
    assert used, "the configs name no component of the package"
    assert {stage for _, stage in used} <= STAGES, sorted(used)


def test_the_tests_follow_the_same_split():
    folders = {p.name for p in (ROOT / "tests").iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert folders == STAGES | {"apps"}


def test_every_name_the_configs_use_exists():
    """``_target_`` paths and ``$from ... import ...`` names of the configs import (a moved class is
    found or named here, not at a user's first run)."""
    import importlib

    names = set()
    for config in (ROOT / "configs").glob("*.json"):
        text = config.read_text()
        names |= set(re.findall(r'"_target_": "(nodule_bundle\.[\w.]+)"', text))
        for module, imported in re.findall(r'"\$from (nodule_bundle\.[\w.]+) import ([\w, ]+)"', text):
            assert "," not in imported, f"{config.name}: MONAI's config imports take one name a line: {imported}"
            names.add(f"{module}.{imported}")
    assert len(names) > 10
    for name in sorted(names):
        module, _, attribute = name.rpartition(".")
        assert hasattr(importlib.import_module(module), attribute), name
