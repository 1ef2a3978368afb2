#!/usr/bin/env bash
# Installs what the test suite needs beyond cargo: a Python venv with moto's S3 server, used by
# the S3 integration tests on 127.0.0.1. Idempotent: does nothing when it is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -x .venv/bin/moto_server ]; then
  exit 0
fi
echo "setting up .venv with moto[server] for the S3 tests"
python3 -m venv .venv
.venv/bin/pip install --quiet --disable-pip-version-check 'moto[server]>=5,<6'
.venv/bin/moto_server --help > /dev/null
