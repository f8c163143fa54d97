#!/usr/bin/env bash
# Side-by-side: `interdict scan` vs `find | xargs sha256sum` over the same synthetic tree, in one
# run, alternating, page cache warm for both (each is run once untimed first).
#
# Usage: benches/scan.sh [FILES] [TOTAL_MIB]      (defaults: 20000 files, 2048 MiB)
set -euo pipefail
cd "$(dirname "$0")/.."
FILES=${1:-20000}
TOTAL_MIB=${2:-2048}
ROUNDS=${ROUNDS:-5}
cargo build --release --quiet
BIN=target/release/interdict
TREE=$(mktemp -d /tmp/interdict-scan-bench.XXXXXX)
trap 'rm -rf "$TREE"' EXIT

# Executables of varied sizes adding up to TOTAL_MIB, spread over nested folders, plus as many
# non-executable files (which the scan lists but does not hash).
python3 - "$TREE" "$FILES" "$TOTAL_MIB" <<'PY'
import os, random, sys
root, files, total = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) << 20
random.seed(42)
sizes = [random.paretovariate(1.2) for _ in range(files // 2)]
scale = total / sum(sizes)
block = os.urandom(1 << 20)
for i, s in enumerate(sizes):
    d = os.path.join(root, f"d{i % 97}", f"e{i % 13}")
    os.makedirs(d, exist_ok=True)
    n = max(1, int(s * scale))
    p = os.path.join(d, f"tool-{i}")
    with open(p, "wb") as f:
        while n > 0:
            k = min(n, len(block))
            f.write(block[:k]); n -= k
    os.chmod(p, 0o755)
    with open(os.path.join(d, f"data-{i}.txt"), "w") as f:
        f.write("x" * 100)
PY
BYTES=$(find "$TREE" -type f -perm /111 -printf '%s\n' | awk '{s+=$1} END {print s}')
echo "tree: $(find "$TREE" -type f | wc -l) files, $(find "$TREE" -type f -perm /111 | wc -l) executables, $((BYTES >> 20)) MiB executable bytes; $(nproc) cores"

run_interdict() { "$BIN" scan --no-processes --policy policies/ai-coding-agents.toml --root "$TREE" --format json >/dev/null || [ $? -eq 1 ]; }
run_sha256sum() { find "$TREE" -type f -perm /111 -print0 | xargs -0 sha256sum >/dev/null; }
run_sha256sum_p() { find "$TREE" -type f -perm /111 -print0 | xargs -0 -P"$(nproc)" -n 64 sha256sum >/dev/null; }

now() { date +%s.%N; }
declare -A T
for name in interdict sha256sum sha256sum_p; do "run_$name"; T[$name]=""; done
for _ in $(seq "$ROUNDS"); do
  for name in interdict sha256sum sha256sum_p; do
    s=$(now); "run_$name"; e=$(now)
    T[$name]="${T[$name]} $(awk "BEGIN{print $e - $s}")"
  done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
mi=$(echo "${T[interdict]}" | median); ms=$(echo "${T[sha256sum]}" | median); mp=$(echo "${T[sha256sum_p]}" | median)
calc() { awk "BEGIN{print $*}"; }
printf '%-44s %8.3f s  %7.0f MiB/s\n' "interdict scan (shipped pack)" "$mi" "$(calc "$BYTES/1048576/$mi")"
printf '%-44s %8.3f s  %7.0f MiB/s\n' "find | xargs -0 sha256sum" "$ms" "$(calc "$BYTES/1048576/$ms")"
printf '%-44s %8.3f s  %7.0f MiB/s\n' "find | xargs -0 -P$(nproc) -n 64 sha256sum" "$mp" "$(calc "$BYTES/1048576/$mp")"
printf 'ratio sha256sum / interdict: %.2fx   sha256sum -P%s / interdict: %.2fx   (median of %s rounds)\n' \
  "$(calc "$ms/$mi")" "$(nproc)" "$(calc "$mp/$mi")" "$ROUNDS"
