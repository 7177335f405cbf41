#!/usr/bin/env bash
# The test command: set up (incl. test peers), make sure PostgreSQL and RabbitMQ run, then ruff, mypy,
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

# RabbitMQ on 127.0.0.1:5672 (guest/guest) for the cluster tests: start it where stopped.
rabbitmq_up() { (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; }
if ! rabbitmq_up; then
    if command -v rabbitmqctl >/dev/null 2>&1 && rabbitmqctl -q status >/dev/null 2>&1; then
        rabbitmqctl -q start_app || true  # the node runs, its broker app was stopped
    elif command -v rabbitmq-server >/dev/null 2>&1; then
        rabbitmq-server -detached || true
    fi
    for _ in $(seq 1 60); do rabbitmq_up && break; sleep 1; done
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
