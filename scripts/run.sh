#!/usr/bin/env bash
# The main job: set up, then run the node with its embedded defaults (SQLite, local spool,
# the bundled models). With the demo command available, the demo pushes real studies
# through it and prints what came back. Extra arguments go to `dicom-node`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [[ $# -gt 0 ]]; then
    exec .venv/bin/dicom-node "$@"
elif .venv/bin/dicom-node demo --help >/dev/null 2>&1; then
    exec .venv/bin/dicom-node demo
else
    exec .venv/bin/dicom-node serve
fi
