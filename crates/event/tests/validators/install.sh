#!/usr/bin/env bash
# Install the third-party validators the SIEM-format tests run, into DIR (default:
# $INTERDICT_SIEM_VALIDATORS, else ~/.cache/interdict/siem-validators). Idempotent: a marker
# names the pinned versions, and nothing is fetched when it matches. Needs python3 (with venv)
# and npm; .ci/run calls it, and so do the tests when the marker is missing.
#   - PyPI ocsf-json-schema (the OCSF JSON schemas) and jsonschema, in DIR/venv
#   - npm @elastic/ecs (Elastic's ECS field reference), in DIR/node_modules
set -euo pipefail
dir="${1:-${INTERDICT_SIEM_VALIDATORS:-$HOME/.cache/interdict/siem-validators}}"
pins="ocsf-json-schema==1.2.0 jsonschema==4.26.0 @elastic/ecs@8.11.5"
mkdir -p "$dir"
exec 9>"$dir/.lock"
flock 9
if [ "$(cat "$dir/.complete" 2>/dev/null)" = "$pins" ]; then
  exit 0
fi
rm -rf "$dir/venv" "$dir/node_modules" "$dir/package.json" "$dir/package-lock.json"
python3 -m venv "$dir/venv"
"$dir/venv/bin/pip" install --quiet --disable-pip-version-check ocsf-json-schema==1.2.0 jsonschema==4.26.0
npm install --no-audit --no-fund --loglevel=error --prefix "$dir" @elastic/ecs@8.11.5
echo "$pins" > "$dir/.complete"
