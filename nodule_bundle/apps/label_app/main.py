"""The MONAI Label app of the lung-nodule bundle.

    monailabel start_server --app <this folder> --studies <folder of CT studies> \\
        --conf models lung_nodule_ct_classification [--conf bundle_root DIR] [--conf device cuda]

It serves the bundle at ``bundle_root`` (default: this checkout, or the exported bundle this code came
with): its ``configs/`` and ``models/model.pt``, no second copy of the pipeline. Models:

- ``lung_nodule_ct_classification``: clicked points -> each nodule's measured and regressed diameter,
  size band and malignancy probability, and the masks as a label map; when the study has a prior
  (:mod:`nodule_bundle.apps.label_app.priors`), each nodule's counterpart there and its change;
- ``lung_nodule_ct_classification_scan``: the whole scan (detection, classification, reduction);
- training (``POST /train/lung_nodule_ct_classification``) on the studies with JSON annotations
  (:mod:`nodule_bundle.apps.label_app.annotations`), with the bundle's ``train.json``; the new weights go live.
"""

from __future__ import annotations

import json
import logging
import os

from monailabel.interfaces.app import MONAILabelApp

from nodule_bundle.apps.interactive import NoduleService
from nodule_bundle.apps.label_app.priors import prior_study
from nodule_bundle.apps.label_app.tasks import NodulePointInfer, NoduleScanInfer, NoduleTrain
from nodule_bundle.apps.workflow import find_bundle_root

logger = logging.getLogger(__name__)

MODEL = "lung_nodule_ct_classification"


class NoduleLabelApp(MONAILabelApp):
    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]):
        models = [m.strip() for m in conf.get("models", MODEL).split(",")]
        if MODEL not in models:
            raise ValueError(f"--conf models: this app serves {MODEL!r}, not {models}")
        root = find_bundle_root(conf.get("bundle_root"))
        self.metadata = json.loads((root / "configs" / "metadata.json").read_text())
        self.service = NoduleService(root, conf.get("model_path"), conf.get("device", "cpu"))
        logger.info("serving bundle %s %s from %s", MODEL, self.metadata["version"], root)
        super().__init__(
            app_dir=app_dir, studies=studies, conf=conf, name=MODEL, description=self.metadata["description"],
            version=self.metadata["version"], labels=["nodule"],
        )  # fmt: skip

    def infer(self, request, datastore=None):
        """MONAI Label's inference; a click on a study of the datastore also gets the study's prior
        (``request["prior_study"]``: :func:`~nodule_bundle.apps.label_app.priors.prior_study`)."""
        image = request.get("image")
        if request.get("model") == MODEL and isinstance(image, str) and not os.path.exists(image):
            request = {**request, "prior_study": prior_study(datastore or self.datastore(), image, request.get("prior"))}
        return super().infer(request, datastore)

    def init_infers(self):
        description = self.metadata["description"]
        return {
            MODEL: NodulePointInfer(self.service, self.studies, description),
            f"{MODEL}_scan": NoduleScanInfer(self.service, self.studies, description),
        }

    def init_trainers(self):
        return {MODEL: NoduleTrain(self.service, self.metadata["description"])}
