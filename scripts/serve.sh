#!/usr/bin/env bash
# Install deltazoo (torch pinned first) into .venv and start the embedded server:
#   bash scripts/serve.sh [--host H] [--port P]
# Embedded default: SQLite and objects under ./.deltazoo (or DELTAZOO_HOME), jobs in-process.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/venv.sh
. scripts/venv.sh
ensure_venv server
exec deltazoo serve "$@"
