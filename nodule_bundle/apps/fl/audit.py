"""What crosses the wire: an NVFlare filter on the server that writes down, for every message, what
it carries (names, shapes and types of the arrays; the metadata and its types; a digest of the
weights) and passes it on unchanged. The privacy test reads this record."""

from __future__ import annotations

import hashlib
import json
import threading

import numpy as np
from nvflare.apis.dxo import from_shareable
from nvflare.apis.filter import Filter
from nvflare.apis.fl_constant import ReservedKey
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.app_common.app_constant import AppConstants

_LOCK = threading.Lock()


class MessageAudit(Filter):
    """Append one JSON line per message to ``path``: ``direction`` (``"received"`` from a site or
    ``"sent"`` to the sites), the site, the round, the DXO kind, each entry's type and shape, the
    metadata's keys and types, and the sha256 of the arrays."""

    def __init__(self, path: str, direction: str):
        super().__init__()
        self.path, self.direction = path, direction

    def process(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        dxo = from_shareable(shareable)
        digest = hashlib.sha256()
        entries = {}
        for name in sorted(dxo.data or {}):
            value = dxo.data[name]
            array = np.asarray(value)
            entries[name] = {"type": type(value).__name__, "dtype": str(array.dtype), "shape": list(array.shape)}
            digest.update(name.encode() + np.ascontiguousarray(array).tobytes())
        record = {
            "direction": self.direction,
            "site": shareable.get_peer_prop(ReservedKey.IDENTITY_NAME, "") or "",
            "round": shareable.get_header(AppConstants.CURRENT_ROUND),
            "data_kind": dxo.data_kind,
            "data": entries,
            "meta": {k: type(v).__name__ for k, v in (dxo.meta or {}).items()},
            "metrics": {k: v for k, v in ((dxo.meta or {}).get("initial_metrics") or {}).items() if isinstance(v, (int, float))},
            "sha256": digest.hexdigest(),
        }
        with _LOCK, open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, default=str) + "\n")
        return shareable
