"""MONAI Label tasks over the bundle: point prompts, the whole scan, and training on the datastore.

Requests fail with an HTTP 4xx and a message (FastAPI's ``HTTPException``) when the client asked
for something wrong: an unknown image id (404), a path outside the studies folder (403), a point
outside the image, an image that is not CT, a study without annotations (422). The server keeps
serving.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path

from fastapi import HTTPException
from monai.data import MetaTensor
from monai.transforms import SaveImage
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType
from monailabel.interfaces.tasks.train import TrainTask

from nodule_bundle.apps.interactive import NoduleService
from nodule_bundle.apps.label_app.annotations import training_datalist
from nodule_bundle.apps.workflow import run_bundle
from nodule_bundle.core.errors import find_user_error

logger = logging.getLogger(__name__)


class _BundleInfer(InferTask):
    """Shared by both infer tasks: the image a request names, the label map NIfTI, the errors."""

    def __init__(self, service: NoduleService, studies: str, type: InferType, description: str):
        super().__init__(type=type, labels=["nodule"], dimension=3, description=description)
        self.service, self.studies = service, Path(studies).resolve()

    def is_valid(self) -> bool:
        return self.service.model_path.is_file()

    def _image(self, request: dict) -> str:
        image = str(request.get("image") or "")
        if not image:
            raise HTTPException(status_code=404, detail="unknown image id: not in this server's studies")
        if not Path(image).resolve().is_relative_to(self.studies):
            raise HTTPException(status_code=403, detail=f"{image}: outside the studies folder; only its images are served")
        return image

    def _answer(self, label: MetaTensor, result: dict) -> tuple[str, dict]:
        """Write the label map NIfTI (MONAI Label sends it, then deletes it) beside the JSON result."""
        name = f"nodule-label-{uuid.uuid4().hex}"
        label.meta["filename_or_obj"] = name
        SaveImage(output_dir=tempfile.gettempdir(), output_postfix="", output_ext=".nii.gz", separate_folder=False,
                  print_log=False, output_dtype="uint8", resample=False)(label)  # fmt: skip
        result = {"model": {"name": "lung_nodule_ct_classification", "version": self.service.version}, **result}
        return str(Path(tempfile.gettempdir()) / f"{name}.nii.gz"), result

    def __call__(self, request: dict) -> tuple[str, dict]:
        image = self._image(request)
        try:
            return self._infer(image, request)
        except HTTPException:
            raise
        except Exception as exc:  # a user's mistake (bad point, not a CT) is a 422; ours stays a 500
            user_error = find_user_error(exc)
            if user_error is None:
                raise
            raise HTTPException(status_code=422, detail=str(user_error)) from exc


class NodulePointInfer(_BundleInfer):
    """Clicked points (``foreground``: ``[[i, j, k], ...]`` voxel indices, 3D Slicer's IJK) -> per point
    the measured and regressed diameter, size band, malignancy probability; the masks as a label map."""

    def __init__(self, service: NoduleService, studies: str, description: str):
        super().__init__(service, studies, InferType.DEEPGROW, f"{description} Click a nodule: foreground points.")

    def _infer(self, image: str, request: dict) -> tuple[str, dict]:
        findings, label = self.service.classify_points(image, request.get("foreground") or [])
        return self._answer(label, {"nodules": findings})


class NoduleScanInfer(_BundleInfer):
    """The whole scan: every detected nodule as above, the candidates the network rejected and what
    the search saw (``detection``: lung volume, candidates, a warning when it could not work)."""

    def __init__(self, service: NoduleService, studies: str, description: str):
        super().__init__(service, studies, InferType.DETECTION, f"{description} Whole scan: detection, no clicks.")

    def _infer(self, image: str, request: dict) -> tuple[str, dict]:
        kept, rejected, label, search = self.service.detect(image)
        return self._answer(label, {"nodules": kept, "rejected_candidates": rejected, "detection": search})


class NoduleTrain(TrainTask):
    """The bundle's own ``train.json`` on the datastore's annotated studies; the best checkpoint
    then replaces the served weights (the previous ones are kept beside it)."""

    def __init__(self, service: NoduleService, description: str):
        super().__init__(description)
        self.service = service

    def config(self) -> dict:
        return {"max_epochs": 10, "val_split": 0.2, "pretrained": True}

    def __call__(self, request: dict, datastore: Datastore) -> dict:
        try:
            datalist = training_datalist(datastore.datalist(), float(request.get("val_split", 0.2)))
        except Exception as exc:
            user_error = find_user_error(exc)
            if user_error is None:
                raise
            raise HTTPException(status_code=422, detail=str(user_error)) from exc
        served = self.service.model_path
        run = served.parent / "label_runs" / time.strftime("%Y%m%d-%H%M%S")
        run.mkdir(parents=True)
        (run / "datalist.json").write_text(json.dumps(datalist, indent=1))
        pretrained = served if request.get("pretrained", True) and served.is_file() else None
        run_bundle(
            ["train"], self.service.bundle_root, datalist=str(run / "datalist.json"), dataset_dir="/",
            ckpt_dir=str(run / "models"), output_dir=str(run / "eval"), epochs=int(request.get("max_epochs", 10)),
            pretrained=str(pretrained) if pretrained else None, num_workers=0, device=self.service.device,
        )  # fmt: skip
        best = run / "models" / "model.pt"
        if served.is_file():
            shutil.copy2(served, run / "previous_model.pt")
        partial = served.with_suffix(".pt.partial")
        shutil.copy2(best, partial)
        os.replace(partial, served)  # live: the infer tasks reload weights whose file changed
        logger.info("new weights live: %s (from %s)", served, best)
        return {"run": str(run), "model": str(served), "training_nodules": len(datalist["training"])}
