"""Series handling: ordering, sampling, batching, aggregation and the decision."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.dataset import Dataset

from inference import aggregate
from inference.backends import ModelLoadError, to_probabilities
from inference.manifest import OutputSpec, SeriesSpec
from inference.registry import LoadedModel

from .conftest import SIZE, make_synthetic
from .test_pixels import make_image


def slice_at(z: float, number: int, stored: np.ndarray) -> Dataset:
    ds = make_image(stored, photometric="MONOCHROME2", bits=8)
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [0, 0, z]
    ds.InstanceNumber = number
    return ds


def test_images_are_ordered_by_position_not_arrival() -> None:
    blank = np.zeros((4, 4), np.uint8)
    series = [slice_at(z, n, blank) for z, n in [(30, 1), (10, 3), (20, 2)]]
    refs = aggregate.enumerate_images(series)
    assert [r.dataset.ImagePositionPatient[2] for r in refs] == [10, 20, 30]


def test_sampling() -> None:
    refs = list(range(10))
    assert aggregate.sample(refs, SeriesSpec(sampling="middle")) == [5]  # type: ignore[arg-type]
    uniform = aggregate.sample(refs, SeriesSpec(sampling="uniform", max_images=4))  # type: ignore[arg-type]
    assert uniform == [0, 3, 6, 9]
    assert aggregate.sample(refs, SeriesSpec()) == refs  # type: ignore[arg-type]


def test_aggregations() -> None:
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6], [0.95, 0.05]], dtype=np.float32)
    positive = [1]
    mean = aggregate.aggregate(probs, positive, SeriesSpec(aggregation="mean"))
    np.testing.assert_allclose(mean, probs.mean(axis=0))
    top = aggregate.aggregate(probs, positive, SeriesSpec(aggregation="top_k_mean", top_k=2))
    np.testing.assert_allclose(top, [0.3, 0.7])
    most = aggregate.aggregate(probs, positive, SeriesSpec(aggregation="max"))
    np.testing.assert_allclose(most, [0.2, 0.8])
    assert aggregate.key_images(aggregate.positive_scores(probs, positive), 2) == [1, 2]


def test_decision_with_several_positive_classes() -> None:
    classes = ["glioma", "meningioma", "notumor", "pituitary"]
    positive = [0, 1, 3]
    # No single tumour class beats "notumor", but together they do: positive finding.
    probs = np.array([0.25, 0.2, 0.35, 0.2], dtype=np.float32)
    label, p_positive, present = aggregate.decide(probs, classes, positive, 0.5)
    assert (label, present) == ("glioma", True)
    assert p_positive == pytest.approx(0.65)
    label, p_positive, present = aggregate.decide(probs, classes, positive, 0.7)
    assert (label, present) == ("notumor", False)


def test_decision_without_positive_class() -> None:
    probs = np.array([0.2, 0.5, 0.3], dtype=np.float32)
    assert aggregate.decide(probs, ["a", "b", "c"], [], 0.5) == ("b", None, None)


def test_output_mappings() -> None:
    logits = OutputSpec(activation="logits", classes=["a", "b"])
    np.testing.assert_allclose(
        to_probabilities(np.array([[0.0, np.log(3.0)]]), logits), [[0.25, 0.75]]
    )
    # "below 0.5 means cancer": the unit scores "benign"
    inverted = OutputSpec(
        activation="sigmoid",
        classes=["benign", "malignant"],
        unit_class="benign",
        positive_classes=["malignant"],
    )
    np.testing.assert_allclose(to_probabilities(np.array([[0.2]]), inverted), [[0.2, 0.8]])
    single_logit = OutputSpec(activation="logits", classes=["no", "yes"], unit_class="yes")
    np.testing.assert_allclose(to_probabilities(np.array([[0.0]]), single_logit), [[0.5, 0.5]])
    with pytest.raises(ModelLoadError, match="3 output units"):
        to_probabilities(np.zeros((1, 3)), logits)


def test_series_prediction_batches_and_explains_key_slices(tiny: LoadedModel) -> None:
    data = make_synthetic(12, seed=77)
    levels = np.rint(data.images * 255).astype(np.uint8)
    series = [slice_at(float(i), i + 1, levels[i]) for i in range(12)]
    prediction = tiny.predict_series(series, key_slices=2)
    assert len(prediction.slices) == 12
    # batched results equal one-image-at-a-time results
    for ds, score in zip(series, prediction.slices, strict=True):
        single = tiny.predict_series([ds], explain=False).slices[0]
        assert single.sop_instance_uid == score.sop_instance_uid == ds.SOPInstanceUID
        assert single.positive_score == pytest.approx(score.positive_score, abs=1e-5)
    scores = {s.sop_instance_uid: s.positive_score for s in prediction.slices}
    key_scores = [scores[h.sop_instance_uid] for h in prediction.heatmaps]
    assert key_scores == sorted(scores.values(), reverse=True)[:2]  # most positive first
    assert prediction.heatmaps[0].cam.shape == (SIZE, SIZE)
    assert set(prediction.timings) == {"load", "decode", "preprocess", "infer", "explain", "total"}
    assert prediction.finding_present is True  # six slices carry a lesion
    assert prediction.positive_probability == pytest.approx(
        float(np.mean(key_scores)),
        abs=1e-5,  # top_k_mean with top_k = 2
    )


def test_multiframe_series_reports_frame_numbers(tiny: LoadedModel) -> None:
    data = make_synthetic(3, seed=5)
    stack = np.rint(data.images * 255).astype(np.uint8)
    ds = make_image(stack.reshape(-1, SIZE), photometric="MONOCHROME2", bits=8)
    ds.Rows, ds.Columns, ds.NumberOfFrames = SIZE, SIZE, 3
    prediction = tiny.predict_series([ds], explain=False)
    assert [s.frame for s in prediction.slices] == [1, 2, 3]
    assert prediction.heatmaps == ()
