#!/bin/sh
# Print the SHA-256 of every Claude Code release since VERSION, for claude-code.sha256:
#   policies/hashes/refresh-claude-code.sh 2.1.160 > policies/hashes/claude-code.sha256
# Run by IT on a machine with registry access (never on endpoints). Each release is downloaded
# from npm, checked against the registry's sha512 integrity value and against the pack's family
# rule (a warning, and exit status 1, names any release the family rule does not identify).
# Platforms: linux x64/arm64 (glibc and musl), darwin x64/arm64. About 2 s and 90 MiB per
# package; six months of releases (~1,000 packages) take about 40 minutes. Every line ends in
# the binary's size (`size=BYTES`). To add sizes to a list made without them, without
# downloading the packages again: interdict hashes sizes FILE > FILE.new (1 to 2 minutes).
set -eu
since=${1:?usage: $0 VERSION   (e.g. 2.1.160: every release since that one)}
here=$(dirname "$0")
interdict=${INTERDICT:-interdict}
# The pack without its hash lists (the output may be replacing one of them).
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
grep -v '^sha256_files' "$here/../ai-coding-agents.toml" > "$tmp/pack.toml"
echo "# SHA-256 of Claude Code native binaries (the raw executable, not the npm tarball), in"
echo "# sha256sum format with each binary's size (HEX  NAME  size=BYTES: the agent need not hash"
echo "# a program of any other size), for every release since $since on npm, made by"
echo "# policies/hashes/refresh-claude-code.sh on $(date -u +%Y-%m-%d)."
status=0
for p in linux-x64 linux-arm64 linux-x64-musl linux-arm64-musl darwin-x64 darwin-arm64; do
  "$interdict" hashes fetch --policy "$tmp/pack.toml" \
    "npm:@anthropic-ai/claude-code-$p@all-since:$since" || status=$?
done
exit $status
