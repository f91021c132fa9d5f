//! JSON schemas (tool parameters, `response_format`) cut down to the
//! OpenAPI subset Gemini's `Schema` accepts.

use serde_json::{Map, Value, json};

/// How deep a JSON schema is followed before the rest is cut to `{}`.
const MAX_SCHEMA_DEPTH: usize = 64;
/// How many schema nodes one schema may expand to (`$ref`s shared many
/// times over could otherwise grow it exponentially); the rest is `{}`.
const MAX_SCHEMA_NODES: usize = 10_000;

/// A JSON schema cut down to what Gemini's `Schema` accepts.
pub(super) fn clean_schema(schema: &Value) -> Value {
    Cleaner { root: schema, ordered_root: None, refs: Vec::new(), budget: MAX_SCHEMA_NODES }.clean(schema, None, 0)
}

/// [`clean_schema`], adding `propertyOrdering` from `ordered` (the same
/// schema with its keys in the order written): Gemini otherwise writes a
/// structured answer's properties in alphabetical order.
pub(super) fn clean_schema_ordered(schema: &Value, ordered: Option<&Ordered>) -> Value {
    let ordered_root = ordered.filter(|o| matches!(o, Ordered::Object(_)));
    let mut cleaner = Cleaner { root: schema, ordered_root, refs: Vec::new(), budget: MAX_SCHEMA_NODES };
    cleaner.clean(schema, ordered_root, 0)
}

struct Cleaner<'a> {
    root: &'a Value,
    /// The schema with its keys in order, when `propertyOrdering` is wanted.
    ordered_root: Option<&'a Ordered>,
    /// The `$ref`s being expanded, to stop cycles.
    refs: Vec<&'a str>,
    /// Nodes left to expand.
    budget: usize,
}

