#!/usr/bin/env bash
# Builds the fuzz targets and runs each one briefly over its seed corpus.
#
#   fuzz/smoke.sh                      # every target, 5 s each
#   SMOKE_SECONDS=30 fuzz/smoke.sh     # longer
#   fuzz/smoke.sh sse_framer retry_hints
#
# Needs cargo-fuzz (`cargo install cargo-fuzz --locked`); works on the
# stable toolchain because it builds with `--sanitizer none` (see README.md).
# The seeds in fuzz/corpus/<target> are only read: what a run adds goes to a
# temporary directory, removed at the end. A crash fails the script and
# leaves its input in fuzz/artifacts/<target>/.
set -euo pipefail

cd "$(dirname "$0")/.."
seconds="${SMOKE_SECONDS:-5}"
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(parse_request retry_hints sse_framer stream_openai stream_anthropic stream_gemini client_anthropic client_gemini client_responses)
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "smoke: cargo-fuzz is not installed (cargo install cargo-fuzz --locked)" >&2
    exit 2
fi

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

echo "smoke: building ${targets[*]} (cargo fuzz build --sanitizer none)"
for target in "${targets[@]}"; do
    cargo fuzz build --sanitizer none "$target"
done

for target in "${targets[@]}"; do
    mkdir -p "$scratch/$target"
    args=(-max_total_time="$seconds" -print_final_stats=1)
    if [ -f "fuzz/$target.dict" ]; then
        args+=(-dict="fuzz/$target.dict")
    fi
    echo "smoke: cargo fuzz run --sanitizer none $target <scratch> fuzz/corpus/$target -- ${args[*]}"
    log="$scratch/$target.log"
    if ! cargo fuzz run --sanitizer none "$target" "$scratch/$target" "fuzz/corpus/$target" -- "${args[@]}" \
        >"$log" 2>&1; then
        tail -n 60 "$log" >&2
        echo "smoke: $target FAILED (input saved in fuzz/artifacts/$target/)" >&2
        exit 1
    fi
    runs="$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')"
    cov="$(grep -o 'cov: [0-9]*' "$log" | tail -n 1 || echo 'cov: ?')"
    echo "smoke: $target ok: $runs executions in ${seconds}s, $cov"
done
echo "smoke: all ${#targets[@]} targets ran without a crash"
