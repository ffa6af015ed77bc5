//! JSON Schema (as OpenAI's tools and `response_format` carry it) turned into the OpenAPI 3.0
//! subset Gemini's `Schema` accepts (<https://ai.google.dev/api/caching#Schema>): upper-case
//! types, `nullable` instead of a `null` type, `anyOf` instead of `oneOf`, `$ref`s inlined, and
//! keywords Gemini does not know left out (Gemini refuses the whole request over one it does not
//! know, such as `additionalProperties` or `$schema`).

use serde_json::{Map, Value};

/// How deep `$ref`s are followed: Gemini has no recursive schemas, so a recursive one is cut
/// there, its deepest level a string (the model writes the rest as text).
const MAX_DEPTH: u32 = 8;
/// The most schema nodes one conversion writes: `$ref`s expand, and a small schema whose
/// definitions refer to each other could otherwise expand into millions of nodes. Past it, the
/// rest of the schema is a string.
pub const MAX_NODES: usize = 2_000;

/// The keywords kept as they are.
const KEPT: [&str; 15] = [
    "description",
    "title",
    "nullable",
    "minimum",
    "maximum",
    "minItems",
    "maxItems",
    "minLength",
    "maxLength",
    "pattern",
    "minProperties",
    "maxProperties",
    "propertyOrdering",
    "default",
    "example",
];

/// `schema` in Gemini's subset. Never fails: what cannot be said is left out, and an object
/// without properties below the top (a map) is a string, as Gemini refuses objects without
/// properties.
/// At the top such an object is left as it is: the caller leaves it out (a function without
/// parameters, a JSON answer of any shape).
pub fn gemini(schema: &Value) -> Value {
    let mut budget = MAX_NODES;
    convert(schema, schema, 0, &mut budget)
}

/// A node Gemini takes for "anything": text.
fn loose() -> Value {
    serde_json::json!({ "type": "STRING" })
}

fn convert(node: &Value, root: &Value, depth: u32, budget: &mut usize) -> Value {
    let Some(map) = node.as_object() else {
        // `true` (anything) or a malformed node: the loosest thing Gemini can say.
        return loose();
    };
    if depth > MAX_DEPTH || *budget == 0 {
        return loose();
    }
    *budget -= 1;
    if let Some(target) = map.get("$ref").and_then(Value::as_str) {
        let mut resolved = match resolve(root, target) {
            Some(target) => convert(target, root, depth + 1, budget),
            None => loose(),
        };
        if let (Some(out), Some(description)) = (resolved.as_object_mut(), map.get("description")) {
            out.insert("description".into(), description.clone());
        }
        return resolved;
    }
    let merged;
    let map = match map.get("allOf").and_then(Value::as_array) {
        Some(all) => {
            merged = merge_all_of(map, all, root);
            &merged
        }
        None => map,
    };
    let mut out = Map::new();
    for key in KEPT {
        if let Some(value) = map.get(key) {
            out.insert(key.into(), value.clone());
        }
    }
    convert_type(map, &mut out);
    convert_composition(map, root, depth, budget, &mut out);
    convert_members(map, root, depth, budget, &mut out);
    let open_object =
        out.get("type") == Some(&Value::from("OBJECT")) && !out.contains_key("properties");
    if open_object && depth > 0 {
        // A map (`additionalProperties`) or an open object: Gemini refuses an object without
        // properties, so the model writes it as JSON text.
        out.insert("type".into(), Value::from("STRING"));
        let said = out.get("description").and_then(Value::as_str).unwrap_or("");
        let description = format!("{said} (a JSON object, as text)").trim().to_owned();
        out.insert("description".into(), Value::from(description));
    }
    Value::Object(out)
}