impl<'a> Cleaner<'a> {
    fn clean(&mut self, schema: &'a Value, ordered: Option<&'a Ordered>, depth: usize) -> Value {
        let Some(object) = schema.as_object() else {
            return Value::Object(Map::new()); // `true` and other shorthands: anything
        };
        if depth > MAX_SCHEMA_DEPTH || self.budget == 0 {
            return Value::Object(Map::new());
        }
        self.budget -= 1;
        let mut out = Map::new();

        if let Some(reference) = object.get("$ref").and_then(Value::as_str) {
            if self.refs.contains(&reference) {
                out.insert("type".into(), "object".into()); // a cycle: stop here
            } else if let Some(pointer) = reference.strip_prefix('#')
                && let Some(target) = self.root.pointer(pointer)
            {
                let ordered_target = self.ordered_root.and_then(|root| root.pointer(pointer));
                self.refs.push(reference);
                merge(&mut out, self.clean(target, ordered_target, depth + 1));
                self.refs.pop();
            }
        }
        for (i, sub) in object.get("allOf").and_then(Value::as_array).into_iter().flatten().enumerate() {
            let cleaned = self.clean(sub, child(ordered, "allOf").and_then(|o| o.at(i)), depth + 1);
            merge(&mut out, cleaned);
        }
        for key in ["anyOf", "oneOf"] {
            let Some(variants) = object.get(key).and_then(Value::as_array) else { continue };
            let mut kept = Vec::new();
            for (i, variant) in variants.iter().enumerate() {
                if is_null_schema(variant) {
                    out.insert("nullable".into(), true.into());
                } else {
                    kept.push(self.clean(variant, child(ordered, key).and_then(|o| o.at(i)), depth + 1));
                }
            }
            match kept.len() {
                0 => {}
                1 => merge(&mut out, kept.remove(0)),
                _ => {
                    out.insert("anyOf".into(), Value::Array(kept));
                }
            }
        }

        match object.get("type") {
            Some(Value::String(kind)) if kind == "null" => {
                out.insert("nullable".into(), true.into());
            }
            Some(Value::String(kind)) => {
                out.insert("type".into(), kind.as_str().into());
            }
            Some(Value::Array(kinds)) => {
                let mut kinds: Vec<&str> = kinds.iter().filter_map(Value::as_str).collect();
                if kinds.contains(&"null") {
                    out.insert("nullable".into(), true.into());
                    kinds.retain(|k| *k != "null");
                }
                match kinds[..] {
                    [] => {}
                    [kind] => {
                        out.insert("type".into(), kind.into());
                    }
                    _ => {
                        let variants = kinds.iter().map(|k| json!({ "type": k })).collect();
                        out.insert("anyOf".into(), Value::Array(variants));
                    }
                }
            }
            _ => {}
        }

        let values = match (object.get("enum"), object.get("const")) {
            (Some(Value::Array(values)), _) => Some(values.clone()),
            (_, Some(value)) => Some(vec![value.clone()]),
            _ => None,
        };
        if let Some(mut values) = values {
            if values.iter().any(Value::is_null) {
                out.insert("nullable".into(), true.into());
                values.retain(|v| !v.is_null());
            }
            // Gemini takes enums of strings only; other values stay unconstrained.
            if !values.is_empty() && values.iter().all(Value::is_string) {
                out.insert("enum".into(), Value::Array(values));
                out.entry("type").or_insert_with(|| "string".into());
            }
        }

        if let Some(format) = object.get("format").and_then(Value::as_str) {
            let supported = match out.get("type").and_then(Value::as_str) {
                Some("string") => matches!(format, "enum" | "date-time"),
                Some("integer") => matches!(format, "int32" | "int64"),
                Some("number") => matches!(format, "float" | "double"),
                _ => false,
            };
            if supported {
                out.insert("format".into(), format.into());
            }
        }

        if let Some(properties) = object.get("properties").and_then(Value::as_object) {
            let mut cleaned = match out.remove("properties") {
                Some(Value::Object(merged)) => merged,
                _ => Map::new(),
            };
            let ordered_properties = child(ordered, "properties");
            for (name, property) in properties {
                cleaned.insert(name.clone(), self.clean(property, child(ordered_properties, name), depth + 1));
            }
            out.insert("properties".into(), Value::Object(cleaned));
            if let Some(Ordered::Object(entries)) = ordered_properties {
                let mut order = match out.remove("propertyOrdering") {
                    Some(Value::Array(merged)) => merged,
                    _ => Vec::new(),
                };
                for (name, _) in entries {
                    let name = Value::String(name.clone());
                    if !order.contains(&name) {
                        order.push(name);
                    }
                }
                out.insert("propertyOrdering".into(), Value::Array(order));
            }
        }
        if let Some(required) = object.get("required").and_then(Value::as_array) {
            let mut all = match out.remove("required") {
                Some(Value::Array(merged)) => merged,
                _ => Vec::new(),
            };
            for name in required.iter().filter(|n| n.is_string()) {
                if !all.contains(name) {
                    all.push(name.clone());
                }
            }
            out.insert("required".into(), Value::Array(all));
        }
        match object.get("items") {
            Some(items @ Value::Object(_)) => {
                let cleaned = self.clean(items, child(ordered, "items"), depth + 1);
                out.insert("items".into(), cleaned);
            }
            Some(Value::Array(tuple)) if !tuple.is_empty() => {
                let cleaned = self.clean(&tuple[0], child(ordered, "items").and_then(|o| o.at(0)), depth + 1);
                out.insert("items".into(), cleaned);
            }
            _ => {}
        }

        if let Some(description) = object.get("description").and_then(Value::as_str) {
            out.insert("description".into(), description.into());
        }
        if object.get("nullable") == Some(&Value::Bool(true)) {
            out.insert("nullable".into(), true.into());
        }
        for key in
            ["minimum", "maximum", "minItems", "maxItems", "minLength", "maxLength", "minProperties", "maxProperties"]
        {
            if let Some(n @ Value::Number(_)) = object.get(key) {
                out.insert(key.into(), n.clone());
            }
        }
        if let Some(pattern) = object.get("pattern").and_then(Value::as_str) {
            out.insert("pattern".into(), pattern.into());
        }
        if let Some(Value::Array(order)) = object.get("propertyOrdering") {
            out.insert("propertyOrdering".into(), Value::Array(order.clone()));
        }

        // `required` may only name properties that exist.
        let names: Option<Vec<String>> =
            out.get("properties").and_then(Value::as_object).map(|p| p.keys().cloned().collect());
        if let Some(Value::Array(required)) = out.get_mut("required") {
            match &names {
                Some(names) => required.retain(|r| r.as_str().is_some_and(|r| names.iter().any(|n| n == r))),
                None => required.clear(),
            }
            if required.is_empty() {
                out.remove("required");
            }
        }
        if out.get("properties").and_then(Value::as_object).is_some_and(Map::is_empty) {
            out.remove("properties");
        }
        // `propertyOrdering` must name each property once, and only those.
        if let Some(Value::Array(order)) = out.get("propertyOrdering") {
            let exact = match &names {
                Some(names) => {
                    order.len() == names.len()
                        && names.len() > 1
                        && names.iter().all(|n| order.iter().any(|o| o.as_str() == Some(n.as_str())))
                }
                None => false,
            };
            if !exact {
                out.remove("propertyOrdering");
            }
        }
        Value::Object(out)
    }
}

fn is_null_schema(schema: &Value) -> bool {
    schema.get("type").and_then(Value::as_str) == Some("null")
}

