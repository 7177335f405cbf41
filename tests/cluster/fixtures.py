"""Small fixtures for the cluster tests: two ONNX models and phantom CT series.

The real models (Xception on TensorFlow, VGG16 on onnxruntime) cost seconds of CPU per
process and per image; the cluster's plumbing (queues, claims, takeover, sweep, storage) is
the same for any model, so most cluster tests run these instead:

* ``phantom-fast``: a linear layer on a 32 x 32 image, occlusion maps (an SR and an SC);
* ``phantom-slow``: four 3 x 3 convolutions of 128 channels on 128 x 128, no explanation:
  about a second per image on one core, so a test can kill its worker in the middle of a job.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import generate_uid

from tests.dicom_files import pydicom_file

MANIFEST = """
id = "{id}"
name = "Phantom fixture ({id})"
version = "1.0"
description = "Test fixture built by the cluster tests; random weights."
intended_use = "Tests only. Not for diagnostic use."

[weights]
format = "onnx"
path = "model.onnx"

[input]
height = {size}
width = {size}
channels = 1
color = "grayscale"
layout = "nhwc"
resize = "bilinear"

[preprocessing]
mode = "scale"
scale = 0.00392156862745098

[output]
activation = "logits"
classes = ["clear", "finding"]
positive_classes = ["finding"]

[concepts]
finding_type = {{ value = "108369006", scheme = "SCT", meaning = "Neoplasm" }}

[explain]
method = "{explain}"
occlusion_grid = 3

[series]
aggregation = "max"
batch_size = 1
"""


def _onnx_model(path: Path, size: int, convs: int, channels: int) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)
    nodes = [helper.make_node("Transpose", ["input"], ["x0"], perm=[0, 3, 1, 2])]
    inits = []
    current, width = "x0", 1
    for i in range(convs):
        w = numpy_helper.from_array(
            (rng.standard_normal((channels, width, 3, 3)) * 0.05).astype(np.float32), f"w{i}"
        )
        inits.append(w)
        nodes.append(helper.make_node("Conv", [current, f"w{i}"], [f"c{i}"], pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"]))
        current, width = f"r{i}", channels
    nodes.append(helper.make_node("GlobalAveragePool", [current], ["pooled"]))
    nodes.append(helper.make_node("Flatten", ["pooled"], ["flat"]))
    inits.append(
        numpy_helper.from_array(rng.standard_normal((width, 2)).astype(np.float32), "dense")
    )
    nodes.append(helper.make_node("MatMul", ["flat", "dense"], ["logits"]))
    graph = helper.make_graph(
        nodes,
        "phantom",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", size, size, 1])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())


def make_models(models_dir: Path) -> None:
    """The fixture models, the real models' manifests, and one model without weights."""
    repo_models = Path(__file__).resolve().parents[2] / "models"
    for model_id in ("chest-xray-pneumonia", "brain-mri-tumor", "bone-xray-cnn"):
        folder = models_dir / model_id
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "model.toml").write_text((repo_models / model_id / "model.toml").read_text())
    for model_id, size, convs, channels, explain in (
        ("phantom-fast", 32, 1, 4, "occlusion"),
        ("phantom-slow", 128, 4, 128, "none"),
    ):
        folder = models_dir / model_id
        folder.mkdir(parents=True, exist_ok=True)
        _onnx_model(folder / "model.onnx", size, convs, channels)
        (folder / "model.toml").write_text(MANIFEST.format(id=model_id, size=size, explain=explain))


def phantom_series(folder: Path, name: str, count: int, body_part: str) -> list[Path]:
    """``count`` CT instances of one new series (pydicom's CT_small with new UIDs);
    ``body_part`` picks the route (PHANTOMFAST, PHANTOMSLOW)."""
    source = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    study, series = generate_uid(), generate_uid()
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        ds = source.copy()
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = series
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = i + 1
        ds.BodyPartExamined = body_part
        ds.PatientID = f"PHANTOM-{name}"
        ds.AccessionNumber = name[:16]
        path = folder / f"{name}-{i + 1:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def chest_study(folder: Path, name: str) -> Path:
    """A copy of pydicom-data's CR chest (RG1_UNCI) as a new study."""
    ds = pydicom.dcmread(pydicom_file("RG1_UNCI.dcm"))
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.AccessionNumber = name[:16]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def brain_study(folder: Path, name: str) -> Path:
    """A copy of pydicom's MR_small (a brain MR slice) as a new study, body part BRAIN."""
    ds = pydicom.dcmread(pydicom_file("MR_small.dcm"))
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.BodyPartExamined = "BRAIN"
    ds.AccessionNumber = name[:16]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path
