"""Route: when a series is complete, and which models and destinations it goes to.

``completion`` decides that a series is complete (DICOM has no such message); ``rules``
evaluates the configured routes on its tags; ``waits`` says which routes wait for weights.
"""