/// Merges a cleaned schema into `out`: properties and `required` add up,
/// other keywords are replaced.
fn merge(out: &mut Map<String, Value>, from: Value) {
    let Value::Object(from) = from else { return };
    for (key, value) in from {
        match (key.as_str(), out.get_mut(&key), value) {
            ("properties", Some(Value::Object(mine)), Value::Object(theirs)) => mine.extend(theirs),
            ("required" | "propertyOrdering", Some(Value::Array(mine)), Value::Array(theirs)) => {
                for name in theirs {
                    if !mine.contains(&name) {
                        mine.push(name);
                    }
                }
            }
            (_, _, value) => {
                out.insert(key, value);
            }
        }
    }
}

/// A JSON document with the keys of its objects in the order they were
/// written (`serde_json::Map` sorts them): where `propertyOrdering` comes from.
#[derive(Debug)]
pub(super) enum Ordered {
    Object(Vec<(String, Ordered)>),
    Array(Vec<Ordered>),
    Scalar,
}

impl Ordered {
    fn get(&self, key: &str) -> Option<&Ordered> {
        match self {
            // With duplicate keys serde_json keeps the last; so does this.
            Ordered::Object(entries) => entries.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    fn at(&self, i: usize) -> Option<&Ordered> {
        match self {
            Ordered::Array(items) => items.get(i),
            _ => None,
        }
    }

    /// A JSON pointer (`/a/0/b~1c`), as `serde_json::Value::pointer` reads it.
    pub(super) fn pointer(&self, pointer: &str) -> Option<&Ordered> {
        if pointer.is_empty() {
            return Some(self);
        }
        let mut node = self;
        for token in pointer.strip_prefix('/')?.split('/') {
            let token = token.replace("~1", "/").replace("~0", "~");
            node = match node {
                Ordered::Array(_) => node.at(token.parse().ok()?)?,
                _ => node.get(&token)?,
            };
        }
        Some(node)
    }
}

fn child<'o>(node: Option<&'o Ordered>, key: &str) -> Option<&'o Ordered> {
    node.and_then(|n| n.get(key))
}

impl<'de> serde::Deserialize<'de> for Ordered {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(OrderedVisitor)
    }
}

struct OrderedVisitor;

