#!/usr/bin/env bash
# The deltazoo test command: bash scripts/test.sh [pytest args...]
#
# Works in a clean clone: creates .venv when missing (reuses it after), installs torch==2.13.0 FIRST
# (the CPU build lies on this machine kind's disk; a bare torch requirement would pull GBs of CUDA),
# then the project with its [server,dev] extras; makes sure Postgres and Redis answer on 127.0.0.1,
# starting them when they are installed but stopped, and fails loudly when they are absent; installs the
# browser test's node packages (npm ci); runs the whole suite on two processes with TRITON_INTERPRET=1
# (Triton kernels run on CPU).
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/venv.sh
. scripts/venv.sh

# --- 1. virtual environment, torch first, then the project ------------------------------------
ensure_venv server,dev

# --- 2. the browser test's Chromium (Debian's package) and node packages (tests/browser: playwright-core driving /usr/bin/chromium) --
if [ ! -x /usr/bin/chromium ]; then
  command -v apt-get >/dev/null || die "the browser test needs Debian's chromium at /usr/bin/chromium"
  say "installing Debian's chromium for the browser test"
  sudo_=""; [ "$(id -u)" -eq 0 ] || sudo_="sudo"
  $sudo_ apt-get update -qq && $sudo_ apt-get install -y -qq chromium \
    || die "could not install chromium (apt-get install chromium): the browser test needs it"
fi
if [ -f tests/browser/package-lock.json ]; then
  lock_sha="$(sha256sum tests/browser/package-lock.json | cut -d' ' -f1)"
  browser_stamp=tests/browser/node_modules/.deltazoo-lock-sha256
  if [ "$(cat "$browser_stamp" 2>/dev/null || true)" = "$lock_sha" ]; then
    say "tests/browser node packages already installed"
  elif command -v npm >/dev/null; then
    say "npm ci in tests/browser"
    npm ci --prefix tests/browser --no-audit --no-fund
    echo "$lock_sha" > "$browser_stamp"
  else
    die "npm is missing: the browser test needs Node.js (npm ci in tests/browser)"
  fi
fi

# --- 3. Postgres and Redis ----------------------------------------------------------------------
start_postgres() {
  command -v pg_ctlcluster >/dev/null || return 0
  local version
  for version in $(ls /etc/postgresql 2>/dev/null); do
    say "starting Postgres $version"
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  done
}
start_redis() {
  command -v redis-server >/dev/null || return 0
  say "starting Redis"
  mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log || true
}

if ! python -m tests.services check; then
  python -c "from tests.services import check_postgres as c; import sys; sys.exit(c() is not None)" || start_postgres
  python -c "from tests.services import check_redis as c; import sys; sys.exit(c() is not None)" || start_redis
  python -m tests.services check --wait 30 \
    || die "Postgres and Redis must answer on 127.0.0.1 (the suite does not skip what needs them)"
fi

# --- 4. the suite -------------------------------------------------------------------------------
export TRITON_INTERPRET=1
log="$(mktemp -t deltazoo-pytest.XXXXXX.log)"
# --dist loadfile keeps a file's tests on one worker, so a module's servers start once, not twice.
# --durations shows the slowest tests every run: the whole suite must stay under 10 minutes on 2 cores.
say "python -m pytest -n 2 --dist loadfile --durations=15 $* (log: $log)"
set +e
python -m pytest -n 2 --dist loadfile --durations=15 "$@" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e

# The last pytest summary ("3 passed, 1 failed in 9.1s"), with or without its ==== frame (-q drops it).
summary="$(grep -E '(passed|failed|errors?|skipped|no tests ran).* in [0-9.]+s' "$log" | tail -n 1 \
  | sed -E 's/^=+ //; s/ =+$//' || true)"
case "$rc" in
  0) verdict="PASSED" ;;
  5) verdict="FAILED (pytest collected no tests)" ;;
  *) verdict="FAILED (pytest exit $rc)" ;;
esac
printf '\nscripts/test.sh: %s: %s\n' "$verdict" "${summary:-no pytest summary line}"
[ "$rc" -eq 0 ] || exit "$rc"
