#!/usr/bin/env bash
# The test suite: ruff, then unit tests on tiny configs plus real runs on ../shared/data/office when it is there.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
export PREFECT_HOME="$(mktemp -d)/prefect"
.venv/bin/ruff check .                  # lint first: the style rules of pyproject.toml, seconds
exec .venv/bin/python -m pytest -q "$@"
