"""DICOM result objects built from a model's prediction on a series.

One model's result on one series becomes, all in the study of the series:

* a TID 1500 Structured Report (:func:`build_sr`), the machine-readable result;
* one Grad-CAM Secondary Capture per key slice (:func:`build_sc`), what people look at;
* optionally an Encapsulated PDF summary (:func:`build_pdf`).

UIDs come from :mod:`dicom_node.results.uids`, so building the same results again gives
the same objects (the PACS replaces instead of duplicating). This package depends on
``inference.types`` and ``dicom_node.identity`` only: no networking, no database.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydicom.dataset import Dataset

from dicom_node.results import uids
from dicom_node.results.common import Predecessor, ResultObject, check_sources
from dicom_node.results.pdf import build_pdf
from dicom_node.results.sc import build_sc
from dicom_node.results.sr import SR_CLASS_UIDS, SRClass, build_sr
from inference.types import ModelInfo, SeriesPrediction

__all__ = [
    "Predecessor",
    "ResultObject",
    "SRClass",
    "build_pdf",
    "build_results",
    "build_sc",
    "build_sr",
    "predecessor_for",
]


def build_results(
    sources: Sequence[Dataset],
    prediction: SeriesPrediction,
    *,
    generation: int,
    sr_class: SRClass = "comprehensive3d",
    include_pdf: bool = True,
    key_slices: int = 1,
    predecessor: Predecessor | None = None,
) -> list[ResultObject]:
    """Build every result object of one model's prediction on one series.

    Parameters
    ----------
    sources : Sequence[pydicom.Dataset]
        The instances of the analysed series (headers suffice).
    prediction : inference.types.SeriesPrediction
        The model's decision, with heatmaps of its key slices, most positive first.
    generation : int
        0 the first time the series is processed, +1 each time it is processed again
        with other input (late instances). Same generation, same UIDs.
    sr_class : {"comprehensive3d", "comprehensive", "enhanced"}, optional
        SR SOP class the destination accepts.
    include_pdf : bool, optional
        Whether to add the Encapsulated PDF summary.
    key_slices : int, optional
        How many heatmaps (from the front of ``prediction.heatmaps``) become Secondary
        Captures; fewer are built when fewer heatmaps exist.
    predecessor : Predecessor, optional
        The SR this generation replaces; the pipeline passes what it delivered before
        (or :func:`predecessor_for` when the model version is unchanged).

    Returns
    -------
    list[ResultObject]
        The SR first, then the Secondary Captures in key-slice order, then the PDF.

    Raises
    ------
    ValueError
        On inconsistent input (see the builders) or a negative ``key_slices``.
    """
    if isinstance(key_slices, bool) or key_slices < 0:
        raise ValueError(f"key_slices must be a non-negative integer, not {key_slices!r}")
    check_sources(sources)
    model = prediction.model
    series = str(sources[0].SeriesInstanceUID)

    def uid_pair(kind: uids.ResultKind, index: int = 0, variant: str = "") -> tuple[str, str]:
        return (
            uids.result_series_uid(series, model.id, kind),
            uids.result_instance_uid(
                series, model.id, model.version, kind, generation, index, variant
            ),
        )

    # One SR per SR class: each class is a different object, so it gets its own UID.
    sr_series, sr_instance = uid_pair("sr", variant=sr_class)
    results = [
        ResultObject(
            "sr",
            build_sr(
                sources,
                prediction,
                sr_class=sr_class,
                predecessor=predecessor,
                # A later generation is a later instance of the same series.
                instance_number=generation + 1,
                series_uid=sr_series,
                instance_uid=sr_instance,
            ),
        )
    ]
    by_uid = {str(ds.SOPInstanceUID): ds for ds in sources}
    for index, heatmap in enumerate(prediction.heatmaps[:key_slices]):
        source = by_uid.get(heatmap.sop_instance_uid)
        if source is None:
            raise ValueError(f"heatmap instance {heatmap.sop_instance_uid} is not a source")
        series_uid, instance_uid = uid_pair("sc", index)
        sc = build_sc(
            source,
            heatmap,
            prediction,
            series_uid=series_uid,
            instance_uid=instance_uid,
            # The SC series keeps earlier generations' images (DICOM cannot delete them
            # from a PACS): numbering on across generations sorts the newest last.
            instance_number=generation * key_slices + index + 1,
        )
        results.append(ResultObject("sc", sc))
    if include_pdf:
        series_uid, instance_uid = uid_pair("pdf")
        pdf = build_pdf(
            sources,
            prediction,
            series_uid=series_uid,
            instance_uid=instance_uid,
            instance_number=generation + 1,
        )
        results.append(ResultObject("pdf", pdf))
    return results


def predecessor_for(
    sources: Sequence[Dataset], model: ModelInfo, generation: int, sr_class: SRClass
) -> Predecessor | None:
    """The SR that :func:`build_results` made for the previous generation, if any.

    Valid only when that generation used the same model version and SR class (the UIDs
    are derived from both); the pipeline should prefer what it recorded as delivered.
    """
    if generation <= 0:
        return None
    series = str(sources[0].SeriesInstanceUID)
    return Predecessor(
        study_instance_uid=str(sources[0].StudyInstanceUID),
        series_instance_uid=uids.result_series_uid(series, model.id, "sr"),
        sop_instance_uid=uids.result_instance_uid(
            series, model.id, model.version, "sr", generation - 1, variant=sr_class
        ),
        sop_class_uid=SR_CLASS_UIDS[sr_class],
    )
