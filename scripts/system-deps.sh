#!/usr/bin/env bash
# The Debian/Ubuntu packages that `make` needs outside .venv/, installed with apt-get only when missing:
#   venv   $PYTHON (default python3) with its venv module: python3 python3-venv
#   test   headless Chromium and chromedriver (tests/test_dashboard.py): chromium chromium-driver
#          PostgreSQL's server binaries (tests/test_postgres.py): postgresql
# A package counts as present where the tests would find it: CHROMIUM, CHROMEDRIVER (the tests' overrides) or
# chromium/chromium-browser/google-chrome and chromedriver on PATH; initdb in CTR_PG_BINDIR or
# /usr/lib/postgresql/*/bin.
# Usage: scripts/system-deps.sh venv [test]. When everything is there it prints nothing and runs no apt-get, so
# `make` calls it every time (no stamp: a package removed later is installed again). Runs apt-get through sudo
# when not root.
set -euo pipefail

PYTHON=${PYTHON:-python3}

# found OVERRIDE NAME...: the override when set (it must be executable, as the tests require), else NAME on PATH.
found() {
  local override=$1
  shift
  if [ -n "$override" ]; then
    [ -x "$override" ]
    return
  fi
  for name in "$@"; do
    command -v "$name" >/dev/null 2>&1 && return 0
  done
  return 1
}

missing=()
for what in "$@"; do
  case "$what" in
    venv)
      command -v "$PYTHON" >/dev/null 2>&1 || missing+=(python3)
      "$PYTHON" -c "import ensurepip, venv" >/dev/null 2>&1 || missing+=(python3-venv)
      ;;
    test)
      found "${CHROMIUM:-}" chromium chromium-browser google-chrome || missing+=(chromium)
      found "${CHROMEDRIVER:-}" chromedriver || missing+=(chromium-driver)
      [ -x "${CTR_PG_BINDIR:-/nonexistent}/initdb" ] || compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null \
        || missing+=(postgresql)
      ;;
    *)
      echo "scripts/system-deps.sh: error: $what: unknown group (venv, test)" >&2
      exit 2
      ;;
  esac
done
[ ${#missing[@]} -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
  echo "scripts/system-deps.sh: error: apt-get not found: install ${missing[*]} (Debian package names) yourself" >&2
  exit 1
fi
sudo=()
if [ "$(id -u)" -ne 0 ]; then
  if ! command -v sudo >/dev/null 2>&1; then
    echo "scripts/system-deps.sh: error: not root and no sudo: run as root: apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
  sudo=(sudo)
fi
echo "scripts/system-deps.sh: installing ${missing[*]}" >&2
"${sudo[@]}" apt-get update -q
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
