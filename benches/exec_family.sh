#!/usr/bin/env bash
# What a family rule costs the exec guard (issue 14), side by side in one run: the same agent
# with a policy of one sized digest (as benches/exec.sh) and with that policy plus the shipped
# pack's family rule (its `contains_all` and `contains_in`), rounds interleaved:
#   - N fork+execs of a small program on a marked tmpfs (decisions cached after the first);
#   - the first exec of a fresh 250 MB ELF program that is allowed: without family rules its
#     size matches no banned digest and it is not read; with one, it is read once (hashed and
#     searched in the same pass) before the answer;
#   - with the family rule: the first exec of a fresh 250 MB program holding the signatures
#     (denied, EPERM), run as `nobody`: root is exempt from the rule, so that the agent's sweeps
#     never kill a real Claude Code running on this machine (as root) during the bench.
#
# Usage (root): benches/exec_family.sh [N]   (default N = 5000; ROUNDS=3, BIG=10 first execs)
# Runs every agent under `timeout`; its state, log and install roots stay in a temp folder, and
# it marks only its own tmpfs.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-5000}
ROUNDS=${ROUNDS:-3}
BIG=${BIG:-10}
[ "$(id -u)" = 0 ] || { echo "run as root"; exit 2; }
cargo build --release --quiet -p interdict --bin interdict
BIN=$PWD/target/release/interdict
WORK=$(mktemp -d /tmp/interdict-exec-family.XXXXXX)
MNT=$WORK/mnt
mkdir -p "$MNT"
mount -t tmpfs -o size=2g tmpfs "$MNT"
AGENT_PID=""
cleanup() {
  [ -n "$AGENT_PID" ] && kill "$AGENT_PID" 2>/dev/null || true
  sleep 0.5
  umount "$MNT" 2>/dev/null || umount -l "$MNT" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cc -O2 -o "$WORK/spawn" benches/support/spawn.c
cc -O2 -o "$WORK/marker" benches/support/marker.c
cp /bin/true "$MNT/ok"
head -c $((250 << 20)) /dev/zero > "$WORK/pad"
big() { cat "$WORK/marker" "$WORK/pad" > "$1"; printf '%s' "$2" >> "$1"; chmod +x "$1"; }
big "$WORK/bigban" "banned-$$"
BIGBAN_SHA=$(sha256sum "$WORK/bigban" | cut -d' ' -f1)
echo "$BIGBAN_SHA  bigban  size=$(stat -c %s "$WORK/bigban")" > "$WORK/big.sha256"
SIGS=$(grep -m1 '^contains_all' policies/ai-coding-agents.toml)
FORMATS=$(grep -m1 '^contains_in' policies/ai-coding-agents.toml)
# The signatures as the program would hold them (the pack writes them as plain text).
HELD=$(echo "$SIGS" | sed 's/^contains_all = \[//; s/\]$//; s/"//g; s/, / /g')
policy() {
  cat <<POL
[policy]
name = "bench"
version = "1"
mode = "enforce"
[[rule]]
id = "banned"
name = "Banned"
risk = "high"
reason = "bench"
action = "block"
[rule.match]
sha256_files = ["big.sha256"]
POL
  if [ "$1" = family ]; then
    cat <<POL
[[rule]]
id = "claude-code"
name = "Claude Code"
risk = "high"
reason = "bench"
action = "block"
[rule.match]
$SIGS
$FORMATS
[rule.exempt]
users = ["root"]
POL
  fi
}
policy digest > "$WORK/policy-digest.toml"
policy family > "$WORK/policy-family.toml"
mkdir -p "$WORK/installs"
cat > "$WORK/agent.toml" <<CFG
[agent]
state_dir = "$WORK/state"
event_log = "$WORK/events.jsonl"
control_socket = "$WORK/control.sock"
[install]
roots = ["$WORK/installs"]
[exec]
mounts = ["$MNT"]
follow_mounts = false
freeze = false
CFG

start_agent() {
  rm -rf "$WORK/state"
  timeout 600 "$BIN" agent --policy "$WORK/policy-$1.toml" --config "$WORK/agent.toml" 2>"$WORK/agent.err" &
  AGENT_PID=$!
  for _ in $(seq 300); do
    "$BIN" status --format json --socket "$WORK/control.sock" > "$WORK/status.json" 2>/dev/null \
      && grep -q '"sweeps":[1-9]' "$WORK/status.json" && break
    sleep 0.1
  done
}
stop_agent() { kill "$AGENT_PID"; wait "$AGENT_PID" 2>/dev/null || true; AGENT_PID=""; }
us() { echo $(( ($2 - $1) / 1000 )); }

declare -A SPAWN FIRST
FAMBAN=(); DENIED=0
for round in $(seq "$ROUNDS"); do
  for p in digest family; do
    start_agent "$p"
    SPAWN[$p]+="$("$WORK/spawn" "$N" "$MNT/ok")|"
    for i in $(seq "$BIG"); do
      # A new file each time (new identity): every first exec is a decision cache miss.
      big "$MNT/bigok" "allowed-$p-$round-$i"
      s=$(date +%s%N); "$MNT/bigok"; e=$(date +%s%N); FIRST[$p]+="$(us "$s" "$e") "
      if [ "$p" = family ]; then
        big "$MNT/famban" "$HELD"
        s=$(date +%s%N)
        if setpriv --reuid=nobody --regid=nogroup --clear-groups "$MNT/famban" 2>/dev/null; then :; else DENIED=$((DENIED + 1)); fi
        e=$(date +%s%N); FAMBAN+=("$(us "$s" "$e")")
        rm -f "$MNT/famban"
      fi
    done
    stop_agent
  done
done
NOAGENT=()
for i in $(seq "$BIG"); do
  big "$MNT/bigok" "noagent-$i"
  s=$(date +%s%N); "$MNT/bigok"; e=$(date +%s%N); NOAGENT+=("$(us "$s" "$e")")
done
rm -f "$MNT/bigok"

med() { tr '|' '\n' | grep -v '^$' | sort -n -k1,1 | awk '{a[NR]=$0} END {print a[int((NR+1)/2)]}'; }
pct() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {printf "p50 %d us, max of %d %d us", a[int((NR+1)/2)], NR, a[NR]}'; }
echo "exec overhead: $N fork+execs of /bin/true on a marked tmpfs, $ROUNDS rounds, median round"
base=$(echo "${SPAWN[digest]}" | med | cut -d' ' -f1)
for p in digest family; do
  set -- $(echo "${SPAWN[$p]}" | med)
  printf '  %-28s %8.1f us/exec  p50 %7.1f us  p99 %7.1f us  failed %s  ratio %.3f\n' \
    "$p" "$1" "$2" "$3" "$4" "$(awk "BEGIN{print $1/$base}")"
done
echo "first exec of a fresh 250 MB allowed ELF program ($((ROUNDS * BIG)) each):"
# shellcheck disable=SC2086
echo "  digest rule only (not read):      $(pct ${FIRST[digest]})"
# shellcheck disable=SC2086
echo "  plus the family rule (read once): $(pct ${FIRST[family]})"
echo "  no agent:                         $(pct "${NOAGENT[@]}")"
echo "first exec of a fresh 250 MB program holding the signatures (family rule): $(pct "${FAMBAN[@]}"); denied $DENIED of ${#FAMBAN[@]}"
