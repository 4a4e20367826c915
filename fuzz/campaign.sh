#!/usr/bin/env bash
# A fuzzing campaign (not part of CI): every target (or those named) runs until it has
# executed RUNS inputs or SECONDS have passed, then its corpus is merged and minimised
# (-merge=1 into a fresh folder, which replaces fuzz/corpus/<target>), and a markdown
# report says per target: executions, exec/s, coverage (libFuzzer's cov/ft), corpus size
# before and after, and the crashes (artifact files, with how to replay them).
#
#   fuzz/campaign.sh                      # 10 million executions per target
#   fuzz/campaign.sh -r 200000 pool_model # a short one, one target
#   fuzz/campaign.sh -t 3600              # an hour per target (or 10M runs, if sooner)
#
# Options: -r RUNS (default 10000000), -t SECONDS (default: no time bound), -o DIR (default
# fuzz/campaigns/<UTC time>), -k keep fuzz/corpus/<target> as it was (the minimised corpus
# stays in DIR only). Exits 1 if any target crashed; the report is written either way.
# A crash, once fixed, becomes a regression test: copy it to fuzz/regressions/<target>/.
set -euo pipefail

runs=10000000
seconds=0
out=""
keep=0
while getopts "r:t:o:kh" opt; do
    case "$opt" in
        r) runs=$OPTARG ;;
        t) seconds=$OPTARG ;;
        o) out=$OPTARG ;;
        k) keep=1 ;;
        *) sed -n '2,17p' "$0"; exit 2 ;;
    esac
done
shift $((OPTIND - 1))

fuzz_dir=$(cd "$(dirname "$0")" && pwd)
# -o is relative to where the script was called from, not to fuzz/.
if [ -n "$out" ]; then
    out=$(realpath -m "$out")
fi
cd "$fuzz_dir"
out=${out:-$fuzz_dir/campaigns/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$out"
out=$(cd "$out" && pwd)
report="$out/report.md"

# Fresh seeds (the tests of fuzz/common write them into fuzz/corpus/<target>/), then the
# targets, once.
cargo test --manifest-path Cargo.toml -p pvirq-fuzz-common --release generate_corpus >/dev/null
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo +nightly fuzz list)
fi
# Each target with its sanitizer (fuzz/sanitizer.sh says which and why).
for t in "${targets[@]}"; do
    cargo +nightly fuzz build -s "$(./sanitizer.sh "$t")" "$t"
done

files() { find "$1" -maxdepth 1 -type f 2>/dev/null | wc -l; }
bytes() { du -sb "$1" 2>/dev/null | cut -f1; }
# The last value of libFuzzer's `name: value` status fields in a log.
field() { grep -oE "$1: [0-9]+" "$2" | tail -1 | awk '{print $2}'; }
final_stat() { grep -E "^stat::$1:" "$2" | awk '{print $2}'; }

{
    echo "# Fuzzing campaign $(basename "$out")"
    echo
    echo "- bound: $runs executions per target$([ "$seconds" -gt 0 ] && echo " or $seconds s, whichever comes first")"
    echo "- machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo), load average at start $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "- toolchain: $(rustc +nightly --version), $(cargo fuzz --version 2>/dev/null || echo cargo-fuzz)"
    echo "- commit: $(git -C "$fuzz_dir" rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo
    echo "| target | sanitizer | executions | exec/s | cov | ft | corpus before | after fuzzing | after merge | crashes |"
    echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"
} >"$report"

crashed=0
details=""
for t in "${targets[@]}"; do
    echo "== $t"
    dir="$out/$t"
    mkdir -p "$dir/artifacts" "$dir/merged"
    corpus="$fuzz_dir/corpus/$t"
    mkdir -p "$corpus"
    before="$(files "$corpus") files, $(bytes "$corpus") B"
    limits=(-runs="$runs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
        -artifact_prefix="$dir/artifacts/")
    [ "$seconds" -gt 0 ] && limits+=(-max_total_time="$seconds")
    status=0
    san=$(./sanitizer.sh "$t")
    cargo +nightly fuzz run -s "$san" "$t" "$corpus" -- "${limits[@]}" >"$dir/fuzz.log" 2>&1 || status=$?
    grown="$(files "$corpus") files, $(bytes "$corpus") B"
    # Merge into a fresh folder: the smallest set of inputs with the same coverage.
    cargo +nightly fuzz run -s "$san" "$t" "$dir/merged" "$corpus" -- -merge=1 -timeout=10 \
        -rss_limit_mb=2048 -artifact_prefix="$dir/artifacts/" >"$dir/merge.log" 2>&1 || true
    after="$(files "$dir/merged") files, $(bytes "$dir/merged") B"
    if [ "$keep" -eq 0 ] && [ "$(files "$dir/merged")" -gt 0 ]; then
        rm -rf "$corpus"
        cp -r "$dir/merged" "$corpus"
    fi
    execs=$(final_stat number_of_executed_units "$dir/fuzz.log")
    rate=$(final_stat average_exec_per_sec "$dir/fuzz.log")
    cov=$(field cov "$dir/fuzz.log")
    ft=$(field ft "$dir/fuzz.log")
    mapfile -t found < <(find "$dir/artifacts" -maxdepth 1 -type f | sort)
    if [ ${#found[@]} -gt 0 ] || [ "$status" -ne 0 ]; then
        crashed=1
        crashes="**${#found[@]}** (exit $status)"
        details+=$'\n'"## $t: crashes"$'\n\n'"Log: \`$dir/fuzz.log\`. Replay one with \`cargo +nightly fuzz run $t FILE\` (from fuzz/); once fixed, copy it to \`fuzz/regressions/$t/\`."$'\n\n'
        for f in "${found[@]}"; do
            details+="- \`$f\` ($(stat -c %s "$f") B)"$'\n'
        done
    else
        crashes="0"
    fi
    echo "| \`$t\` | $san | ${execs:-?} | ${rate:-?} | ${cov:-?} | ${ft:-?} | $before | $grown | $after | $crashes |" >>"$report"
done

{
    echo
    echo "Load average at the end: $(cut -d' ' -f1-3 /proc/loadavg). Logs, merged corpora and artifacts: \`$out/<target>/\`."
    printf '%s' "$details"
} >>"$report"
echo
cat "$report"
exit "$crashed"
