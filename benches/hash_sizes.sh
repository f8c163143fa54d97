#!/usr/bin/env bash
# Sizes for a hash list: `interdict hashes sizes` (the first KiB of each tarball, by Range
# request) vs `interdict hashes fetch` (each whole tarball, verified and hashed), in one run.
#
# Usage: benches/hash_sizes.sh [PER_PLATFORM]     (default 2)
#   1. side by side on a sample: the first PER_PLATFORM releases of each platform in the shipped
#      Claude Code list, fetched whole, then sized from prefixes (alternating, twice);
#   2. the whole shipped list with its sizes taken off, sized again with one request at a time
#      and with 8 (the default); the sizes must equal the shipped ones.
# Needs registry.npmjs.org. INTERDICT=PATH uses that binary instead of a release build.
set -euo pipefail
cd "$(dirname "$0")/.."
PER=${1:-2}
if [ -z "${INTERDICT:-}" ]; then
  cargo build --release --quiet --bin interdict
  INTERDICT=target/release/interdict
fi
LIST=policies/hashes/claude-code.sha256
TMP=$(mktemp -d /tmp/interdict-sizes-bench.XXXXXX)
trap 'rm -rf "$TMP"' EXIT

# The sample: the first PER digest lines of each platform, without sizes.
for p in linux-x64 linux-arm64 linux-x64-musl linux-arm64-musl darwin-x64 darwin-arm64; do
  grep -m "$PER" -E "^[0-9a-f]{64}  npm:@anthropic-ai/claude-code-$p@" "$LIST"
done | sed 's/  size=[0-9]*$//' > "$TMP/sample.sha256"
n=$(wc -l < "$TMP/sample.sha256")
specs=$(sed -E 's/^[0-9a-f]{64}  (npm:[^:]+):.*/\1/' "$TMP/sample.sha256")

secs() { python3 -c 'import sys,time; print(f"{time.time()-float(sys.argv[1]):.1f}")' "$1"; }
now() { python3 -c 'import time; print(time.time())'; }

for round in 1 2; do
  t=$(now)
  # shellcheck disable=SC2086
  "$INTERDICT" hashes fetch --entry package/claude $specs > "$TMP/fetched" 2> "$TMP/fetch.log"
  echo "round $round: fetch, $n packages: $(secs "$t") s; $(tail -n 1 "$TMP/fetch.log")"
  t=$(now)
  "$INTERDICT" hashes sizes "$TMP/sample.sha256" > "$TMP/sized" 2> "$TMP/sizes.log"
  echo "round $round: sizes, $n lines:    $(secs "$t") s; $(tail -n 1 "$TMP/sizes.log")"
  # Both give the same size for each line.
  diff <(grep -v '^#' "$TMP/fetched" | awk '{print $2, $3}') \
    <(awk '{print $2, $3}' "$TMP/sized") > /dev/null \
    || { echo "fetch and sizes disagree"; exit 1; }
done

sed 's/  size=[0-9]*$//' "$LIST" > "$TMP/whole.sha256"
for jobs in 1 8; do
  t=$(now)
  "$INTERDICT" hashes sizes --jobs "$jobs" "$TMP/whole.sha256" > "$TMP/whole.sized" 2> "$TMP/whole.log"
  echo "whole list, --jobs $jobs: sizes, $(grep -c '^[0-9a-f]' "$LIST") lines: $(secs "$t") s; $(tail -n 1 "$TMP/whole.log")"
  # The shipped list's sizes were made this way; the lines must agree.
  diff <(grep -v '^#' "$TMP/whole.sized") <(grep -v '^#' "$LIST") > /dev/null \
    || { echo "the sizes differ from the shipped list"; exit 1; }
done
echo "sizes equal the shipped list's"
