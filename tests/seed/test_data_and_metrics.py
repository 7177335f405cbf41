"""Image-folder scanning, the stratified split, picture reading and the metrics."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from sklearn import metrics as skm

from inference.pixels import read_picture
from inference.seed.architectures import get_architecture
from inference.seed.datasets import DatasetError, scan_image_folder, stratified_split
from inference.seed.evaluation import evaluate, roc_curve


def test_split_is_stratified_disjoint_and_reproducible() -> None:
    labels = np.array([0] * 30 + [1] * 9 + [2] * 3)
    split = stratified_split(labels, validation=0.2, test=0.2, seed=7)
    parts = [split.train, split.validation, split.test]
    joined = np.concatenate(parts)
    assert sorted(joined.tolist()) == list(range(len(labels)))  # each image exactly once
    for part in parts:
        assert set(labels[part].tolist()) == {0, 1, 2}  # every class everywhere
    assert np.bincount(labels[split.test]).tolist() == [6, 2, 1]
    again = stratified_split(labels, validation=0.2, test=0.2, seed=7)
    assert np.array_equal(again.test, split.test)
    other = stratified_split(labels, validation=0.2, test=0.2, seed=8)
    assert not np.array_equal(other.test, split.test)


def test_split_needs_three_images_per_class() -> None:
    with pytest.raises(DatasetError, match="at least 3"):
        stratified_split([0, 0, 0, 1, 1])


def _png(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(path)


def test_scan_maps_folders_and_counts_dicom_frames(tmp_path: Path) -> None:
    arch = get_architecture("brain-mri-cnn")
    _png(tmp_path / "no" / "a.png")
    _png(tmp_path / "yes" / "nested" / "b.png")
    enhanced = get_testdata_file("emri_small.dcm")  # 10 frames
    shutil.copyfile(str(enhanced), tmp_path / "yes" / "volume")  # no suffix: DICM marker
    (tmp_path / "yes" / "notes.txt").write_text("not an image")
    folder = scan_image_folder(tmp_path, arch.classes, arch.folder_class)
    assert folder.folders == {"no_tumor": "no", "tumor": "yes"}
    assert folder.counts() == {"no_tumor": 1, "tumor": 11}
    frames = [s.frame for s in folder.samples if s.path.name == "volume"]
    assert frames == list(range(10))


def test_scan_explains_what_is_missing(tmp_path: Path) -> None:
    arch = get_architecture("lung-ct-resnet50")
    _png(tmp_path / "Normal cases" / "a.png")
    _png(tmp_path / "Bengin cases" / "a.png")
    _png(tmp_path / "other" / "a.png")
    with pytest.raises(DatasetError, match=r"no folder for class\(es\) \['malignant'\]"):
        scan_image_folder(tmp_path, arch.classes, arch.folder_class)
    (tmp_path / "Malignant cases").mkdir()
    with pytest.raises(DatasetError, match="no PNG, JPEG or DICOM images"):
        scan_image_folder(tmp_path, arch.classes, arch.folder_class)
    _png(tmp_path / "malignant" / "a.png")
    with pytest.raises(DatasetError, match="both mean 'malignant'"):
        scan_image_folder(tmp_path, arch.classes, arch.folder_class)


def test_read_picture_modes(tmp_path: Path) -> None:
    wide = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000).astype(np.uint16)
    Image.fromarray(wide).save(tmp_path / "16.png")
    got = read_picture(tmp_path / "16.png")
    assert got.dtype == np.uint16 and np.array_equal(got, wide)
    Image.new("RGBA", (4, 4), (10, 20, 30, 40)).save(tmp_path / "rgba.png")
    assert read_picture(tmp_path / "rgba.png").tolist()[0][0] == [10, 20, 30]
    Image.new("P", (4, 4), 3).save(tmp_path / "palette.png")
    assert read_picture(tmp_path / "palette.png").shape == (4, 4, 3)


def test_binary_metrics_match_sklearn_with_tied_scores() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 60)
    p_cancer = np.round(np.clip(0.3 * y + rng.uniform(0, 0.7, 60), 0, 1), 1)  # many ties
    probs = np.stack([1 - p_cancer, p_cancer], axis=1)  # classes [normal, cancer]
    result = evaluate(y, probs, ["normal", "cancer"], ["cancer"], 0.5)
    y_pred = (p_cancer >= 0.5).astype(int)
    assert result.y_pred == y_pred.tolist()
    assert result.accuracy == pytest.approx(skm.accuracy_score(y, y_pred))
    assert result.auc == pytest.approx(skm.roc_auc_score(y, p_cancer))
    fpr, tpr, thresholds = skm.roc_curve(y, p_cancer, drop_intermediate=False)
    curve = result.roc["cancer"]
    np.testing.assert_allclose(curve.fpr, fpr)
    np.testing.assert_allclose(curve.tpr, tpr)
    np.testing.assert_allclose(curve.thresholds[1:], thresholds[1:])
    assert result.confusion == skm.confusion_matrix(y, y_pred).tolist()


def test_three_class_metrics_and_undefined_values() -> None:
    y = np.array([0, 0, 1, 1, 2, 2])
    probs = np.array(
        [
            [0.8, 0.1, 0.1],
            [0.3, 0.6, 0.1],
            [0.2, 0.7, 0.1],
            [0.5, 0.4, 0.1],
            [0.1, 0.3, 0.6],
            [0.2, 0.2, 0.6],
        ]
    )
    result = evaluate(y, probs, ["normal", "benign", "malignant"], ["malignant"], 0.5)
    assert result.auc == pytest.approx(skm.roc_auc_score(y, probs, multi_class="ovr"))
    *_, f1, _support = skm.precision_recall_fscore_support(y, result.y_pred, zero_division=0)
    assert [m.f1 for m in result.per_class.values()] == pytest.approx(f1.tolist())
    # Nothing predicted as a class: precision 0 (as sklearn's zero_division=0), no crash.
    empty = evaluate(np.array([0, 1]), np.array([[0.9, 0.1], [0.8, 0.2]]), ["a", "b"], ["b"])
    assert empty.per_class["b"].precision == 0.0 and empty.per_class["b"].f1 == 0.0
    # A test set without positives has no ROC AUC.
    assert roc_curve(np.zeros(4, dtype=bool), np.linspace(0, 1, 4)).auc is None
