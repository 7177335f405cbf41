"""The demo: a local PACS, a study maker and ``dicom-node demo``. Nothing in the runtime
imports this package (checked by the import contracts in pyproject.toml)."""
