#!/usr/bin/env bash
# Install watching, measured: the agent's rescan of a synthetic tree cold (nothing known: a full
# pass), warm after a restart (the quick pass over the walk state and hash cache the run before
# left, then the full verification pass that follows it), warm while running (a periodic quick
# pass, the watcher having lost nothing), and `find | xargs sha256sum` over the same
# executables, in one run; then the detection latency of an npm-like install (from its last
# file landing to the `installed_detected` event), with the default debounce of 500 ms.
#
# Usage (root): benches/install.sh [FILES] [TOTAL_MIB]     (defaults 50000 files, 2048 MiB)
# The agent runs with fanotify and the proc connector off (nothing is marked) under `timeout`.
set -euo pipefail
cd "$(dirname "$0")/.."
FILES=${1:-50000}
TOTAL_MIB=${2:-2048}
cargo build --release --quiet
BIN=$PWD/target/release/interdict
WORK=$(mktemp -d /tmp/interdict-install-bench.XXXXXX)
AGENT_PID=""
cleanup() { [ -n "$AGENT_PID" ] && kill "$AGENT_PID" 2>/dev/null; sleep 0.3; rm -rf "$WORK"; }
trap cleanup EXIT
trap 'exit 130' INT TERM
TREE=$WORK/tree
python3 - "$TREE" "$FILES" "$TOTAL_MIB" <<'PY'
import os, random, sys
root, files, total = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) << 20
random.seed(7)
sizes = [random.paretovariate(1.2) for _ in range(files // 2)]
scale = total / sum(sizes)
block = os.urandom(1 << 20)
for i, s in enumerate(sizes):
    d = os.path.join(root, f"d{i % 211}", f"e{i % 17}")
    os.makedirs(d, exist_ok=True)
    n = max(1, int(s * scale)); p = os.path.join(d, f"tool-{i}")
    with open(p, "wb") as f:
        while n > 0:
            k = min(n, len(block)); f.write(block[:k]); n -= k
    os.chmod(p, 0o755)
    with open(os.path.join(d, f"data-{i}.txt"), "w") as f:
        f.write("x" * 100)
PY
BYTES=$(find "$TREE" -type f -perm /111 -printf '%s\n' | awk '{s+=$1} END {print s}')
cat > "$WORK/agent.toml" <<CFG
[agent]
state_dir = "$WORK/state"
event_log = "$WORK/events.jsonl"
control_socket = "$WORK/control.sock"
[exec]
fanotify = false
proc_connector = false
[install]
roots = ["$TREE"]
rescan_interval_s = 3
CFG
# The shipped pack has sha256 rules, so every executable is hashed.
cp policies/ai-coding-agents.toml "$WORK/policy.toml"; cp -r policies/hashes "$WORK/"
now() { date +%s.%N; }
# Waits until the agent has finished N rescans (status in $WORK/status.json).
wait_rescans() {
  # (Not `status | grep -q`: with pipefail, grep closing the pipe early fails the pipeline.)
  until "$BIN" status --format json --socket "$WORK/control.sock" > "$WORK/status.json" 2>/dev/null \
      && [ "$(counter install_rescans)" -ge "$1" ]; do
    sleep 0.05
  done
}
counter() { grep -o "\"$1\":[0-9]*" "$WORK/status.json" | cut -d: -f2; }
# A rescan's duration as the agent timed it (no process start-up, no polling), in seconds.
field_s() { awk "BEGIN{print $(counter "$1") / 1e6}"; }
# Starts the agent and sets RESCAN to the seconds from start to the end of its first rescan (in
# this shell, so AGENT_PID stays known).
rescan_time() {
  local s; s=$(now)
  timeout 900 "$BIN" agent --policy "$WORK/policy.toml" --config "$WORK/agent.toml" 2>>"$WORK/agent.err" &
  AGENT_PID=$!
  wait_rescans 1
  RESCAN=$(awk "BEGIN{print $(now) - $s}")
}
stop() { kill "$AGENT_PID" 2>/dev/null || true; wait "$AGENT_PID" 2>/dev/null || true; AGENT_PID=""; }
find "$TREE" -type f -perm /111 -print0 | xargs -0 cat > /dev/null   # page cache warm for all
# A folder read within 2 s of its last change is read again by the next walk (its times could
# hide a change in the same tick): the tree is older than that, as installs are by a rescan.
sleep 2
rescan_time; cold=$RESCAN; cold_self=$(field_s last_full_rescan_us); stop
rm -f "$WORK/control.sock"
rescan_time; warm=$RESCAN; warm_self=$(field_s last_quick_rescan_us)
wait_rescans 2; verify_self=$(field_s last_full_rescan_us); warm_hashed=$(counter install_hashed_bytes)
wait_rescans 3; periodic_self=$(field_s last_quick_rescan_us); quick_count=$(counter install_quick_rescans)
[ "$quick_count" -ge 2 ] || { echo "expected 2 quick rescans, status: $(cat "$WORK/status.json")" >&2; exit 1; }
s=$(now); find "$TREE" -type f -perm /111 -print0 | xargs -0 sha256sum > /dev/null; e=$(now)
sum=$(awk "BEGIN{print $e - $s}")
# The floor of any rescan that notices in-place changes: one stat of every entry, here by find.
s=$(now); find "$TREE" -type f -perm /111 -printf '' ; e=$(now)
statfloor=$(awk "BEGIN{print $e - $s}")
echo "tree: $(find "$TREE" -type f | wc -l) files, $((BYTES >> 20)) MiB executable; $(nproc) cores; page cache warm"
printf 'full rescan, cold (hash everything), rescan alone:   %7.3f s\n' "$cold_self"
printf 'quick rescan, warm (after a restart), rescan alone:  %7.3f s   cold/warm %.1fx\n' "$warm_self" "$(awk "BEGIN{print $cold_self/$warm_self}")"
printf 'full verification pass that follows it:              %7.3f s   cold/verify %.1fx   bytes hashed after the restart: %s\n' "$verify_self" "$(awk "BEGIN{print $cold_self/$verify_self}")" "$warm_hashed"
printf 'quick rescan, periodic (agent running), rescan alone: %7.3f s   cold/periodic %.1fx\n' "$periodic_self" "$(awk "BEGIN{print $cold_self/$periodic_self}")"
printf 'agent start to first rescan done, cold:               %7.3f s\n' "$cold"
printf 'agent start to first rescan done, warm:               %7.3f s   cold/warm %.1fx\n' "$warm" "$(awk "BEGIN{print $cold/$warm}")"
printf 'find | xargs sha256sum over the executables:         %7.3f s   sha256sum/cold rescan %.2fx\n' "$sum" "$(awk "BEGIN{print $sum/$cold_self}")"
printf 'find -type f -perm /111 (stat every entry, no hashing): %7.3f s   verification pass/find %.2fx\n' "$statfloor" "$(awk "BEGIN{print $verify_self/$statfloor}")"

# Detection latency: an npm-like install of a banned package, 2000 files, then the event.
lat=()
for i in $(seq 5); do
  pkg="$TREE/lib/node_modules/@anthropic-ai/claude-code"
  rm -rf "$TREE/lib"
  sleep 1.5
  mkdir -p "$pkg/dist"
  for j in $(seq 2000); do echo "//" > "$pkg/dist/f$j.js"; done
  echo '{"name": "@anthropic-ai/claude-code", "version": "9.9.'"$i"'"}' > "$pkg/package.json"
  s=$(now)
  until grep -q "\"package npm:@anthropic-ai/claude-code 9.9.$i\"" "$WORK/events.jsonl" 2>/dev/null; do sleep 0.01; done
  e=$(now)
  lat+=("$(awk "BEGIN{printf \"%d\", ($e - $s) * 1000}")")
done
printf 'detection latency (last file -> installed_detected), 5 installs of 2000 files: %s ms (debounce 500 ms)\n' "${lat[*]}"
stop
