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
    the measured and regressed diameter, size band, malignancy probability; the masks as a label map.
    With a prior study (``request["prior_study"]``, set by the app), the answer's ``prior`` names it
    and each nodule's ``followup`` is its counterpart on the prior and its change
    (:meth:`~nodule_bundle.apps.interactive.NoduleService.follow_up`)."""

    def __init__(self, service: NoduleService, studies: str, description: str):
        super().__init__(service, studies, InferType.DEEPGROW, f"{description} Click a nodule: foreground points.")

    def _infer(self, image: str, request: dict) -> tuple[str, dict]:
        findings, label = self.service.classify_points(image, request.get("foreground") or [])
        prior = request.get("prior_study")
        if not prior:
            return self._answer(label, {"nodules": findings})
        change = self.service.follow_up(image, findings, prior["image"], prior["interval_days"])
        findings = [{**f, "followup": row} for f, row in zip(findings, change["nodules"])]
        described = {k: prior[k] for k in ("image_id", "study_date", "interval_days")}
        return self._answer(label, {"nodules": findings, "prior": {**described, "registration": change["registration"]}})


class NoduleScanInfer(_BundleInfer):
    """The whole scan: every detected nodule as above, the candidates the network rejected and what
    the search saw (``detection``: lung volume, candidates, a warning when it could not work)."""

    def __init__(self, service: NoduleService, studies: str, description: str):
        super().__init__(service, studies, InferType.DETECTION, f"{description} Whole scan: detection, no clicks.")

    def _infer(self, image: str, request: dict) -> tuple[str, dict]:
        kept, rejected, label, search = self.service.detect(image)
        return self._answer(label, {"nodules": kept, "rejected_candidates": rejected, "detection": search})


class NoduleTrain(TrainTask):
    """The bundle's own ``train.json`` on the datastore's annotated studies. The new weights replace the
    served ones only if their validation score (``val_score``: AUC + band accuracy - MAE / 10 mm) on
    the run's validation studies is not lower than the served weights' on the same studies, or the
    request says ``force``; the answer holds both sets of metrics. A swap is atomic and keeps the
    weights it replaced (``model.previous.pt``); ``restore`` puts them back."""

    def __init__(self, service: NoduleService, description: str):
        super().__init__(description)
        self.service = service

    def config(self) -> dict:
        return {"max_epochs": 10, "val_split": 0.2, "pretrained": True, "force": False, "restore": False}

    def __call__(self, request: dict, datastore: Datastore) -> dict:
        served, force = self.service.model_path, _yes(request, "force")
        if _yes(request, "restore"):
            return self._restore(served)
        try:
            datalist = training_datalist(datastore.datalist(), float(request.get("val_split", 0.2)))
        except Exception as exc:
            user_error = find_user_error(exc)
            if user_error is None:
                raise
            raise HTTPException(status_code=422, detail=str(user_error)) from exc
        run = served.parent / "label_runs" / time.strftime("%Y%m%d-%H%M%S")
        run.mkdir(parents=True)
        (run / "datalist.json").write_text(json.dumps(datalist, indent=1))
        pretrained = served if request.get("pretrained", True) and served.is_file() else None
        common = dict(datalist=str(run / "datalist.json"), dataset_dir="/", num_workers=0, device=self.service.device)
        run_bundle(
            ["train"], self.service.bundle_root, ckpt_dir=str(run / "models"), output_dir=str(run / "eval"),
            epochs=int(request.get("max_epochs", 10)), pretrained=str(pretrained) if pretrained else None, **common,
        )  # fmt: skip
        best = run / "models" / "model.pt"
        answer = {"run": str(run), "model": str(served), "training_nodules": len(datalist["training"]),
                  "validation_nodules": len(datalist["validation"]), "new_metrics": self._validate(best.parent, run / "eval_new", common)}  # fmt: skip
        if served.is_file():  # evaluated as a copy: the bundle's checksum no longer fits served weights a training replaced
            (run / "served").mkdir()
            shutil.copy2(served, run / "served" / "model.pt")
            answer["served_metrics"] = self._validate(run / "served", run / "eval_served", common)
            if answer["new_metrics"]["val_score"] < answer["served_metrics"]["val_score"] and not force:
                logger.info("new weights kept out: validation score %.3f < the served %.3f", answer["new_metrics"]["val_score"],
                            answer["served_metrics"]["val_score"])  # fmt: skip
                return {**answer, "swapped": False, "reason": "the new weights score lower on the same validation studies; "
                        "the served weights stay (send force to swap anyway)"}  # fmt: skip
            _replace_atomically(served, served.with_name(PREVIOUS_WEIGHTS))
        _replace_atomically(best, served)  # live: the infer tasks reload weights whose file changed
        logger.info("new weights live: %s (from %s)", served, best)
        return {**answer, "swapped": True}

    def _validate(self, ckpt_dir: Path, out: Path, common: dict) -> dict:
        """``evaluate.json``'s metrics of the weights ``ckpt_dir/model.pt`` on the run's validation studies."""
        run_bundle(["train", "evaluate"], self.service.bundle_root, ckpt_dir=str(ckpt_dir), output_dir=str(out),
                   evaluate_split="validation", **common)  # fmt: skip
        metrics = json.loads((out / "metrics.json").read_text())
        return {k: metrics.get(k) for k in ("val_score", "malignancy_auc", "size_band_accuracy", "diameter_mae_mm", "n_validation_nodules")}

    @staticmethod
    def _restore(served: Path) -> dict:
        previous = served.with_name(PREVIOUS_WEIGHTS)
        if not previous.is_file():
            raise HTTPException(status_code=409, detail=f"no earlier weights to restore ({previous.name}): no training has replaced the served ones")
        _replace_atomically(served, previous.with_name(f"{served.stem}.restored-over.pt"))
        _replace_atomically(previous, served)
        logger.info("earlier weights restored: %s", served)
        return {"model": str(served), "restored": True}


#: The weights a training's swap replaced, beside the served ``model.pt``.
PREVIOUS_WEIGHTS = "model.previous.pt"


def _yes(request: dict, key: str) -> bool:
    value = request.get(key, False)
    if not isinstance(value, bool):
        raise HTTPException(status_code=422, detail=f"{key} must be true or false, got {json.dumps(value)}")
    return value


def _replace_atomically(source: Path, target: Path) -> None:
    """A copy of ``source`` at ``target``, appearing all at once (a reader never sees half a file)."""
    partial = target.with_name(target.name + ".partial")
    shutil.copy2(source, partial)
    os.replace(partial, target)
