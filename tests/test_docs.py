"""The documented commands are the ones that run."""

import re
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Tests", 1)[1]
    command = re.search(r"```bash\n(.+?)\n```", section, re.S).group(1).strip()
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert command in ci_lines


def test_every_config_named_in_the_readme_exists():
    readme = (ROOT / "README.md").read_text()
    for name in set(re.findall(r"configs/[\w.]+\.json", readme)):
        assert (ROOT / name).is_file(), name


def test_every_command_is_in_the_readme():
    from nodule_bundle.cli import build_parser

    readme = (ROOT / "README.md").read_text()
    commands = next(a for a in build_parser()._actions if a.dest == "command").choices
    for name in commands:
        assert f"`nodule-bundle {name} " in readme, name
