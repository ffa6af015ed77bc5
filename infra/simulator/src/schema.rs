//! Values that fit a JSON Schema, for tool-call arguments and structured answers, and the JSON
//! text they are written as.
//!
//! The schemas come in every dialect the providers accept: JSON Schema (OpenAI `parameters`,
//! Anthropic `input_schema`, Gemini `parametersJsonSchema` / `responseJsonSchema`) and Gemini's
//! OpenAPI subset (`parameters` / `responseSchema`, with upper-case types such as `"OBJECT"` and
//! `nullable`). The value is the simplest one a validator of either dialect accepts.

use serde_json::{Map, Value};

/// Deepest nesting followed: a recursive schema (a tree of nodes) stops here with an empty
/// value of its type rather than recursing for ever.
const MAX_DEPTH: usize = 12;

/// Most items put in one array, whatever its `minItems` says.
const MAX_ITEMS: usize = 8;

/// The word every string without a format becomes.
const WORD: &str = "simulated";

/// A value of `schema`'s type holding every required property (every property when the schema
/// marks none required, as Gemini schemas often do), recursively.
///
/// `enum` takes its first value, `const` its value; a type list or `anyOf` / `oneOf` takes its
/// first non-null branch; `$ref` follows `#/$defs/…` and `#/definitions/…` within `schema`.
pub fn example(schema: &Value) -> Value {
    Example { root: schema }.value(schema, 0)
}

/// The JSON types a schema can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Object,
    Array,
    String,
    Integer,
    Number,
    Boolean,
    Null,
}

impl Kind {
    /// Gemini's OpenAPI subset spells types in upper case.
    fn named(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "object" => Some(Self::Object),
            "array" => Some(Self::Array),
            "string" => Some(Self::String),
            "integer" => Some(Self::Integer),
            "number" => Some(Self::Number),
            "boolean" => Some(Self::Boolean),
            "null" => Some(Self::Null),
            _ => None,
        }
    }
}

struct Example<'a> {
    /// Where `$ref`s point into.
    root: &'a Value,
}

impl Example<'_> {
    fn value(&self, schema: &Value, depth: usize) -> Value {
        // `true`, `{}` or something that is no schema at all: any value fits.
        let Some(object) = schema.as_object() else {
            return Value::String(WORD.to_owned());
        };
        if let Some(value) = object.get("const") {
            return value.clone();
        }
        if let Some(first) = object
            .get("enum")
            .and_then(Value::as_array)
            .and_then(|values| values.first())
        {
            return first.clone();
        }
        if depth >= MAX_DEPTH {
            return empty(kind_of(object));
        }
        if let Some(target) = object.get("$ref").and_then(Value::as_str) {
            return match self.resolve(target) {
                Some(resolved) => self.value(resolved, depth + 1),
                None => Value::String(WORD.to_owned()),
            };
        }
        for key in ["anyOf", "oneOf"] {
            if let Some(branch) = object.get(key).and_then(|b| self.first_non_null(b)) {
                return self.value(branch, depth + 1);
            }
        }
        if let Some(branches) = object.get("allOf").and_then(Value::as_array) {
            return self.value(&self.merged(object, branches), depth + 1);
        }
        match kind_of(object) {
            Some(Kind::Object) => self.object(object, depth),
            Some(Kind::Array) => self.array(object, depth),
            Some(Kind::String) | None => string(object),
            Some(Kind::Integer) => integer(object),
            Some(Kind::Number) => number(object),
            Some(Kind::Boolean) => Value::Bool(true),
            Some(Kind::Null) => Value::Null,
        }
    }

    fn object(&self, object: &Map<String, Value>, depth: usize) -> Value {
        let properties = object.get("properties").and_then(Value::as_object);
        let names: Vec<&str> = match object.get("required").and_then(Value::as_array) {
            Some(required) => required.iter().filter_map(Value::as_str).collect(),
            None => properties
                .map(|properties| properties.keys().map(String::as_str).collect())
                .unwrap_or_default(),
        };
        let mut out = Map::new();
        for name in names {
            // A required name with no property schema takes `additionalProperties`' type.
            let schema = properties
                .and_then(|properties| properties.get(name))
                .or_else(|| object.get("additionalProperties").filter(|s| s.is_object()));
            let value = match schema {
                Some(schema) => self.value(schema, depth + 1),
                None => Value::String(WORD.to_owned()),
            };
            out.insert(name.to_owned(), value);
        }
        Value::Object(out)
    }

    fn array(&self, object: &Map<String, Value>, depth: usize) -> Value {
        let wanted = bound(object, "minItems").map_or(1.0, |min| min.max(1.0));
        let wanted = bound(object, "maxItems").map_or(wanted, |max| wanted.min(max));
        // Bounded above, so the cast cannot truncate anything that matters.
        let count = wanted.clamp(0.0, MAX_ITEMS as f64) as usize;
        let items = object
            .get("items")
            .or_else(|| object.get("prefixItems").and_then(|p| p.get(0)));
        let item = match items {
            Some(items) => self.value(items, depth + 1),
            None => Value::String(WORD.to_owned()),
        };
        Value::Array(vec![item; count])
    }

    /// `#` or a JSON pointer into the root schema (`#/$defs/Name`, `#/definitions/Name`).
    fn resolve(&self, target: &str) -> Option<&Value> {
        let pointer = target.strip_prefix('#')?;
        if pointer.is_empty() {
            return Some(self.root);
        }
        self.root.pointer(pointer)
    }

    /// The first branch that is not the `null` type (`anyOf: [{"type": "null"}, {...}]` is how
    /// optional values are often written).
    fn first_non_null<'s>(&'s self, branches: &'s Value) -> Option<&'s Value> {
        let branches = branches.as_array()?;
        branches
            .iter()
            .find(|branch| {
                let resolved = branch
                    .get("$ref")
                    .and_then(Value::as_str)
                    .and_then(|target| self.resolve(target))
                    .unwrap_or(branch);
                resolved.as_object().map(kind_of) != Some(Some(Kind::Null))
            })
            .or_else(|| branches.first())
    }

    /// One schema with the properties and required names of `object` and every `allOf` branch.
    fn merged(&self, object: &Map<String, Value>, branches: &[Value]) -> Value {
        let mut merged = object.clone();
        merged.remove("allOf");
        let mut properties = Map::new();
        let mut required = Vec::new();
        let own = Value::Object(object.clone());
        for branch in std::iter::once(&own).chain(branches) {
            let branch = branch
                .get("$ref")
                .and_then(Value::as_str)
                .and_then(|target| self.resolve(target))
                .unwrap_or(branch);
            if let Some(more) = branch.get("properties").and_then(Value::as_object) {
                properties.extend(more.clone());
            }
            if let Some(more) = branch.get("required").and_then(Value::as_array) {
                required.extend(more.iter().cloned());
            }
            if let (None, Some(kind)) = (merged.get("type"), branch.get("type")) {
                merged.insert("type".to_owned(), kind.clone());
            }
        }
        if !properties.is_empty() {
            merged.insert("properties".to_owned(), Value::Object(properties));
        }
        if !required.is_empty() {
            merged.insert("required".to_owned(), Value::Array(required));
        }
        Value::Object(merged)
    }
}

