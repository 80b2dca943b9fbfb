"""Start and stop a real ``monailabel start_server`` on this app (the tests and ``bench label``).

MONAI Label lives in its own virtual environment (its pins clash with ours; see bundle/docs/usage.md), so the
server runs from that environment's ``monailabel`` command and is talked to over HTTP only. This
module needs nothing of MONAI Label itself.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

from nodule_bundle.core.errors import NoduleBundleError

APP_DIR = Path(__file__).resolve().parent
MODEL = "lung_nodule_ct_classification"
#: MONAI Label's server with the bundle's request checks (asgi.py)
UVICORN_APP = "nodule_bundle.apps.label_app.asgi:app"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(
    venv: str | os.PathLike, studies: str | os.PathLike, bundle_root: str | os.PathLike, log: str | os.PathLike,
    model_path: str | os.PathLike | None = None, timeout_s: float = 240.0,
) -> tuple[subprocess.Popen, str]:  # fmt: skip
    """The server process (its own process group) and its base URL, once ``GET /info/`` answers."""
    venv = Path(venv)
    command = venv / "bin" / "monailabel"
    if not command.is_file():
        raise NoduleBundleError(f"{venv}: no MONAI Label here (bin/monailabel missing); see bundle/docs/usage.md, MONAI Label")
    port = free_port()
    conf = ["--conf", "models", MODEL, "--conf", "bundle_root", str(bundle_root)]
    if model_path:
        conf += ["--conf", "model_path", str(model_path)]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [str(command), "start_server", "--app", str(APP_DIR), "--studies", str(studies), *conf,
             "--uvicorn_app", UVICORN_APP, "--host", "127.0.0.1", "--port", str(port)],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise NoduleBundleError(f"MONAI Label server exited with status {proc.returncode}; log: {log}")
        try:
            with urllib.request.urlopen(f"{url}/info/", timeout=5) as response:
                json.load(response)
            return proc, url
        except OSError:
            time.sleep(1.0)
    stop_server(proc)
    raise NoduleBundleError(f"MONAI Label server did not answer within {timeout_s:.0f} s; log: {log}")


def stop_server(proc: subprocess.Popen) -> None:
    """Stop the server by its process id (and the workers of its process group)."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