/// `type` (one or a list, `null` as `nullable`), `const` and `enum` (strings only, as Gemini
/// allows), and the formats Gemini knows for the type.
fn convert_type(map: &Map<String, Value>, out: &mut Map<String, Value>) {
    let mut types: Vec<&str> = match map.get("type") {
        Some(Value::String(one)) => vec![one.as_str()],
        Some(Value::Array(many)) => many.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    if types.contains(&"null") {
        out.insert("nullable".into(), Value::Bool(true));
        types.retain(|t| *t != "null");
    }
    let inferred = if map.contains_key("properties") {
        Some("object")
    } else if map.contains_key("items") {
        Some("array")
    } else if map.contains_key("enum") || map.get("const").is_some_and(Value::is_string) {
        Some("string")
    } else {
        None
    };
    let kind = types.first().copied().or(inferred);
    if let Some(kind) = kind {
        out.insert("type".into(), Value::String(kind.to_ascii_uppercase()));
    }
    let choices = match (map.get("enum"), map.get("const")) {
        (Some(Value::Array(values)), _) => Some(values.clone()),
        (None, Some(value)) => Some(vec![value.clone()]),
        _ => None,
    };
    if let Some(values) = choices.filter(|v| v.iter().all(Value::is_string)) {
        out.insert("enum".into(), Value::Array(values));
    }
    let format = map.get("format").and_then(Value::as_str);
    let known = match kind {
        Some("string") => ["date-time", "enum"].as_slice(),
        Some("integer") => ["int32", "int64"].as_slice(),
        Some("number") => ["float", "double"].as_slice(),
        _ => [].as_slice(),
    };
    if let Some(format) = format.filter(|f| known.contains(f)) {
        out.insert("format".into(), Value::String(format.into()));
    }
}

/// `anyOf` and `oneOf` as `anyOf`; a `{"type": "null"}` branch as `nullable`.
fn convert_composition(
    map: &Map<String, Value>,
    root: &Value,
    depth: u32,
    budget: &mut usize,
    out: &mut Map<String, Value>,
) {
    let Some(branches) = map
        .get("anyOf")
        .or_else(|| map.get("oneOf"))
        .and_then(Value::as_array)
    else {
        return;
    };
    let is_null = |b: &Value| b.get("type").and_then(Value::as_str) == Some("null");
    if branches.iter().any(is_null) {
        out.insert("nullable".into(), Value::Bool(true));
    }
    let kept: Vec<Value> = branches
        .iter()
        .filter(|b| !is_null(b))
        .map(|b| convert(b, root, depth + 1, budget))
        .collect();
    match <[Value; 1]>::try_from(kept) {
        // One branch left (`T | null`): that branch itself.
        Ok([only]) => {
            if let Value::Object(only) = only {
                for (key, value) in only {
                    out.entry(key).or_insert(value);
                }
            }
        }
        Err(kept) if !kept.is_empty() => {
            out.insert("anyOf".into(), Value::Array(kept));
        }
        Err(_) => {}
    }
}

/// `properties` (with `required` limited to them) and `items`.
fn convert_members(
    map: &Map<String, Value>,
    root: &Value,
    depth: u32,
    budget: &mut usize,
    out: &mut Map<String, Value>,
) {
    if let Some(properties) = map.get("properties").and_then(Value::as_object) {
        let converted: Map<String, Value> = properties
            .iter()
            .map(|(name, schema)| (name.clone(), convert(schema, root, depth + 1, budget)))
            .collect();
        if let Some(required) = map.get("required").and_then(Value::as_array) {
            let required: Vec<Value> = required
                .iter()
                .filter(|name| name.as_str().is_some_and(|n| converted.contains_key(n)))
                .cloned()
                .collect();
            if !required.is_empty() {
                out.insert("required".into(), Value::Array(required));
            }
        }
        if !converted.is_empty() {
            out.insert("properties".into(), Value::Object(converted));
        }
    }
    if let Some(items) = map.get("items") {
        out.insert("items".into(), convert(items, root, depth + 1, budget));
    }
}

/// An `allOf` folded into its parent: properties and required names together, the first type.
fn merge_all_of(map: &Map<String, Value>, all: &[Value], root: &Value) -> Map<String, Value> {
    let mut merged = map.clone();
    merged.remove("allOf");
    for part in all {
        let part = match part.get("$ref").and_then(Value::as_str) {
            Some(target) => resolve(root, target).unwrap_or(part),
            None => part,
        };
        let Some(part) = part.as_object() else {
            continue;
        };
        for (key, value) in part {
            match (key.as_str(), merged.get_mut(key)) {
                ("properties", Some(Value::Object(mine))) => {
                    if let Value::Object(theirs) = value {
                        mine.extend(theirs.clone());
                    }
                }
                ("required", Some(Value::Array(mine))) => {
                    if let Value::Array(theirs) = value {
                        mine.extend(theirs.iter().cloned());
                    }
                }
                (_, Some(_)) => {}
                (_, None) => {
                    merged.insert(key.clone(), value.clone());
                }
            }
        }
    }
    merged
}

/// A local reference (`#/$defs/Name`, `#/definitions/Name`, any JSON pointer into the schema).
fn resolve<'a>(root: &'a Value, target: &str) -> Option<&'a Value> {
    let pointer = target.strip_prefix('#')?;
    root.pointer(pointer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_schema_becomes_geminis_subset() {
        let schema = json!({
            "$schema": "http://json-schema.org/draft-07/schema#",
            "type": "object",
            "additionalProperties": false,
            "properties": {
                "city": {"type": "string", "description": "Where", "format": "hostname"},
                "unit": {"type": ["string", "null"], "enum": ["c", "f"]},
                "days": {"type": "integer", "minimum": 1, "format": "int32"},
                "when": {"anyOf": [{"type": "string", "format": "date-time"}, {"type": "null"}]},
                "tags": {"type": "array", "items": {"$ref": "#/$defs/Tag"}},
                "kind": {"const": "forecast"},
                "either": {"oneOf": [{"type": "string"}, {"type": "number"}]}
            },
            "required": ["city", "ghost"],
            "$defs": {"Tag": {"type": "object", "properties": {"name": {"type": "string"}}}}
        });
        assert_eq!(
            gemini(&schema),
            json!({
                "type": "OBJECT",
                "properties": {
                    "city": {"type": "STRING", "description": "Where"},
                    "unit": {"type": "STRING", "nullable": true, "enum": ["c", "f"]},
                    "days": {"type": "INTEGER", "minimum": 1, "format": "int32"},
                    "when": {"nullable": true, "type": "STRING", "format": "date-time"},
                    "tags": {"type": "ARRAY", "items": {"type": "OBJECT", "properties": {"name": {"type": "STRING"}}}},
                    "kind": {"type": "STRING", "enum": ["forecast"]},
                    "either": {"anyOf": [{"type": "STRING"}, {"type": "NUMBER"}]}
                },
                "required": ["city"]
            })
        );
    }

    #[test]
    fn maps_are_text_and_expansion_is_bounded() {
        let map = json!({"type": "object", "properties": {
            "labels": {"type": "object", "additionalProperties": {"type": "string"}, "description": "Labels"}
        }});
        assert_eq!(
            gemini(&map)["properties"]["labels"],
            json!({"type": "STRING", "description": "Labels (a JSON object, as text)"})
        );
        assert_eq!(
            gemini(&json!({"type": "object"})),
            json!({"type": "OBJECT"})
        );
        // Definitions that each refer to all the others, a hundred times over: a few kilobytes
        // that would expand without end.
        let properties: serde_json::Map<String, Value> = (0..100)
            .map(|i| (format!("p{i}"), json!({"$ref": "#/$defs/N"})))
            .collect();
        let bomb = json!({"$defs": {"N": {"type": "object", "properties": properties}}, "$ref": "#/$defs/N"});
        let converted = gemini(&bomb).to_string();
        assert!(converted.len() < 200 * MAX_NODES, "{}", converted.len());
    }

    #[test]
    fn recursive_schemas_are_cut_and_all_of_is_merged() {
        let schema = json!({
            "$defs": {"Node": {"type": "object", "properties": {"child": {"$ref": "#/$defs/Node"}}}},
            "allOf": [
                {"$ref": "#/$defs/Node"},
                {"properties": {"label": {"type": "string"}}, "required": ["label"]}
            ]
        });
        let converted = gemini(&schema);
        assert_eq!(converted["type"], "OBJECT");
        assert_eq!(converted["required"], json!(["label"]));
        let mut node = &converted["properties"]["child"];
        let mut depth = 0;
        while node["type"] == "OBJECT" {
            node = &node["properties"]["child"];
            depth += 1;
        }
        assert_eq!(node["type"], "STRING");
        assert!(depth <= MAX_DEPTH, "{depth}");
    }
}