impl<'de> serde::de::Visitor<'de> for OrderedVisitor {
    type Value = Ordered;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Ordered, E> {
        Ok(Ordered::Scalar)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Ordered, E> {
        Ok(Ordered::Scalar)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Ordered, E> {
        Ok(Ordered::Scalar)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Ordered, E> {
        Ok(Ordered::Scalar)
    }

    fn visit_str<E>(self, _: &str) -> Result<Ordered, E> {
        Ok(Ordered::Scalar)
    }

    fn visit_unit<E>(self) -> Result<Ordered, E> {
        Ok(Ordered::Scalar)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Ordered, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Ordered::Array(items))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Ordered, A::Error> {
        let mut entries = Vec::new();
        while let Some(entry) = map.next_entry::<String, Ordered>()? {
            entries.push(entry);
        }
        Ok(Ordered::Object(entries))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    use crate::upstream::dialect::gemini::chat_request;

    fn schema(value: Value) -> Value {
        clean_schema(&value)
    }

    #[test]
    fn schemas_keep_only_what_gemini_takes() {
        assert_eq!(
            schema(json!({ "type": ["string", "integer", "null"], "description": "id" })),
            json!({ "anyOf": [{ "type": "string" }, { "type": "integer" }], "nullable": true, "description": "id" })
        );
        assert_eq!(
            schema(json!({ "oneOf": [{ "type": "string" }, { "type": "number", "exclusiveMinimum": 0 }] })),
            json!({ "anyOf": [{ "type": "string" }, { "type": "number" }] })
        );
        // Enums of other than strings cannot be said to Gemini: the type stays.
        assert_eq!(schema(json!({ "type": "integer", "enum": [1, 2] })), json!({ "type": "integer" }));
        assert_eq!(schema(json!({ "const": 3 })), json!({}));
        assert_eq!(schema(json!({ "const": "x" })), json!({ "type": "string", "enum": ["x"] }));
        assert_eq!(schema(json!(true)), json!({}));
        assert_eq!(schema(json!({ "type": "null" })), json!({ "nullable": true }));
        assert_eq!(
            schema(
                json!({ "type": "object", "properties": { "a": { "type": "object", "properties": {} } }, "required": ["b"] })
            ),
            json!({ "type": "object", "properties": { "a": { "type": "object" } } })
        );
        assert_eq!(
            schema(json!({ "type": "array", "items": [{ "type": "string" }, { "type": "number" }] })),
            json!({ "type": "array", "items": { "type": "string" } })
        );
        assert_eq!(
            schema(json!({ "type": "number", "format": "float", "minimum": 0.5 })),
            json!({ "type": "number", "format": "float", "minimum": 0.5 })
        );
        // An unresolvable `$ref` leaves what else the schema says.
        assert_eq!(schema(json!({ "$ref": "#/nowhere", "description": "d" })), json!({ "description": "d" }));
        assert_eq!(schema(json!({ "$ref": "https://example.com/s.json" })), json!({}));
    }

    #[test]
    fn structured_answers_keep_the_order_the_schema_was_written_in() {
        let body = r##"{"messages":[{"role":"user","content":"x"}],
            "tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object","properties":{"z":{},"a":{}}}}}],
            "response_format":{"type":"json_schema","json_schema":{"name":"a","schema":{
            "type":"object",
            "properties":{
                "zeta":{"type":"string"},
                "alpha":{"$ref":"#/$defs/pair"},
                "mid":{"type":"object","allOf":[{"properties":{"y":{"type":"string"},"b":{"type":"string"}}}],
                       "properties":{"a":{"type":"string"}}},
                "own":{"type":"object","properties":{"p":{},"q":{}},"propertyOrdering":["q","p"]},
                "bad":{"type":"object","properties":{"p":{},"q":{}},"propertyOrdering":["q"]}
            },
            "$defs":{"pair":{"type":"object","properties":{"second":{"type":"number"},"first":{"type":"number"}}}}}}}}"##;
        let out: Value = serde_json::from_slice(&chat_request(body.as_bytes(), "m", false).unwrap()).unwrap();
        let schema = &out["generationConfig"]["responseSchema"];
        assert_eq!(schema["propertyOrdering"], json!(["zeta", "alpha", "mid", "own", "bad"]));
        assert_eq!(schema["properties"]["alpha"]["propertyOrdering"], json!(["second", "first"]));
        assert_eq!(schema["properties"]["mid"]["propertyOrdering"], json!(["y", "b", "a"]));
        assert_eq!(schema["properties"]["own"]["propertyOrdering"], json!(["q", "p"]));
        assert_eq!(schema["properties"]["bad"].get("propertyOrdering"), None);
        // Tool parameters are left in Gemini's order.
        let parameters = &out["tools"][0]["functionDeclarations"][0]["parameters"];
        assert_eq!(parameters.get("propertyOrdering"), None);
    }

    #[test]
    fn ordered_documents_follow_pointers() {
        let doc: Ordered =
            serde_json::from_str(r#"{"a/b":[{"x":1},{"~y":{"b":2,"a":3}}],"a":{"a":1},"a":{"c":2}}"#).unwrap();
        let keys = |o: Option<&Ordered>| match o {
            Some(Ordered::Object(entries)) => entries.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(),
            _ => Vec::new(),
        };
        assert_eq!(keys(doc.pointer("/a~1b/1/~0y")), ["b", "a"]);
        assert_eq!(keys(doc.pointer("/a")), ["c"]);
        assert_eq!(keys(doc.pointer("")), ["a/b", "a", "a"]);
        assert!(doc.pointer("/a~1b/9").is_none());
        assert!(doc.pointer("a").is_none());
    }

    #[test]
    fn recursive_and_exploding_schemas_stay_bounded() {
        // A schema that refers to itself stops at a bare object.
        // (The root is entered once more through its first `$ref`.)
        let out = schema(json!({ "type": "object", "properties": { "next": { "$ref": "#" } } }));
        let inner = json!({ "type": "object", "properties": { "next": { "type": "object" } } });
        assert_eq!(out, json!({ "type": "object", "properties": { "next": inner } }));

        // Each level refers twice to the one below: 2^40 nodes if expanded.
        let mut defs = Map::new();
        defs.insert("d0".into(), json!({ "type": "string" }));
        for level in 1..40 {
            let below = format!("#/$defs/d{}", level - 1);
            defs.insert(
                format!("d{level}"),
                json!({ "type": "object", "properties": { "a": { "$ref": below }, "b": { "$ref": below } } }),
            );
        }
        let root = json!({ "$ref": "#/$defs/d39", "$defs": defs });
        let out = schema(root);
        assert_eq!(out["type"], "object");
        assert!(out.to_string().len() < 2_000_000, "the expansion is capped");

        // Deep nesting is cut rather than followed to the end.
        let mut deep = json!({ "type": "string" });
        for _ in 0..100 {
            deep = json!({ "type": "array", "items": deep });
        }
        let out = schema(deep);
        assert_eq!(out["type"], "array");
    }
}
