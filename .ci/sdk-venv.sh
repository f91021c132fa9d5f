#!/usr/bin/env bash
# The official Python SDKs that tests/official_sdks.rs drives against
# keyrelay, in a venv at target/sdk-venv. Idempotent: a venv that already
# has these exact versions is left as it is. Everything comes from PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=target/sdk-venv
PINS=(anthropic==2.10.0 openai==3.51.0 google-genai==3.3.0)

if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    # Debian's python3 ships venv/ensurepip separately.
    apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
fi
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
# `pip freeze` lists names normalised (google-genai stays google-genai).
if ! diff -q <(printf '%s\n' "${PINS[@]}" | sort) \
        <("$VENV/bin/python" -m pip freeze 2>/dev/null | grep -E '^(anthropic|openai|google-genai)==' | sort) >/dev/null; then
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${PINS[@]}"
fi
echo "SDK venv ready: $VENV ($("$VENV/bin/python" --version), ${PINS[*]})"