/// The schema's type: `type` (a name, or the first non-null name of a list), else what its
/// keywords imply.
fn kind_of(object: &Map<String, Value>) -> Option<Kind> {
    match object.get("type") {
        Some(Value::String(name)) => Kind::named(name),
        Some(Value::Array(names)) => names
            .iter()
            .filter_map(Value::as_str)
            .filter_map(Kind::named)
            .find(|kind| *kind != Kind::Null)
            .or(Some(Kind::Null)),
        _ if object.contains_key("properties") => Some(Kind::Object),
        _ if object.contains_key("items") => Some(Kind::Array),
        _ => None,
    }
}

/// The value a recursion cut short ends with.
fn empty(kind: Option<Kind>) -> Value {
    match kind {
        Some(Kind::Object) => Value::Object(Map::new()),
        Some(Kind::Array) => Value::Array(Vec::new()),
        Some(Kind::Integer) => Value::from(1),
        Some(Kind::Number) => Value::from(1.5),
        Some(Kind::Boolean) => Value::Bool(true),
        Some(Kind::Null) => Value::Null,
        Some(Kind::String) | None => Value::String(WORD.to_owned()),
    }
}

/// A numeric keyword of the schema (Gemini writes some of them as strings, e.g. `"minItems": "1"`).
fn bound(object: &Map<String, Value>, key: &str) -> Option<f64> {
    match object.get(key)? {
        Value::Number(number) => number.as_f64(),
        Value::String(text) => text.parse().ok(),
        _ => None,
    }
}

fn string(object: &Map<String, Value>) -> Value {
    let format = object.get("format").and_then(Value::as_str).unwrap_or("");
    let mut text = match format {
        "date-time" => "2025-01-01T00:00:00Z",
        "date" => "2025-01-01",
        "time" => "00:00:00Z",
        "email" => "simulated@example.com",
        "uri" | "url" | "iri" => "https://example.com/",
        "uuid" => "00000000-0000-4000-8000-000000000000",
        "hostname" => "example.com",
        "ipv4" => "192.0.2.1",
        _ => WORD,
    }
    .to_owned();
    if let Some(min) = bound(object, "minLength") {
        while (text.chars().count() as f64) < min && text.len() < 1024 {
            text.push('x');
        }
    }
    if let Some(max) = bound(object, "maxLength") {
        let keep = max.clamp(0.0, text.len() as f64) as usize;
        text.truncate(keep);
    }
    Value::String(text)
}

