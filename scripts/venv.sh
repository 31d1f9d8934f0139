# Sourced by scripts/test.sh and scripts/serve.sh: `ensure_venv EXTRAS` makes .venv ready and active.
#
# Creates .venv when missing (reuses it after), installs torch==$TORCH_VERSION FIRST (the CPU build
# lies on this machine kind's disk; a bare torch requirement would pull GBs of CUDA), then the project
# editable with EXTRAS. The project is reinstalled only when pyproject.toml, setup.py or the C
# sources (compression/*.c, built at install time) change, or for new EXTRAS.

TORCH_VERSION=2.13.0

say() { printf '\n==> %s\n' "$*"; }
die() { printf '\n%s: FAILED: %s\n' "$(basename "$0")" "$*" >&2; exit 1; }

torch_is_pinned() {
  python -c "import sys, torch; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" 2>/dev/null
}

ensure_venv() {
  local extras=$1 python=${PYTHON:-python3.11}
  if [ ! -x .venv/bin/python ]; then
    command -v "$python" >/dev/null || die "$python not found (set PYTHON=/path/to/python3.11)"
    say "creating .venv with $python"
    "$python" -m venv .venv
  fi
  # shellcheck disable=SC1091
  . .venv/bin/activate

  if torch_is_pinned; then
    say "torch $TORCH_VERSION already installed"
  else
    say "installing torch==$TORCH_VERSION (before anything that could pull another build)"
    python -m pip install "torch==$TORCH_VERSION"
  fi

  local stamp=".venv/.deltazoo-install-${extras//,/-}" want
  # what pip builds from: metadata and the C kernels compiled at install time
  want="$(cat pyproject.toml setup.py compression/*.c 2>/dev/null | sha256sum | cut -d' ' -f1)"
  if [ "$(cat "$stamp" 2>/dev/null || true)" = "$want" ] && python -c "import deltazoo" 2>/dev/null; then
    say "deltazoo[$extras] already installed (pyproject.toml, setup.py and C sources unchanged)"
  else
    say "installing the project: pip install -e '.[$extras]'"
    python -m pip install -e ".[$extras]"
    echo "$want" > "$stamp"
  fi
  torch_is_pinned || die "torch was replaced by $(python -c 'import torch; print(torch.__version__)'); \
expected $TORCH_VERSION"
}
