"""The checks that run the bundle's network: MONAI's ``verify_net_in_out``, the weights, TorchScript.

``nodule-bundle verify`` runs this file as a script with the bundle root as working directory and
import path, so that the network comes from the bundle's own copy of the code (which holds the
runtime only, not this application), as at the receiving site; it prints the checks as one JSON list.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch
from monai.bundle import ConfigParser, ckpt_export, verify_net_in_out

from nodule_bundle.core.errors import NoduleBundleError

NET_ID = "network_def"


def load_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The network's state dict from a checkpoint, unpickled with ``weights_only=True`` onto the CPU.

    Accepts a plain state dict (the model zoo's ``models/model.pt``) or MONAI's ``{"model": ...}``.
    """
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means the file is not plain weights
        raise NoduleBundleError(f"{path}: not a weights-only checkpoint ({type(e).__name__}: {str(e).splitlines()[0]})") from e
    if isinstance(ckpt, Mapping) and set(ckpt) == {"model"}:
        ckpt = ckpt["model"]
    if not isinstance(ckpt, Mapping) or not all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        raise NoduleBundleError(f"{path}: not a state dict of tensors")
    return dict(ckpt)


def _files(root: Path) -> dict[str, str]:
    return {
        "meta_file": str(root / "configs" / "metadata.json"),
        "config_file": str(root / "configs" / "inference.json"),
        "bundle_root": str(root),
    }


def export_torchscript(root: str | os.PathLike, filepath: str | os.PathLike) -> None:
    """MONAI's ``ckpt_export``: the bundle's network with ``models/model.pt`` as TorchScript (+ configs)."""
    root = Path(root)
    ckpt_export(net_id=NET_ID, filepath=str(filepath), ckpt_file=str(root / "models" / "model.pt"), **_files(root))


def _network(root: Path) -> torch.nn.Module:
    parser = ConfigParser()
    parser.read_config(_files(root)["config_file"])
    parser.read_meta(_files(root)["meta_file"])
    parser["bundle_root"] = str(root)
    net = parser.get_parsed_content(NET_ID)
    net.load_state_dict(load_weights(root / "models" / "model.pt"), strict=True)
    return net.eval()


def _same_outputs(scripted: torch.nn.Module, eager: torch.nn.Module, example: torch.Tensor) -> str:
    with torch.no_grad():
        a, b = scripted(example), eager(example)
    diff = float((a - b).abs().max())
    if a.shape != b.shape or diff > 1e-5:
        raise NoduleBundleError(f"outputs differ from the eager network (shape {tuple(a.shape)}, max |diff| {diff:.2e})")
    return f"max |diff| {diff:.1e} on a batch of {len(example)}"


def run_checks(root: str | os.PathLike) -> list[dict]:
    """Each check as ``{"name", "ok", "detail"}``; a failing check does not stop the others."""
    root = Path(root).resolve()
    checks = []

    def check(name, fn):
        try:
            checks.append({"name": name, "ok": True, "detail": fn() or ""})
        except Exception as e:  # noqa: BLE001 - every failure is reported, with its message
            checks.append({"name": name, "ok": False, "detail": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"})

    check("verify_net_in_out (MONAI)", lambda: verify_net_in_out(net_id=NET_ID, device="cpu", **_files(root)) or "shapes and dtype as metadata.json says")
    net = None

    def weights():
        nonlocal net
        net = _network(root)
        source = Path(sys.modules[type(net).__module__].__file__).resolve()
        where = source.relative_to(root).as_posix() if source.is_relative_to(root) else f"{source} (not the bundle's copy)"
        return f"{sum(p.numel() for p in net.parameters()):,} parameters loaded strictly (weights_only=True, CPU) into {where}"

    check("weights fit the network", weights)
    fmt = json.loads((root / "configs" / "metadata.json").read_text())["network_data_format"]["inputs"]["image"]
    example = torch.rand(2, fmt["num_channels"], *fmt["spatial_shape"], generator=torch.Generator().manual_seed(0))

    def matches_eager(scripted_path: Path) -> str:
        if net is None:
            raise NoduleBundleError("skipped: the weights did not load")
        return _same_outputs(torch.jit.load(scripted_path, map_location="cpu"), net, example)

    def round_trip():
        with tempfile.TemporaryDirectory() as tmp:
            export_torchscript(root, Path(tmp) / "model.ts")
            return matches_eager(Path(tmp) / "model.ts")

    check("ckpt_export TorchScript round trip (MONAI)", round_trip)
    if (root / "models" / "model.ts").is_file():
        check("models/model.ts matches models/model.pt", lambda: matches_eager(root / "models" / "model.ts"))
    return checks


if __name__ == "__main__":
    print(json.dumps(run_checks(sys.argv[1] if len(sys.argv) > 1 else ".")))
