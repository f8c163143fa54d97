"""Validate OCSF records against the OCSF JSON schema, as a consumer would.

Reads one JSON record per line on stdin. Each record is validated with `jsonschema` (draft
2020-12) against the schema that PyPI `ocsf-json-schema` generates for the record's own
`metadata.version`, its class (`class_uid`) and the profiles it declares in
`metadata.profiles`: an attribute of a profile it does not declare is an additional property,
every attribute the class and declared profiles require must be there. Then what the JSON
schema cannot say: `type_uid` is `class_uid * 100 + activity_id`, `category_uid` is the class's,
each profile declared applies to the class, and every caption next to an enum id
(`class_name`, `activity_name`, `status`, `action`, `disposition`, `file.type`, ...) is the
schema's caption for that id (ids 99, "Other", may carry a source-specific name).

Prints one line per problem, `record N (uid): path: message`, then `OCSF: N records, M
problems`; exits 1 when there was any problem.
"""
import json
import sys

from jsonschema import Draft202012Validator
from ocsf_json_schema import OcsfJsonSchemaEmbedded, get_ocsf_schema

SCHEMAS = {}
VALIDATORS = {}


def raw(version):
    if version not in SCHEMAS:
        SCHEMAS[version] = get_ocsf_schema(version=version)
    return SCHEMAS[version]


def validator(version, class_name, profiles):
    key = (version, class_name, tuple(sorted(profiles)))
    if key not in VALIDATORS:
        embedded = OcsfJsonSchemaEmbedded(raw(version))
        schema = embedded.get_class_schema(class_name, list(profiles))
        Draft202012Validator.check_schema(schema)
        VALIDATORS[key] = Draft202012Validator(schema)
    return VALIDATORS[key]


def captions(schema, attrs, value, path, problems):
    """Check enum-id siblings in `value` (an object whose attributes are `attrs`), recursively."""
    if not isinstance(value, dict):
        return
    for name, v in value.items():
        a = attrs.get(name)
        if a is None:
            continue
        enum = a.get("enum")
        sibling = a.get("sibling")
        if enum and sibling and isinstance(v, int) and v != 99 and sibling in value:
            want = enum.get(str(v), {}).get("caption")
            if want is not None and value[sibling] != want:
                problems.append(f"{path}{sibling}: {value[sibling]!r} is not the caption of {name} {v} ({want!r})")
        if a.get("type") == "object_t" and a.get("object_type") in schema["objects"]:
            sub = schema["objects"][a["object_type"]]["attributes"]
            items = v if isinstance(v, list) else [v]
            for i, item in enumerate(items):
                suffix = f"[{i}]" if isinstance(v, list) else ""
                captions(schema, sub, item, f"{path}{name}{suffix}.", problems)


def check(record):
    problems = []
    md = record.get("metadata") or {}
    version = md.get("version")
    try:
        schema = raw(version)
    except Exception as e:  # an unknown version
        return [f"metadata.version: {version!r}: {e}"]
    cls = next((c for c in schema["classes"].values() if c.get("uid") == record.get("class_uid")), None)
    if cls is None:
        return [f"class_uid: no class {record.get('class_uid')!r} in OCSF {version}"]
    profiles = md.get("profiles", [])
    if not isinstance(profiles, list):
        return ["metadata.profiles: not a list"]
    for p in profiles:
        if p not in (cls.get("profiles") or []):
            problems.append(f"metadata.profiles: {p!r} does not apply to {cls['name']}")
    v = validator(version, cls["name"], [p for p in profiles if p in (cls.get("profiles") or [])])
    for err in sorted(v.iter_errors(record), key=lambda e: list(e.absolute_path)):
        where = ".".join(str(x) for x in err.absolute_path) or "(record)"
        problems.append(f"{where}: {err.message[:300]}")
    if record.get("type_uid") != record.get("class_uid", 0) * 100 + record.get("activity_id", -1):
        problems.append("type_uid: not class_uid * 100 + activity_id")
    if record.get("category_uid") != cls.get("category_uid"):
        problems.append(f"category_uid: not {cls.get('category_uid')}, the class's category")
    if record.get("category_name") != cls.get("category_name"):
        problems.append(f"category_name: {record.get('category_name')!r} is not {cls.get('category_name')!r}")
    if record.get("class_name") != cls.get("caption"):
        problems.append(f"class_name: {record.get('class_name')!r} is not {cls.get('caption')!r}")
    captions(schema, cls["attributes"], record, "", problems)
    return problems


def main():
    n = bad = 0
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        n += 1
        try:
            record = json.loads(line)
        except ValueError as e:
            print(f"record {n}: not JSON: {e}")
            bad += 1
            continue
        uid = (record.get("metadata") or {}).get("uid")
        for p in check(record):
            print(f"record {n} ({uid}): {p}")
            bad += 1
    print(f"OCSF: {n} records, {bad} problems")
    sys.exit(1 if bad or n == 0 else 0)


if __name__ == "__main__":
    main()
