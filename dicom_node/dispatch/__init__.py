"""Dispatch: getting objects to their destinations.

``delivery`` owns Delivery rows and sends them with retries and backoff per destination;
``sender`` is the C-STORE SCU of ``dicom-node send``.
"""
