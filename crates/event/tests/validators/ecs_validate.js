// Validate ECS documents against Elastic's own field reference (npm `@elastic/ecs`, its
// `EcsFlat` table: every field's name, type, array-ness and allowed values).
//
// Reads one JSON document per line on stdin. For each document:
// - every leaf field (dotted path) is an ECS field, except custom fields under `interdict.*`;
// - its value has the field's type (keyword/text -> string, long -> integer, float -> number,
//   date -> an ISO 8601 string, boolean, ip), arrays only where ECS says `normalize: array`;
// - fields ECS marks required are present, and `ecs.version` is the reference's version;
// - values of fields with allowed values (event.kind, event.category, event.type,
//   event.outcome) are allowed ones;
// - the category/type pairs follow Elastic's table of expected event types per category:
//   every event.type is expected by at least one event.category, and every event.category has
//   at least one of its expected types.
// Prints one line per problem, then `ECS: N documents, M problems`; exits 1 on any problem.
"use strict";
const { EcsFlat, EcsVersion } = require("@elastic/ecs");

const CUSTOM = ["interdict."];
const STRING = new Set(["keyword", "constant_keyword", "wildcard", "match_only_text", "text"]);
const INTEGER = new Set(["long", "integer", "short", "byte", "unsigned_long"]);
const NUMBER = new Set(["float", "half_float", "scaled_float", "double"]);

function flatten(obj, prefix, out) {
  for (const [k, v] of Object.entries(obj)) {
    const name = prefix ? `${prefix}.${k}` : k;
    const def = EcsFlat[name];
    if (v !== null && typeof v === "object" && !Array.isArray(v) &&
        !(def && ["object", "flattened", "nested"].includes(def.type))) {
      flatten(v, name, out);
    } else {
      out[name] = v;
    }
  }
  return out;
}

function typeOk(type, v) {
  if (STRING.has(type)) return typeof v === "string";
  if (INTEGER.has(type)) return Number.isInteger(v);
  if (NUMBER.has(type)) return typeof v === "number";
  if (type === "boolean") return typeof v === "boolean";
  if (type === "date") return typeof v === "string" && /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$/.test(v) && !isNaN(Date.parse(v));
  if (type === "ip") return typeof v === "string" && /^[0-9a-fA-F:.]+$/.test(v);
  if (["object", "flattened"].includes(type)) return typeof v === "object" && v !== null;
  if (type === "nested") return Array.isArray(v);
  return false;
}

function check(doc) {
  const problems = [];
  const flat = flatten(doc, "", {});
  for (const [name, value] of Object.entries(flat)) {
    if (CUSTOM.some((c) => name.startsWith(c))) continue;
    const def = EcsFlat[name];
    if (!def) {
      problems.push(`${name}: not an ECS ${EcsVersion} field`);
      continue;
    }
    const isArray = (def.normalize || []).includes("array");
    if (Array.isArray(value) && !isArray && def.type !== "nested") {
      problems.push(`${name}: an array, but ECS expects one value`);
      continue;
    }
    const values = Array.isArray(value) ? value : [value];
    for (const v of values) {
      if (!typeOk(def.type, v)) {
        problems.push(`${name}: ${JSON.stringify(v)} is not of ECS type ${def.type}`);
      }
    }
    if (def.allowed_values) {
      const allowed = def.allowed_values.map((a) => a.name);
      for (const v of values) {
        if (!allowed.includes(v)) {
          problems.push(`${name}: ${JSON.stringify(v)} is not an allowed value (${allowed.join(", ")})`);
        }
      }
    }
  }
  for (const [name, def] of Object.entries(EcsFlat)) {
    if (def.required && !(name in flat)) problems.push(`${name}: required by ECS, missing`);
  }
  if (flat["ecs.version"] !== EcsVersion) {
    problems.push(`ecs.version: ${JSON.stringify(flat["ecs.version"])} is not ${EcsVersion}`);
  }
  const cats = [].concat(flat["event.category"] || []);
  const types = [].concat(flat["event.type"] || []);
  const table = Object.fromEntries(
    EcsFlat["event.category"].allowed_values.map((a) => [a.name, a.expected_event_types || []])
  );
  for (const t of types) {
    if (!cats.some((c) => (table[c] || []).includes(t))) {
      problems.push(`event.type: ${t} is expected by none of the categories ${cats.join(", ")}`);
    }
  }
  for (const c of cats) {
    if (table[c] && !types.some((t) => table[c].includes(t))) {
      problems.push(`event.category: ${c} has none of its expected types (${table[c].join(", ")}) in ${types.join(", ")}`);
    }
  }
  return problems;
}

let input = "";
process.stdin.setEncoding("utf8");
process.stdin.on("data", (d) => (input += d));
process.stdin.on("end", () => {
  let n = 0;
  let bad = 0;
  for (const line of input.split("\n")) {
    if (!line.trim()) continue;
    n += 1;
    let doc;
    try {
      doc = JSON.parse(line);
    } catch (e) {
      console.log(`document ${n}: not JSON: ${e.message}`);
      bad += 1;
      continue;
    }
    const id = doc.event && doc.event.id;
    for (const p of check(doc)) {
      console.log(`document ${n} (${id}): ${p}`);
      bad += 1;
    }
  }
  console.log(`ECS: ${n} documents, ${bad} problems`);
  process.exit(bad || n === 0 ? 1 : 0);
});
