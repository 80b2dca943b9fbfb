"""Many ``python -m monai.bundle run`` processes at the cost of one import.

Run as a script (``python tests/preloaded_runs.py SPEC.json``), it imports monai, torch, ignite and the
bundle's package once, then forks one child per run. Each child is a fresh process that executes
``monai.bundle``'s ``__main__`` from the repository root with the run's own arguments, stdout and stderr,
and exits as the interpreter would: 0, the ``SystemExit`` code, or 1 with the traceback on stderr
for an uncaught exception. Only the 6 s of imports are shared; nothing a run does reaches another.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bundle_run import ROOT


def preloaded_bundle_runs(runs: list[list[str]], workers: int = 2, timeout: float = 900) -> list[subprocess.CompletedProcess]:
    """Each argument list (what follows ``python -m monai.bundle``) run from the repository root."""
    with tempfile.TemporaryDirectory() as tmp:
        spec = [{"args": args, "stdout": f"{tmp}/{i}.out", "stderr": f"{tmp}/{i}.err"} for i, args in enumerate(runs)]
        Path(tmp, "spec.json").write_text(json.dumps(spec))
        subprocess.run([sys.executable, __file__, f"{tmp}/spec.json", str(workers)], cwd=ROOT, check=True, timeout=timeout)
        codes = json.loads(Path(tmp, "status.json").read_text())
        return [
            subprocess.CompletedProcess(["python", "-m", "monai.bundle", *run["args"]], code,
                                        Path(run["stdout"]).read_text(), Path(run["stderr"]).read_text())
            for run, code in zip(spec, codes)
        ]  # fmt: skip


def _child(run: dict) -> None:
    """In the forked child: be ``python -m monai.bundle ARGS`` and never return."""
    import runpy
    import traceback

    for fd, path in ((1, run["stdout"]), (2, run["stderr"])):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(target, fd)
        os.close(target)
    sys.argv = [str(Path(sys.modules["monai.bundle"].__file__).with_name("__main__.py")), *run["args"]]
    code = 0
    try:
        runpy.run_module("monai.bundle", run_name="__main__", alter_sys=True)
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _main(spec_path: str, workers: int) -> None:
    import ignite.engine  # noqa: F401  (the imports the runs share)
    import monai.bundle  # noqa: F401
    import torch  # noqa: F401

    import nodule_bundle.apps.cli  # noqa: F401

    spec = json.loads(Path(spec_path).read_text())
    codes: list[int | None] = [None] * len(spec)
    running: dict[int, int] = {}

    def reap() -> None:
        pid, status = os.wait()
        codes[running.pop(pid)] = os.waitstatus_to_exitcode(status)

    for i, run in enumerate(spec):
        while len(running) >= workers:
            reap()
        pid = os.fork()
        if pid == 0:
            _child(run)
        running[pid] = i
    while running:
        reap()
    Path(spec_path).with_name("status.json").write_text(json.dumps(codes))


if __name__ == "__main__":
    _main(sys.argv[1], int(sys.argv[2]))
