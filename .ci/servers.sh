#!/usr/bin/env bash
# The servers the shared-state tests start their own instances of:
# Redis (tests/support/redis.rs) and PostgreSQL (tests/support/postgres.rs);
# and the headless browser the dashboard's tests drive (tests/ui_browser.rs,
# tests/support/browser.rs): Debian's chromium, no X server needed.
# Installed from Debian's packages when missing; quiet when all is there,
# loud (apt's own output, a non-zero exit) when an install fails.
set -euo pipefail

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
# Debian puts the server binaries (initdb, postgres) off the PATH.
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)

if [ "${#missing[@]}" -eq 0 ]; then
    exit 0
fi

sudo=()
if [ "$(id -u)" -ne 0 ]; then
    sudo=(sudo)
fi
echo "installing ${missing[*]} (Debian packages) for the shared-state and browser tests"
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null

command -v redis-server >/dev/null 2>&1 || { echo "redis-server is still missing" >&2; exit 1; }
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { echo "initdb is still missing" >&2; exit 1; }
command -v chromium >/dev/null 2>&1 || { echo "chromium is still missing" >&2; exit 1; }
