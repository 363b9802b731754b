#!/usr/bin/env bash
# Issue #13: builds the fuzz targets once, then runs each for a bounded time; see
# docs/fuzzing.md. Exits non-zero when a target finds an input that breaks a property, after
# printing where the input was written and how to replay it.
#
#   fuzz/run.sh                        # every target, SECONDS_PER_TARGET (default 60) each
#   SECONDS_PER_TARGET=600 fuzz/run.sh location byte_range
#   LIBFUZZER_ARGS="-max_len=16384" fuzz/run.sh config_loader   # more libFuzzer flags, word-split
#
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`). The checked-in seeds
# in fuzz/corpus/<target>/ are only read; what the fuzzer learns goes to
# fuzz/target/corpus/<target>/ (kept between runs, not in git), findings to
# fuzz/artifacts/<target>/, each run's output to fuzz/target/logs/<target>.log.
set -euo pipefail
cd "$(dirname "$0")"

SECONDS_PER_TARGET=${SECONDS_PER_TARGET:-60}
ALL_TARGETS=(key_parser location byte_range config_loader)
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=("${ALL_TARGETS[@]}")
# Release with debug assertions and overflow checks (an overflow is a finding too); build and
# run use the same flags so the one (AddressSanitizer) build serves every run.
FUZZ_FLAGS=(-O -a)

cargo +nightly fuzz build "${FUZZ_FLAGS[@]}"

mkdir -p target/logs
failed=()
for target in "${TARGETS[@]}"; do
    mkdir -p "target/corpus/$target" "artifacts/$target"
    log="target/logs/$target.log"
    started=target/logs/$target.started
    touch "$started"
    echo "== $target: ${SECONDS_PER_TARGET}s"
    status=0
    cargo +nightly fuzz run "${FUZZ_FLAGS[@]}" "$target" "target/corpus/$target" "corpus/$target" -- \
        -max_total_time="$SECONDS_PER_TARGET" -timeout=10 -print_final_stats=1 ${LIBFUZZER_ARGS:-} >"$log" 2>&1 ||
        status=$?
    runs=$(grep -oE 'Done [0-9]+ runs in [0-9]+ second' "$log" | tail -n1 || true)
    cov=$(grep -oE 'cov: [0-9]+ ft: [0-9]+ corp: [0-9]+/[0-9]+[a-zA-Z]*' "$log" | tail -n1 || true)
    echo "   ${runs:-no summary} | ${cov:-no coverage line} | corpus $(ls "target/corpus/$target" | wc -l) files"
    if [ "$status" -ne 0 ]; then
        failed+=("$target")
        echo "   FINDING (exit $status); log: fuzz/$log"
        grep -m1 -A3 -E "panicked at|ERROR: (AddressSanitizer|libFuzzer)" "$log" | sed 's/^/   /' || true
        find "artifacts/$target" -type f -newer "$started" | while read -r input; do
            echo "   input: fuzz/$input"
            echo "   replay: (cd fuzz && cargo +nightly fuzz run ${FUZZ_FLAGS[*]} $target $input)"
        done
    fi
    rm -f "$started"
done

if [ ${#failed[@]} -gt 0 ]; then
    echo "findings in: ${failed[*]}"
    exit 1
fi
echo "no findings in: ${TARGETS[*]}"
