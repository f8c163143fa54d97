#!/usr/bin/env bash
# Exec overhead, side by side in one run: N fork+execs of a small program on a marked tmpfs with
# no agent, with interdict (fanotify guard + proc connector, cached decisions), with interdict's
# fanotify guard alone (proc_connector = false: what fapolicyd does), and with fapolicyd
# (Debian's package) configured with an equivalent deny rule. Also: first-exec decision latency
# for a 200 MB binary, proc-connector kill latency, and the agent's RSS and idle CPU.
#
# Usage (root): benches/exec.sh [N]        (default N = 5000; ROUNDS=3)
# BASELINE=/path/to/an/older/interdict adds that build as one more contender (same config), to
# compare two versions in one run. Installs fapolicyd from Debian's packages if missing. Runs
# every daemon under `timeout`; the agent's state, log and install roots stay in a temp folder.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-5000}
ROUNDS=${ROUNDS:-3}
[ "$(id -u)" = 0 ] || { echo "run as root"; exit 2; }
command -v fapolicyd >/dev/null || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fapolicyd >/dev/null; }
cargo build --release --quiet
BIN=$PWD/target/release/interdict
WORK=$(mktemp -d /tmp/interdict-exec-bench.XXXXXX)
MNT=$WORK/mnt
mkdir -p "$MNT"
mount -t tmpfs -o size=2g tmpfs "$MNT"
AGENT_PID=""; FAPO_PID=""
cleanup() {
  [ -n "$AGENT_PID" ] && kill "$AGENT_PID" 2>/dev/null || true
  [ -n "$FAPO_PID" ] && kill "$FAPO_PID" 2>/dev/null || true
  sleep 0.5
  umount "$WORK/unmarked" 2>/dev/null || umount -l "$WORK/unmarked" 2>/dev/null || true
  umount "$MNT" 2>/dev/null || umount -l "$MNT" 2>/dev/null || true
  [ -f "$WORK/fapolicyd.conf.orig" ] && cp "$WORK/fapolicyd.conf.orig" /etc/fapolicyd/fapolicyd.conf
  [ -f "$WORK/compiled.rules.orig" ] && cp "$WORK/compiled.rules.orig" /etc/fapolicyd/compiled.rules
  [ -f "$WORK/compiled.rules.orig" ] || rm -f /etc/fapolicyd/compiled.rules
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cc -O2 -o "$WORK/spawn" benches/support/spawn.c
cp /bin/true "$MNT/ok"
cp /bin/true "$MNT/banned"; printf 'bench-%s' "$$" >> "$MNT/banned"
BANNED_SHA=$(sha256sum "$MNT/banned" | cut -d' ' -f1)
cat > "$WORK/policy.toml" <<POL
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
paths = ["$MNT/banned"]
sha256 = ["$BANNED_SHA"]
POL
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
script_roots = ["$MNT"]
follow_mounts = false
CFG

spawn() { "$WORK/spawn" "$N" "$MNT/ok"; }

start_agent() {
  cp "$WORK/agent.toml" "$WORK/agent-run.toml"
  [ -n "${1:-}" ] && echo "$1" >> "$WORK/agent-run.toml"
  # An older build (BASELINE) does not know the keys added since.
  [ -n "${AGENT_BIN:-}" ] && sed -i '/^follow_mounts/d; /^freeze/d' "$WORK/agent-run.toml"
  timeout 600 "${AGENT_BIN:-$BIN}" agent --policy "$WORK/policy.toml" --config "$WORK/agent-run.toml" 2>"$WORK/agent.err" &
  AGENT_PID=$!
  # Ready once the start-up sweep of running processes is done (it hashes their executables).
  for _ in $(seq 300); do
    "$BIN" status --format json --socket "$WORK/control.sock" > "$WORK/status.json" 2>/dev/null \
      && grep -q '"sweeps":[1-9]' "$WORK/status.json" && break
    sleep 0.1
  done
}
stop_agent() { kill "$AGENT_PID"; wait "$AGENT_PID" 2>/dev/null || true; AGENT_PID=""; }

start_fapolicyd() {
  # Keep the package's own files once; restored after each run and at exit.
  [ -f "$WORK/fapolicyd.conf.orig" ] || cp /etc/fapolicyd/fapolicyd.conf "$WORK/fapolicyd.conf.orig"
  if [ -f /etc/fapolicyd/compiled.rules ] && [ ! -f "$WORK/compiled.rules.orig" ]; then cp /etc/fapolicyd/compiled.rules "$WORK/compiled.rules.orig"; fi
  # Root throughout: dropping to the fapolicyd user fails in this sandbox ("Cannot change to uid").
  sed -i 's/^watch_fs = .*/watch_fs = tmpfs/; s/^trust = .*/trust = file/; s/^uid = .*/uid = root/; s/^gid = .*/gid = root/' /etc/fapolicyd/fapolicyd.conf
  printf 'deny perm=execute all : path=%s\nallow perm=any all : all\n' "$MNT/banned" > /etc/fapolicyd/compiled.rules
  mkdir -p /run/fapolicyd /var/lib/fapolicyd; chown fapolicyd:fapolicyd /run/fapolicyd /var/lib/fapolicyd 2>/dev/null || true
  timeout 600 fapolicyd --debug-deny >/dev/null 2>"$WORK/fapolicyd.err" &
  FAPO_PID=$!
  # fapolicyd is ready once it denies the banned program.
  for _ in $(seq 100); do sleep 0.2; "$MNT/banned" 2>/dev/null || break; done
}
stop_fapolicyd() {
  kill "$FAPO_PID" 2>/dev/null || true; wait "$FAPO_PID" 2>/dev/null || true; FAPO_PID=""
  cp "$WORK/fapolicyd.conf.orig" /etc/fapolicyd/fapolicyd.conf
  if [ -f "$WORK/compiled.rules.orig" ]; then cp "$WORK/compiled.rules.orig" /etc/fapolicyd/compiled.rules; else rm -f /etc/fapolicyd/compiled.rules; fi
}

agent_cpu() { awk '{print $14+$15}' "/proc/$(pgrep -P "$AGENT_PID" interdict)/stat"; }
declare -A R
CPU=""
for round in $(seq "$ROUNDS"); do
  R[none]+="$(spawn)|"
  start_agent; c0=$(agent_cpu); R[interdict]+="$(spawn)|"; c1=$(agent_cpu); stop_agent
  CPU+="$(awk "BEGIN{print ($c1-$c0)/$(getconf CLK_TCK)*1e6/$N}") "
  start_agent "proc_connector = false"; R[interdict_guard]+="$(spawn)|"; stop_agent
  start_fapolicyd; R[fapolicyd]+="$(spawn)|"; stop_fapolicyd
  if [ -n "${BASELINE:-}" ]; then
    AGENT_BIN=$BASELINE start_agent; R[baseline]+="$(spawn)|"; stop_agent
  fi
done
echo "exec overhead: $N fork+execs of /bin/true on a marked tmpfs, $ROUNDS rounds, median round"
med() { tr '|' '\n' | grep -v '^$' | sort -n -k1,1 | awk '{a[NR]=$0} END {print a[int((NR+1)/2)]}'; }
base=$(echo "${R[none]}" | med | cut -d' ' -f1)
for k in none interdict interdict_guard fapolicyd ${BASELINE:+baseline}; do
  m=$(echo "${R[$k]}" | med)
  set -- $m
  printf '  %-16s %8.1f us/exec  p50 %7.1f us  p99 %7.1f us  failed %s  ratio to none %.3f\n' "$k" "$1" "$2" "$3" "$4" "$(awk "BEGIN{print $1/$base}")"
done
echo "  interdict agent CPU per exec (all threads), per round: $CPU us"

# Large binaries, 250 MB, like the real Claude Code. The policy names the banned one's digest
# with its size (size=N in the hash list), so an allowed program of another size is not hashed.
cc -O2 -o "$WORK/marker" benches/support/marker.c
head -c $((250 << 20)) /dev/zero > "$WORK/pad"
big() { cat "$WORK/marker" "$WORK/pad" > "$1"; printf '%s' "$2" >> "$1"; chmod +x "$1"; }
big "$MNT/bigban" "banned-$$"
BIGBAN_SHA=$(sha256sum "$MNT/bigban" | cut -d' ' -f1)
echo "$BIGBAN_SHA  bigban  size=$(stat -c %s "$MNT/bigban")" > "$WORK/big.sha256"
cp "$WORK/policy.toml" "$WORK/policy-small.toml"
sed -i 's/^sha256 = .*/sha256 = ["'"$BANNED_SHA"'"]\nsha256_files = ["big.sha256"]/' "$WORK/policy.toml"
start_agent
first_allowed=(); first_banned=(); cached=(); noagent=()
for i in $(seq 10); do
  # A new file each time (new identity): every first exec is a decision cache miss.
  big "$MNT/bigok" "allowed-$i"
  s=$(date +%s%N); "$MNT/bigok"; e=$(date +%s%N); first_allowed+=($(( (e - s) / 1000 )))
  s=$(date +%s%N); "$MNT/bigok"; e=$(date +%s%N); cached+=($(( (e - s) / 1000 )))
  cp "$MNT/bigban" "$MNT/bigban-$i"
  s=$(date +%s%N); "$MNT/bigban-$i" 2>/dev/null || true; e=$(date +%s%N); first_banned+=($(( (e - s) / 1000 )))
  rm -f "$MNT/bigban-$i"
done
stop_agent
for i in $(seq 10); do
  big "$MNT/bigok" "noagent-$i"
  s=$(date +%s%N); "$MNT/bigok"; e=$(date +%s%N); noagent+=($(( (e - s) / 1000 )))
done
rm -f "$MNT/bigok"
pct() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {printf "p50 %d us, p99(max of %d) %d us", a[int((NR+1)/2)], NR, a[NR]}'; }
echo "250 MB binaries, exec wall time on a marked tmpfs:"
echo "  first exec of an allowed one (size matches no banned digest: not hashed): $(pct "${first_allowed[@]}")"
echo "  no agent:                                                              $(pct "${noagent[@]}")"
echo "  the allowed one again (decision cached):                               $(pct "${cached[@]}")"
echo "  first exec of a fresh copy of the banned one (hashed, denied):         $(pct "${first_banned[@]}")"

# The survival window on a filesystem the guard does not mark: a 250 MB banned program whose
# main() writes a marker, on a second tmpfs the agent is not told about (follow_mounts off).
# The proc connector stops it (SIGSTOP) at the exec event, hashes it, kills it. Cold: a fresh
# file. Warm: a fresh copy (new inode) of content the agent has hashed before.
UNM=$WORK/unmarked; mkdir -p "$UNM"; mount -t tmpfs -o size=2g tmpfs "$UNM"
cp "$MNT/bigban" "$UNM/src"
start_agent
python3 - "$UNM" <<'PY'
import os, shutil, subprocess, sys, time
unm = sys.argv[1]
for label in ("cold", "warm"):
    lat, reached = [], 0
    for i in range(20):
        exe = os.path.join(unm, f"{label}-{i}")
        shutil.copyfile(os.path.join(unm, "src"), exe); os.chmod(exe, 0o755)
        marker = os.path.join(unm, f"{label}-{i}.ran")
        s = time.monotonic()
        p = subprocess.Popen([exe, marker]); p.wait()
        lat.append((time.monotonic() - s) * 1e3)
        reached += os.path.exists(marker)
        os.unlink(exe)
        assert p.returncode == -9, (label, p.returncode)
    lat.sort()
    print(f"survival window, 250 MB banned program on an unmarked filesystem ({label}): exec to death p50 {lat[len(lat)//2]:.1f} ms, p99(max of {len(lat)}) {lat[-1]:.1f} ms; main() reached {reached} of {len(lat)} times")
PY
stop_agent
umount "$UNM" || umount -l "$UNM"
cp "$WORK/policy-small.toml" "$WORK/policy.toml"

# Kill latency of the proc-connector path: a banned program on an unmarked path.
cp /bin/sleep "$WORK/killme"; printf 'kill-%s' "$$" >> "$WORK/killme"
KILL_SHA=$(sha256sum "$WORK/killme" | cut -d' ' -f1)
sed -i "s/^sha256 = .*/sha256 = [\"$BANNED_SHA\", \"$KILL_SHA\"]/" "$WORK/policy.toml"
start_agent
python3 - "$WORK/killme" <<'PY'
import subprocess, sys, time, statistics
lat = []
for _ in range(50):
    s = time.monotonic()
    p = subprocess.Popen([sys.argv[1], "5"])
    p.wait()
    lat.append((time.monotonic() - s) * 1e3)
    assert p.returncode == -9, p.returncode
lat.sort()
print(f"kill latency (spawn to death, proc connector): p50 {lat[len(lat)//2]:.2f} ms, p99 {lat[int(len(lat)*0.99)]:.2f} ms, max {lat[-1]:.2f} ms over {len(lat)} runs")
PY
# Idle footprint with the shipped pack.
stop_agent
cp policies/ai-coding-agents.toml "$WORK/policy.toml"; cp -r policies/hashes "$WORK/"
start_agent
PID=$(pgrep -P "$AGENT_PID" interdict)
t0=$(awk '{print $14+$15}' /proc/$PID/stat)
sleep 30
t1=$(awk '{print $14+$15}' /proc/$PID/stat)
rss=$(awk '/VmRSS/ {print $2}' /proc/$PID/status)
echo "idle with the shipped pack: RSS $rss KiB, CPU $(awk "BEGIN{printf \"%.3f\", ($t1-$t0)/$(getconf CLK_TCK)/30*100}") % over 30 s"
stop_agent
