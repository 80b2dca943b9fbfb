"""The network's weights in and out of the engines: a checkpoint loader whose failures say what is
wrong, the newest training state to resume from, and which items each training process saw."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from ignite.engine import Engine, Events
from monai.handlers import CheckpointLoader

from nodule_bundle.core.checksums import listed_sha256, sha256_file
from nodule_bundle.core.errors import NoduleBundleError
from nodule_bundle.core.io_utils import write_json_atomic


class CheckpointError(NoduleBundleError):
    """Weights that cannot be loaded into the bundle's network."""


class CheckedCheckpointLoader(CheckpointLoader):
    """MONAI's ``CheckpointLoader`` (a ``weights_only`` load) whose failures name the file and what is
    wrong with it: missing, not a readable weights-only checkpoint (corrupt, truncated, or pickled
    code), or the weights of another network. In an exported bundle, whose ``large_files.yml``
    lists the file, its sha256 is checked before anything is unpickled.

    Args:
        large_files: path of the bundle's ``large_files.yml`` (absent in a source checkout: no check).
        load_path, load_dict, kwargs: as for :class:`monai.handlers.CheckpointLoader`.
    """

    def __init__(self, load_path: str, load_dict: dict, large_files: str | Path | None = None, **kwargs):
        super().__init__(load_path, load_dict, **kwargs)
        self.large_files = Path(large_files) if large_files else None

    def __call__(self, engine: Engine) -> None:
        path = Path(self.load_path)
        if not path.is_file():
            raise CheckpointError(f"{path}: checkpoint not found (train first, or pass the weights' path)")
        expected = listed_sha256(self.large_files, path) if self.large_files and self.large_files.is_file() else None
        if expected is not None and sha256_file(path) != expected:
            raise CheckpointError(f"{path}: sha256 differs from {self.large_files}: damaged or replaced weights, not loaded")
        try:
            super().__call__(engine)
        except Exception as err:
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
            if "state_dict" in str(err) or "size mismatch" in str(err):
                raise CheckpointError(f"{path}: weights of another network: they do not fit this bundle's network ({first})") from None
            raise CheckpointError(f"{path}: not a readable PyTorch checkpoint of weights only (corrupt, truncated or holding code?): {first}") from None


def resume_checkpoint(folder: str | Path) -> str:
    """The newest training-state checkpoint (``checkpoint_epoch=N.pt``) in ``folder``, to ``--resume`` from."""
    found = {int(m.group(1)): p for p in Path(folder).glob("*.pt") if (m := re.search(r"epoch=(\d+)\.pt$", p.name))}
    if not found:
        raise CheckpointError(f"{folder}: nothing to resume from (no checkpoint_epoch=N.pt; a training run writes one per epoch)")
    return str(found[max(found)])


class TrainedItemsWriter:
    """Record the items (``key``, e.g. ``nodule_id``) this process trained on, and write them to
    ``<output_dir>/trained_items_rank<r>.json`` when training completes: which rank of a distributed
    run saw which data (an audit of the sampler)."""

    def __init__(self, output_dir: str | Path, key: str = "nodule_id"):
        self.output_dir, self.key = Path(output_dir), key
        self._seen: list[str] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, lambda _: self._seen.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, lambda e: self._seen.extend(str(i[self.key]) for i in e.state.batch))
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _write(self, engine: Engine) -> None:
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        write_json_atomic(self.output_dir / f"trained_items_rank{rank}.json", {"rank": rank, "items": self._seen})
