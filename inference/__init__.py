"""Model runtime of dicom-node: DICOM pixels in, class probabilities and heatmaps out.

This package never imports networking or database code, so it can be tested, benchmarked
and reused on its own (``cli -> dicom_node -> inference``).
"""
