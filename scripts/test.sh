#!/usr/bin/env bash
# The test command: set up (incl. test peers), make sure PostgreSQL runs, then ruff, mypy,
# the import contracts (pyproject [tool.importlinter]) and the whole pytest suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test

# PostgreSQL on 127.0.0.1:5432 (trust auth): start it where it is installed but stopped.
if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
    if command -v pg_ctlcluster >/dev/null 2>&1; then
        for version in $(ls /etc/postgresql 2>/dev/null); do
            pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
        done
    fi
    for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
fi

export TF_CPP_MIN_LOG_LEVEL=2
echo "== ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "== mypy"
.venv/bin/mypy
echo "== import contracts"
.venv/bin/lint-imports --no-cache
echo "== pytest"
.venv/bin/pytest "$@"
