"""The bundle as a MONAI Deploy App SDK application: a folder of DICOM in, the nodule report with its
DICOM SEG and SR out.

    python -m nodule_bundle.apps.deploy_app -i DICOM_FOLDER -o OUT [-m MODEL]

``DICOMDataLoaderOperator`` (the SDK's: every study and series under the folder) ->
``DICOMSeriesSelectorOperator`` (the SDK's: the CT series, the one with the most slices first) ->
:class:`NoduleInferenceOperator` (``configs/inference.json`` on that series: the nodules it finds,
measured and classified, ``report.json`` and the other reports in ``OUT``) ->
:class:`NoduleSegWriterOperator` -> :class:`NoduleSRWriterOperator` (:mod:`nodule_bundle.reports.dicom`,
as the bundle's own report writer makes them). ``MODEL``: the bundle's weights (a ``model.pt`` or the
``models`` folder holding it); the bundle's own ``models/model.pt`` without it. The configs are those
of the bundle root ``$NODULE_BUNDLE_ROOT`` names (a site's own settings), else of this installation.

It runs in an environment of its own (``pip install "nodule-bundle[deploy]"``, see ``.ci/deploy-venv``):
with the SDK installed, every ``import monai`` imports it, and with it Holoscan and CuPy.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from holoscan.conditions import CountCondition
from monai.deploy.core import Application, Fragment, Operator, OperatorSpec
from monai.deploy.operators.dicom_data_loader_operator import DICOMDataLoaderOperator
from monai.deploy.operators.dicom_series_selector_operator import DICOMSeriesSelectorOperator

from nodule_bundle.apps.workflow import find_bundle_root, model_weights, run_inference
from nodule_bundle.core.errors import NoduleBundleError
from nodule_bundle.reports.dicom import SEG_NAME, SR_NAME, nodule_measurement_report, save_dataset, scan_segmentation

#: The SDK's selection rules: CT series (``sort_by_sop_instance_count``: the one with the most slices first).
CT_SERIES_RULES = json.dumps({"selections": [{"name": "CT series", "conditions": {"Modality": "(?i)^CT$"}}]})


class NoduleInferenceOperator(Operator):
    """The first selected CT series through ``configs/inference.json``; emits the report's scan, where it
    was written, and the series it was read from."""

    def __init__(self, fragment: Fragment, *args, output_folder: Path, checkpoint: Path, bundle_root: Path, links_folder: Path, **kwargs):
        self.output_folder, self.checkpoint, self.bundle_root = output_folder, checkpoint, bundle_root
        self.links_folder = links_folder  # a series spread over folders is linked into one here
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("study_selected_series_list")
        spec.output("report")

    def compute(self, op_input, op_output, context) -> None:
        selected = op_input.receive("study_selected_series_list")
        if not selected or not selected[0].selected_series:
            raise NoduleBundleError("the input folder holds no CT series")
        series = selected[0].selected_series[0].series
        files = [Path(instance.get_native_sop_instance().filename) for instance in series.get_sop_instances()]
        folder = files[0].parent
        if any(path.parent != folder for path in files):  # one folder a series, as the bundle's reader takes it
            folder = self.links_folder / series.SeriesInstanceUID
            folder.mkdir(parents=True, exist_ok=True)
            for number, path in enumerate(files):
                (folder / f"{number:06d}.dcm").symlink_to(path.resolve())
        run_inference(
            self.bundle_root, self.checkpoint, quiet=False, image=str(folder), seriesuid=series.SeriesInstanceUID,
            output_dir=str(self.output_folder), dicom_report=False,
        )  # fmt: skip
        report = json.loads((self.output_folder / "report.json").read_text())
        op_output.emit({"scan": report["scans"][0], "model": report["model"], "dicom_dir": folder, "series_uid": series.SeriesInstanceUID}, "report")


class _ReportWriterOperator(Operator):
    """An operator that writes into the report's folder."""

    def __init__(self, fragment: Fragment, *args, output_folder: Path, **kwargs):
        self.output_folder = output_folder
        super().__init__(fragment, *args, **kwargs)


class NoduleSegWriterOperator(_ReportWriterOperator):
    """The report's nodule masks as a DICOM SEG (``nodule_labels.seg.dcm``; none when no nodule was found)."""

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("report")
        spec.output("segmentation")

    def compute(self, op_input, op_output, context) -> None:
        report = op_input.receive("report")
        sources, seg = scan_segmentation(self.output_folder, report["scan"], report["dicom_dir"], report["series_uid"], report["model"])
        if seg is not None:
            save_dataset(self.output_folder / SEG_NAME, seg)
        op_output.emit({**report, "sources": sources, "seg": seg}, "segmentation")


class NoduleSRWriterOperator(_ReportWriterOperator):
    """The report's findings as a DICOM SR, TID 1500 (``nodule_labels.sr.dcm``), referring to the SEG."""

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("segmentation")

    def compute(self, op_input, op_output, context) -> None:
        done = op_input.receive("segmentation")
        sr = nodule_measurement_report(done["sources"], done["seg"], done["scan"]["nodules"], done["model"])
        save_dataset(self.output_folder / SR_NAME, sr)


class NoduleReportApp(Application):
    """DICOM folder -> CT series -> the bundle's inference -> DICOM SEG and SR (see the module docstring)."""

    name = "lung_nodule_ct_classification"
    description = "Pulmonary nodules in chest CT: found, measured and classified; the report as DICOM SEG and SR"

    def run(self) -> None:
        with tempfile.TemporaryDirectory(prefix="nodule-series-") as links:
            self.links_folder = Path(links)
            super().run()

    def compose(self) -> None:
        context = Application.init_app_context(self.argv)
        output_folder = Path(context.output_path)
        output_folder.mkdir(parents=True, exist_ok=True)
        bundle_root = find_bundle_root()
        checkpoint = model_weights(context.args.get("model"), bundle_root)
        loader = DICOMDataLoaderOperator(self, CountCondition(self, 1), input_folder=Path(context.input_path), name="dicom_loader")
        selector = DICOMSeriesSelectorOperator(self, rules=CT_SERIES_RULES, all_matched=True, sort_by_sop_instance_count=True, name="ct_series")
        inference = NoduleInferenceOperator(self, output_folder=output_folder, checkpoint=checkpoint, bundle_root=bundle_root,
                                            links_folder=self.links_folder, name="nodules")  # fmt: skip
        seg_writer = NoduleSegWriterOperator(self, output_folder=output_folder, name="seg_writer")
        sr_writer = NoduleSRWriterOperator(self, output_folder=output_folder, name="sr_writer")
        self.add_flow(loader, selector, {("dicom_study_list", "dicom_study_list")})
        self.add_flow(selector, inference, {("study_selected_series_list", "study_selected_series_list")})
        self.add_flow(inference, seg_writer, {("report", "report")})
        self.add_flow(seg_writer, sr_writer, {("segmentation", "segmentation")})


if __name__ == "__main__":
    NoduleReportApp().run()
