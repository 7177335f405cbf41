"""Receive: the DICOM listener, from the first PDU to an indexed, durable instance.

``scp`` answers C-ECHO and C-STORE; ``incoming`` is the file a dataset streams into;
``header`` and ``meta`` read and check what the index keeps; ``statuses`` are the answers;
``spool`` makes the file durable; ``index`` records it; ``reconcile`` repairs the index
at start-up. ``pynetdicom_ext`` holds every change to pynetdicom's internals.
"""
