"""Make DICOM studies from ordinary pictures, for tests and demos.

The chest X-rays shipped with ``pneumonia-model-package`` are JPEGs; the node receives
DICOM. :func:`jpeg_to_dicom` wraps one picture as a Digital X-Ray image "for
presentation" (DX, MONOCHROME2, 8 or 12 bits stored in 8 or 16) with synthetic patient
data and fresh UIDs, and :func:`make_chest_study` writes one study per patient.
The VOI window stored in each file maps the stored values back to exactly the
picture's grey levels, so a correct DICOM reader sees the original picture.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

# Digital X-Ray Image Storage - For Presentation
DX_FOR_PRESENTATION = UID("1.2.840.10008.5.1.4.1.1.1.1")
_IMPLEMENTATION_UID = UID("1.2.826.0.1.3680043.8.498.1")  # pydicom's implementation root


def jpeg_to_dicom(
    picture: Path | str,
    *,
    patient_name: str = "DEMO^PATIENT",
    patient_id: str = "DEMO0001",
    study_uid: str | None = None,
    series_uid: str | None = None,
    instance_number: int = 1,
    bits_allocated: int = 8,
    accession_number: str = "",
    study_description: str = "CHEST X-RAY (synthetic demo study)",
) -> Dataset:
    """Wrap a grayscale picture (JPEG, PNG) as a DX image for presentation.

    Parameters
    ----------
    picture
        The picture file; colour pictures are converted to luma.
    patient_name, patient_id, accession_number
        Synthetic identifiers (never use real ones in demos).
    study_uid, series_uid
        UIDs to group several images; new ones are generated when None.
    instance_number
        InstanceNumber of the image.
    bits_allocated
        8 (BitsStored 8) or 16 (BitsStored 12, the usual depth of DX detectors).
    study_description
        StudyDescription.

    Returns
    -------
    pydicom.dataset.Dataset
        A dataset with file meta information, ready for ``save_as(..., enforce_file_format=True)``.
    """
    if bits_allocated not in (8, 16):
        raise ValueError("bits_allocated must be 8 or 16")
    with Image.open(picture) as opened:
        levels = np.asarray(opened.convert("L"), dtype=np.uint8)
    if bits_allocated == 8:
        stored, bits_stored = levels, 8
    else:
        # 0..255 -> 0..4095, so that the window below maps it back to the same levels.
        stored = np.rint(levels.astype(np.float64) * 4095.0 / 255.0).astype(np.uint16)
        bits_stored = 12

    now = dt.datetime.now()
    sop_uid = generate_uid()
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = DX_FOR_PRESENTATION
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = _IMPLEMENTATION_UID

    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = DX_FOR_PRESENTATION
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
    ds.AccessionNumber = accession_number
    ds.Modality = "DX"
    ds.Manufacturer = "dicom-node studymaker"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = study_description
    ds.SeriesDescription = "PA"
    # Patient module: synthetic; Type 2 attributes present but empty.
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.BodyPartExamined = "CHEST"
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = instance_number
    ds.PatientOrientation = ["L", "F"]  # a PA chest seen as usual: patient's left on the right
    ds.ImageLaterality = "U"  # unpaired: the chest
    ds.ViewPosition = "PA"
    # DX Series / DX Image modules
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ImageType = ["DERIVED", "PRIMARY"]  # derived: rebuilt from a JPEG export
    ds.DerivationDescription = "Converted from a JPEG picture for testing"
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "01"  # the source JPEG was lossy
    ds.PixelIntensityRelationship = "LIN"
    ds.PixelIntensityRelationshipSign = 1
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.RescaleType = "US"
    ds.PresentationLUTShape = "IDENTITY"  # MONOCHROME2: high values are white
    ds.DetectorType = "SCINTILLATOR"
    ds.ImagerPixelSpacing = [0.2, 0.2]
    ds.PixelSpacing = [0.2, 0.2]
    # Chest, SCT 51185008 (DX Anatomy Imaged module, CID 4009)
    region = Dataset()
    region.CodeValue = "51185008"
    region.CodingSchemeDesignator = "SCT"
    region.CodeMeaning = "Chest"
    ds.AnatomicRegionSequence = DicomSequence([region])

    # Image Pixel module
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = stored.shape
    ds.BitsAllocated = bits_allocated
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    # A window of width 2**bits centred at 2**(bits-1) maps x to x / (2**bits - 1)
    # exactly (PS3.3 C.11.2.1.2.1): the viewer shows the picture's own grey levels.
    ds.WindowCenter = 2 ** (bits_stored - 1)
    ds.WindowWidth = 2**bits_stored
    # No VOILUTFunction: LINEAR is its default, and OHIF 3.13 (Cornerstone) misreads an
    # explicit "LINEAR" and shows the image black ("Invalid VOI LUT function").
    ds.PixelData = stored.tobytes()
    ds["PixelData"].VR = "OW" if bits_allocated == 16 else "OB"
    return ds


def make_chest_study(
    out_dir: Path,
    pictures: Sequence[Path],
    *,
    bits_allocated: int = 16,
    one_study_per_picture: bool = True,
) -> list[Path]:
    """Write pictures as DX studies with synthetic patients.

    Parameters
    ----------
    out_dir
        Folder for the ``.dcm`` files (created).
    pictures
        Grayscale pictures, one image each.
    bits_allocated
        8 or 16 (see :func:`jpeg_to_dicom`).
    one_study_per_picture
        True: each picture is its own patient and study (like the demo worklist);
        False: all in one series of one study.

    Returns
    -------
    list of pathlib.Path
        The files written, in the order of ``pictures``.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    shared_study, shared_series = generate_uid(), generate_uid()
    written: list[Path] = []
    for number, picture in enumerate(pictures, start=1):
        separate = one_study_per_picture
        ds = jpeg_to_dicom(
            picture,
            patient_name=f"DEMO^CHEST{number:03d}" if separate else "DEMO^CHEST",
            patient_id=f"DEMO{number:04d}" if separate else "DEMO0001",
            study_uid=None if separate else shared_study,
            series_uid=None if separate else shared_series,
            instance_number=1 if separate else number,
            bits_allocated=bits_allocated,
            accession_number=f"ACC{number:05d}" if separate else "ACC00001",
        )
        path = out_dir / f"{Path(picture).stem}.dcm"
        ds.save_as(path, enforce_file_format=True)
        written.append(path)
    return written


def pneumonia_package_pictures() -> list[Path]:
    """The 16 chest X-ray JPEGs shipped in ``pneumonia-model-package`` (sorted).

    Located through the package's import spec without importing it (its ``__init__``
    needs training-only dependencies). Empty when the package is not installed.
    """
    import importlib.util

    spec = importlib.util.find_spec("pneumonia_model_package")
    if spec is None or not spec.submodule_search_locations:
        return []
    root = Path(next(iter(spec.submodule_search_locations)))
    return sorted((root / "datasets" / "pneumonia-data" / "val").glob("*.jpeg"))
