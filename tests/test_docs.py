"""The documented commands are the ones that run."""

import re
from pathlib import Path

ROOT = Path(__file__).parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "bundle" / "docs").glob("*.md"))]


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Tests", 1)[1]
    command = re.search(r"```bash\n(.+?)\n```", section, re.S).group(1).strip()
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert command in ci_lines


def test_every_config_named_in_the_docs_exists():
    for page in DOCS:
        for name in set(re.findall(r"configs/[\w.]+\.json", page.read_text())):
            assert (ROOT / name).is_file(), f"{page.name}: {name}"


def test_every_command_is_in_the_readme_and_in_the_usage_page():
    from nodule_bundle.apps.cli import build_parser

    commands = next(a for a in build_parser()._actions if a.dest == "command").choices
    for page in (ROOT / "README.md", ROOT / "bundle" / "docs" / "usage.md"):
        text = page.read_text()
        for name in commands:
            assert f"`nodule-bundle {name} " in text, f"{page.name}: {name}"


def test_the_docs_links_lead_somewhere():
    """Every relative link of the README and the docs pages names a file that exists, and its
    #anchor a heading of that file."""
    for page in DOCS:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+://", target):
                continue
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            assert linked.exists(), f"{page.name}: {target}"
            if anchor and linked.suffix == ".md":
                headings = re.findall(r"^#+ (.+)$", linked.read_text(), re.M)
                slugs = {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}
                assert anchor in slugs, f"{page.name}: {target}"


def test_the_readme_is_read_in_five_minutes():
    readme = (ROOT / "README.md").read_text().splitlines()
    assert len(readme) <= 200
    assert readme.index("## Set up") < readme.index("## The main job: `nodule-bundle demo`")


def test_changelog_entries_are_one_line_each():
    import json

    changelog = json.loads((ROOT / "configs" / "metadata.json").read_text())["changelog"]
    assert all(len(entry) <= 200 and "\n" not in entry for entry in changelog.values())
