"""How this node names itself in the objects it creates.

Every object the node builds carries these equipment attributes. Routing uses them to
recognise our own results when a PACS forwards them back, so a forwarding rule on the PACS
can never start a loop (see ``routing.is_own_object``).
"""

from __future__ import annotations

from dicom_node import __version__

MANUFACTURER = "dicom-node"
MANUFACTURER_MODEL_NAME = "dicom-node AI results"
SOFTWARE_VERSIONS = f"dicom-node {__version__}"
IMPLEMENTATION_VERSION_NAME = f"DICOMNODE_{__version__.replace('.', '')}"[:16]
NOT_FOR_DIAGNOSTIC_USE = (
    "NOT FOR DIAGNOSTIC USE. Produced automatically by a research AI model; "
    "results must not be used for clinical decisions."
)
NOT_FOR_DIAGNOSTIC_USE_SHORT = "NOT FOR DIAGNOSTIC USE"
# Manufacturer's Model Name of the Secondary Capture an uploaded picture becomes: ours,
# but not that of the results, so routing takes it (``route.rules.is_own_object``).
UPLOAD_MODEL_NAME = "dicom-node picture upload"
