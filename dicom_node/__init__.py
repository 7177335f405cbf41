"""dicom-node: receive DICOM series, run CNN classifiers, send results back.

Not for diagnostic use.
"""

__version__ = "0.1.0"