fn integer(object: &Map<String, Value>) -> Value {
    let low = bound(object, "minimum")
        .or_else(|| bound(object, "exclusiveMinimum").map(|bound| bound.floor() + 1.0));
    let high = bound(object, "maximum")
        .or_else(|| bound(object, "exclusiveMaximum").map(|bound| bound.ceil() - 1.0));
    let mut value = 1.0_f64;
    if let Some(low) = low {
        value = value.max(low.ceil());
    }
    if let Some(high) = high {
        value = value.min(high.floor());
    }
    // Whole and within i64 after the clamps above, unless the schema's bounds are absurd.
    Value::from(value as i64)
}

fn number(object: &Map<String, Value>) -> Value {
    let mut value = 1.5_f64;
    if let Some(low) = bound(object, "minimum") {
        value = value.max(low);
    }
    if let Some(low) = bound(object, "exclusiveMinimum") {
        if value <= low {
            value = low + 1.0;
        }
    }
    if let Some(high) = bound(object, "maximum") {
        value = value.min(high);
    }
    if let Some(high) = bound(object, "exclusiveMaximum") {
        if value >= high {
            value = high - 1.0;
        }
    }
    serde_json::Number::from_f64(value).map_or(Value::from(1), Value::Number)
}

/// JSON with a space after each `,` and `:`, the way models write it. The spaces matter: the
/// simulator counts output tokens by whitespace, so a compact object would be a single token.
pub fn spaced(value: &Value) -> String {
    let mut out = String::new();
    write_spaced(&mut out, value);
    out
}

fn write_spaced(out: &mut String, value: &Value) {
    match value {
        Value::Array(items) => {
            out.push('[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push_str(", ");
                }
                write_spaced(out, item);
            }
            out.push(']');
        }
        Value::Object(members) => {
            out.push('{');
            for (index, (key, item)) in members.iter().enumerate() {
                if index > 0 {
                    out.push_str(", ");
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push_str(": ");
                write_spaced(out, item);
            }
            out.push('}');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn required_properties_get_a_value_of_their_type() {
        // GIVEN a schema with every scalar type, an enum and an optional property
        let schema = json!({
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "days": {"type": "integer"},
                "ratio": {"type": "number"},
                "metric": {"type": "boolean"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "note": {"type": "string"}
            },
            "required": ["city", "days", "ratio", "metric", "unit"]
        });
        // WHEN an example is made THEN only required properties are there, typed
        assert_eq!(
            example(&schema),
            json!({"city": "simulated", "days": 1, "ratio": 1.5, "metric": true, "unit": "celsius"})
        );
    }

    #[test]
    fn nested_objects_arrays_refs_and_nullable_types_are_followed() {
        let schema = json!({
            "type": "object",
            "properties": {
                "tags": {"type": "array", "items": {"type": "string"}},
                "when": {"type": ["string", "null"], "format": "date"},
                "owner": {"$ref": "#/$defs/Person"},
                "maybe": {"anyOf": [{"type": "null"}, {"type": "integer", "minimum": 3}]},
                "fixed": {"const": 7}
            },
            "required": ["tags", "when", "owner", "maybe", "fixed"],
            "$defs": {"Person": {"type": "object", "properties": {"name": {"type": "string"}},
                                 "required": ["name"]}}
        });
        assert_eq!(
            example(&schema),
            json!({"tags": ["simulated"], "when": "2025-01-01", "owner": {"name": "simulated"},
                   "maybe": 3, "fixed": 7})
        );
    }

    #[test]
    fn gemini_openapi_schemas_with_upper_case_types_and_no_required_fill_every_property() {
        let schema = json!({
            "type": "OBJECT",
            "properties": {
                "recipe": {"type": "STRING"},
                "steps": {"type": "ARRAY", "items": {"type": "INTEGER"}, "minItems": "2"},
                "spicy": {"type": "BOOLEAN", "nullable": true}
            }
        });
        assert_eq!(
            example(&schema),
            json!({"recipe": "simulated", "spicy": true, "steps": [1, 1]})
        );
    }

    #[test]
    fn recursive_schemas_stop() {
        let schema = json!({
            "$ref": "#/$defs/Node",
            "$defs": {"Node": {"type": "object", "properties": {"child": {"$ref": "#/$defs/Node"}},
                               "required": ["child"]}}
        });
        let value = example(&schema);
        assert!(value.is_object());
        assert!(spaced(&value).matches("child").count() <= MAX_DEPTH);
    }

    #[test]
    fn spaced_json_has_a_space_after_every_separator() {
        let value = json!({"a": [1, "x y"], "b": {"c": null}});
        assert_eq!(spaced(&value), r#"{"a": [1, "x y"], "b": {"c": null}}"#);
        let parsed: Value = serde_json::from_str(&spaced(&value)).expect("valid JSON");
        assert_eq!(parsed, value);
    }
}
