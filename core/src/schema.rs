//! CRD schemas the way a Kubernetes API server treats them: the structural-schema rules a CRD
//! must satisfy to be accepted, and validation of an object against a schema with field paths
//! and messages in the API server's own words.
//!
//! The project uses this to prove its generated CRDs would be accepted and its example manifests
//! would be admitted, and the standalone control plane uses it to enforce custom-resource
//! schemas on writes. Only the OpenAPI v3 subset that structural schemas allow is understood;
//! CEL rules (`x-kubernetes-validations`) and `pattern` are not evaluated.

use std::collections::BTreeSet;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};
use serde_json::Value;

use crate::validation::{Collector, ErrorKind, ValidationErrors};

/// Lists every way `schema` breaks the structural-schema rules of `apiextensions.k8s.io/v1`.
/// Empty means a real API server would accept it as structural.
///
/// Checked: every node has a `type` (unless it is `x-kubernetes-int-or-string` or
/// `x-kubernetes-preserve-unknown-fields`); `properties` and `additionalProperties` are not both
/// set; the logical junctors (`allOf`, `anyOf`, `oneOf`, `not`) carry no `type`, `description`,
/// `default`, `additionalProperties` or `nullable`, and every property they mention also exists
/// outside them; the fields CRDs v1 forbid (`$ref`, `definitions`, `id`, `patternProperties`,
/// `dependencies`, `additionalItems`, `uniqueItems: true`) are absent.
pub fn structural_violations(schema: &JSONSchemaProps) -> Vec<String> {
    let mut out = Vec::new();
    if schema.type_.as_deref() != Some("object") {
        out.push("<root>: type must be \"object\"".to_owned());
    }
    check_node(schema, "", &mut out);
    out
}

/// Paths of the nodes that keep unknown fields (`x-kubernetes-preserve-unknown-fields: true`),
/// like `.spec.payload`. Such nodes accept arbitrary JSON, so they should be rare and deliberate.
pub fn preserve_unknown_fields_paths(schema: &JSONSchemaProps) -> Vec<String> {
    let mut out = Vec::new();
    walk(schema, "", &mut |node, path| {
        if node.x_kubernetes_preserve_unknown_fields == Some(true) {
            out.push(if path.is_empty() { "<root>".to_owned() } else { path.to_owned() });
        }
    });
    out
}

/// Validates an object (a whole custom resource as JSON) against its CRD schema: types,
/// required fields, enums, numeric bounds, string lengths, item counts and the logical junctors.
/// `metadata`, `apiVersion` and `kind` are the API server's business and are not checked here.
/// Unknown fields are not errors here (an API server prunes them); see [`unknown_fields`].
pub fn validate(object: &Value, schema: &JSONSchemaProps) -> Result<(), ValidationErrors> {
    let mut errs = Collector::default();
    match (object, &schema.properties) {
        (Value::Object(fields), Some(properties)) => {
            for (name, value) in fields {
                if matches!(name.as_str(), "metadata" | "apiVersion" | "kind") {
                    continue;
                }
                if let Some(sub) = properties.get(name) {
                    validate_value(value, sub, name, &mut errs);
                }
            }
            for name in schema.required.iter().flatten() {
                if !fields.contains_key(name) {
                    errs.push(name.clone(), ErrorKind::Required, "");
                }
            }
        }
        _ => validate_value(object, schema, "", &mut errs),
    }
    errs.finish()
}

/// Paths of fields in `object` that its schema does not declare and does not preserve, like
/// `spec.timeout`: what `kubectl apply` (strict field validation) reports as unknown fields.
pub fn unknown_fields(object: &Value, schema: &JSONSchemaProps) -> Vec<String> {
    let mut out = Vec::new();
    if let Value::Object(fields) = object {
        for (name, value) in fields {
            if matches!(name.as_str(), "metadata" | "apiVersion" | "kind") {
                continue;
            }
            match schema.properties.as_ref().and_then(|p| p.get(name)) {
                Some(sub) => collect_unknown(value, sub, name, &mut out),
                None => out.push(name.clone()),
            }
        }
    }
    out
}

fn check_node(node: &JSONSchemaProps, path: &str, out: &mut Vec<String>) {
    let here = if path.is_empty() { "<root>" } else { path };
    let exempt = node.x_kubernetes_int_or_string == Some(true)
        || node.x_kubernetes_preserve_unknown_fields == Some(true);
    if node.type_.as_deref().is_none_or(str::is_empty) && !exempt {
        out.push(format!("{here}: type is not set"));
    }
    if node.properties.is_some() && node.additional_properties.is_some() {
        out.push(format!("{here}: properties and additionalProperties are both set"));
    }
    let forbidden = [
        ("$ref", node.ref_path.is_some()),
        ("definitions", node.definitions.is_some()),
        ("id", node.id.is_some()),
        ("patternProperties", node.pattern_properties.is_some()),
        ("dependencies", node.dependencies.is_some()),
        ("additionalItems", node.additional_items.is_some()),
        ("uniqueItems", node.unique_items == Some(true)),
    ];
    for (field, set) in forbidden {
        if set {
            out.push(format!("{here}: {field} is not allowed in a CRD schema"));
        }
    }

    let declared: BTreeSet<&str> =
        node.properties.iter().flatten().map(|(name, _)| name.as_str()).collect();
    let junctors = node
        .all_of
        .iter()
        .flatten()
        .chain(node.any_of.iter().flatten())
        .chain(node.one_of.iter().flatten())
        .chain(node.not.as_deref());
    for junctor in junctors {
        check_junctor(junctor, &declared, here, out);
    }

    for (name, sub) in node.properties.iter().flatten() {
        check_node(sub, &format!("{path}.{name}"), out);
    }
    if let Some(JSONSchemaPropsOrBool::Schema(sub)) = &node.additional_properties {
        check_node(sub, &format!("{path}.additionalProperties"), out);
    }
    match &node.items {
        Some(JSONSchemaPropsOrArray::Schema(sub)) => check_node(sub, &format!("{path}[*]"), out),
        Some(JSONSchemaPropsOrArray::Schemas(_)) => {
            out.push(format!("{here}: items must be a single schema, not a list"));
        }
        None => {
            if node.type_.as_deref() == Some("array") {
                out.push(format!("{here}: an array must specify items"));
            }
        }
    }
}

/// Inside `allOf`/`anyOf`/`oneOf`/`not` only value constraints are allowed, and only on
/// properties the enclosing node declares itself.
fn check_junctor(
    junctor: &JSONSchemaProps,
    declared: &BTreeSet<&str>,
    here: &str,
    out: &mut Vec<String>,
) {
    let banned = [
        ("type", junctor.type_.is_some()),
        ("description", junctor.description.is_some()),
        ("default", junctor.default.is_some()),
        ("additionalProperties", junctor.additional_properties.is_some()),
        ("nullable", junctor.nullable.is_some()),
    ];
    for (field, set) in banned {
        if set {
            out.push(format!("{here}: {field} is not allowed inside allOf/anyOf/oneOf/not"));
        }
    }
    let mentioned = junctor
        .required
        .iter()
        .flatten()
        .map(String::as_str)
        .chain(junctor.properties.iter().flatten().map(|(name, _)| name.as_str()));
    for name in mentioned {
        if !declared.contains(name) {
            out.push(format!(
                "{here}: {name} is used inside allOf/anyOf/oneOf/not but not declared in properties"
            ));
        }
    }
}

fn walk(node: &JSONSchemaProps, path: &str, visit: &mut impl FnMut(&JSONSchemaProps, &str)) {
    visit(node, path);
    for (name, sub) in node.properties.iter().flatten() {
        walk(sub, &format!("{path}.{name}"), visit);
    }
    if let Some(JSONSchemaPropsOrBool::Schema(sub)) = &node.additional_properties {
        walk(sub, &format!("{path}.additionalProperties"), visit);
    }
    if let Some(JSONSchemaPropsOrArray::Schema(sub)) = &node.items {
        walk(sub, &format!("{path}[*]"), visit);
    }
}

fn validate_value(value: &Value, schema: &JSONSchemaProps, path: &str, errs: &mut Collector) {
    let before = errs.len();
    if value.is_null() {
        if schema.nullable != Some(true)
            && schema.x_kubernetes_preserve_unknown_fields != Some(true)
        {
            let expected = schema.type_.as_deref().unwrap_or("value");
            errs.push(
                path,
                ErrorKind::Invalid,
                format!("\"null\": {path} in body must be of type {expected}: \"null\""),
            );
        }
        return;
    }

    if schema.x_kubernetes_int_or_string == Some(true) {
        if !(value.is_string() || is_integer(value)) {
            errs.push(
                path,
                ErrorKind::Invalid,
                format!("{}: {path} in body must be an integer or a string", short(value)),
            );
        }
    } else if let Some(expected) = schema.type_.as_deref()
        && !type_matches(value, expected)
    {
        errs.push(
            path,
            ErrorKind::Invalid,
            format!(
                "\"{}\": {path} in body must be of type {expected}: \"{}\"",
                json_type(value),
                json_type(value)
            ),
        );
        return;
    }

    if let Some(allowed) = &schema.enum_
        && !allowed.iter().any(|a| &a.0 == value)
    {
        let list: Vec<String> = allowed.iter().map(|a| a.0.to_string()).collect();
        errs.push(
            path,
            ErrorKind::NotSupported,
            format!("{}: supported values: {}", short(value), list.join(", ")),
        );
    }

    match value {
        Value::Number(n) => check_number(n.as_f64().unwrap_or(f64::NAN), schema, path, errs),
        Value::String(s) => {
            let len = s.chars().count() as i64;
            if let Some(max) = schema.max_length
                && len > max
            {
                errs.push(
                    path,
                    ErrorKind::TooLong,
                    format!("may not be more than {max} characters"),
                );
            }
            if let Some(min) = schema.min_length
                && len < min
            {
                errs.push(
                    path,
                    ErrorKind::Invalid,
                    format!("{}: {path} in body should be at least {min} chars long", short(value)),
                );
            }
        }
        Value::Array(items) => {
            let count = items.len() as i64;
            if let Some(max) = schema.max_items
                && count > max
            {
                errs.push(path, ErrorKind::TooLong, format!("must have at most {max} items"));
            }
            if let Some(min) = schema.min_items
                && count < min
            {
                errs.push(
                    path,
                    ErrorKind::Invalid,
                    format!("{count}: {path} in body should have at least {min} items"),
                );
            }
            if let Some(JSONSchemaPropsOrArray::Schema(item)) = &schema.items {
                for (i, v) in items.iter().enumerate() {
                    validate_value(v, item, &format!("{path}[{i}]"), errs);
                }
            }
        }
        Value::Object(fields) => {
            for name in schema.required.iter().flatten() {
                if !fields.contains_key(name) {
                    errs.push(join(path, name), ErrorKind::Required, "");
                }
            }
            for (name, v) in fields {
                if let Some(sub) = schema.properties.as_ref().and_then(|p| p.get(name)) {
                    validate_value(v, sub, &join(path, name), errs);
                } else if let Some(JSONSchemaPropsOrBool::Schema(sub)) =
                    &schema.additional_properties
                {
                    validate_value(v, sub, &format!("{path}[{name}]"), errs);
                }
            }
        }
        Value::Bool(_) | Value::Null => {}
    }

    // The junctors constrain a value that is otherwise well-formed; reporting them on top of a
    // type error would only repeat it.
    if errs.len() == before {
        check_junctors(value, schema, path, errs);
    }
}

fn check_junctors(value: &Value, schema: &JSONSchemaProps, path: &str, errs: &mut Collector) {
    let matches = |sub: &JSONSchemaProps| {
        let mut probe = Collector::default();
        validate_value(value, sub, path, &mut probe);
        probe.finish().is_ok()
    };
    let shown = if path.is_empty() { "<root>" } else { path };
    if let Some(branches) = &schema.one_of {
        let hits = branches.iter().filter(|b| matches(b)).count();
        if hits != 1 {
            errs.push(
                path,
                ErrorKind::Invalid,
                format!(
                    "{shown} in body must match exactly one schema in oneOf, matched {hits}{}",
                    describe_required_branches(branches)
                ),
            );
        }
    }
    if let Some(branches) = &schema.any_of
        && !branches.iter().any(&matches)
    {
        errs.push(
            path,
            ErrorKind::Invalid,
            format!(
                "{shown} in body must match at least one schema in anyOf{}",
                describe_required_branches(branches)
            ),
        );
    }
    for branch in schema.all_of.iter().flatten() {
        validate_value(value, branch, path, errs);
    }
    if let Some(not) = &schema.not
        && matches(not)
    {
        errs.push(
            path,
            ErrorKind::Invalid,
            format!("{shown} in body must not match the schema in not"),
        );
    }
}

/// For branches that only list required fields (the usual exactly-one-of idiom), names them so
/// the message says what to set.
fn describe_required_branches(branches: &[JSONSchemaProps]) -> String {
    let sets: Option<Vec<String>> =
        branches.iter().map(|b| b.required.as_ref().map(|r| r.join("+"))).collect();
    match sets {
        Some(sets) if !sets.is_empty() => format!(" (set exactly one of: {})", sets.join(", ")),
        _ => String::new(),
    }
}

fn check_number(n: f64, schema: &JSONSchemaProps, path: &str, errs: &mut Collector) {
    if let Some(min) = schema.minimum {
        let exclusive = schema.exclusive_minimum == Some(true);
        if n < min || (exclusive && n == min) {
            let rel = if exclusive { "greater than" } else { "greater than or equal to" };
            errs.push(
                path,
                ErrorKind::Invalid,
                format!("{}: {path} in body should be {rel} {}", fmt_num(n), fmt_num(min)),
            );
        }
    }
    if let Some(max) = schema.maximum {
        let exclusive = schema.exclusive_maximum == Some(true);
        if n > max || (exclusive && n == max) {
            let rel = if exclusive { "less than" } else { "less than or equal to" };
            errs.push(
                path,
                ErrorKind::Invalid,
                format!("{}: {path} in body should be {rel} {}", fmt_num(n), fmt_num(max)),
            );
        }
    }
}

fn collect_unknown(value: &Value, schema: &JSONSchemaProps, path: &str, out: &mut Vec<String>) {
    if schema.x_kubernetes_preserve_unknown_fields == Some(true) {
        return;
    }
    match value {
        Value::Object(fields) => {
            for (name, v) in fields {
                if let Some(sub) = schema.properties.as_ref().and_then(|p| p.get(name)) {
                    collect_unknown(v, sub, &join(path, name), out);
                } else if let Some(JSONSchemaPropsOrBool::Schema(sub)) =
                    &schema.additional_properties
                {
                    collect_unknown(v, sub, &format!("{path}[{name}]"), out);
                } else if schema.additional_properties.is_none() {
                    out.push(join(path, name));
                }
            }
        }
        Value::Array(items) => {
            if let Some(JSONSchemaPropsOrArray::Schema(item)) = &schema.items {
                for (i, v) in items.iter().enumerate() {
                    collect_unknown(v, item, &format!("{path}[{i}]"), out);
                }
            }
        }
        _ => {}
    }
}

fn type_matches(value: &Value, expected: &str) -> bool {
    match expected {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "boolean" => value.is_boolean(),
        "number" => value.is_number(),
        "integer" => is_integer(value),
        _ => true,
    }
}

fn is_integer(value: &Value) -> bool {
    match value {
        Value::Number(n) => {
            n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.fract() == 0.0)
        }
        _ => false,
    }
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// A value as an error message shows it: scalars in full, containers by their type.
fn short(value: &Value) -> String {
    match value {
        Value::Array(_) | Value::Object(_) => format!("\"{}\"", json_type(value)),
        Value::String(s) if s.chars().count() > 64 => {
            format!("{:?}", s.chars().take(64).collect::<String>() + "…")
        }
        other => other.to_string(),
    }
}

fn fmt_num(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1e15 { format!("{}", n as i64) } else { n.to_string() }
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() { name.to_owned() } else { format!("{path}.{name}") }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema(value: Value) -> JSONSchemaProps {
        serde_json::from_value(value).expect("test schema")
    }

    fn sample() -> JSONSchemaProps {
        schema(json!({
            "type": "object",
            "properties": {
                "spec": {
                    "type": "object",
                    "required": ["runtime"],
                    "properties": {
                        "runtime": {"type": "string", "enum": ["python", "go"]},
                        "timeout": {"type": "integer", "minimum": 1, "maximum": 60},
                        "name": {"type": "string", "maxLength": 5},
                        "env": {"type": "object", "additionalProperties": {"type": "string"}},
                        "tags": {"type": "array", "items": {"type": "string"}},
                        "payload": {"x-kubernetes-preserve-unknown-fields": true, "nullable": true},
                        "code": {
                            "type": "object",
                            "properties": {"a": {"type": "string"}, "b": {"type": "string"}},
                            "oneOf": [{"required": ["a"]}, {"required": ["b"]}]
                        }
                    }
                }
            }
        }))
    }

    fn errors(object: Value) -> String {
        validate(&object, &sample()).expect_err("object should be rejected").to_string()
    }

    #[test]
    fn a_well_formed_object_validates() {
        let object = json!({
            "apiVersion": "x/v1", "kind": "X", "metadata": {"name": "n"},
            "spec": {"runtime": "go", "timeout": 5, "env": {"A": "b"}, "tags": ["t"],
                     "payload": {"anything": [1, null]}, "code": {"a": "x"}}
        });
        assert_eq!(validate(&object, &sample()), Ok(()));
        assert!(unknown_fields(&object, &sample()).is_empty());
    }

    #[test]
    fn violations_name_the_field_like_an_api_server() {
        let message = errors(json!({"spec": {"runtime": "ruby", "timeout": 0, "name": "toolong"}}));
        assert!(
            message.contains(
                "spec.runtime: Unsupported value: \"ruby\": supported values: \"python\", \"go\""
            ),
            "{message}"
        );
        assert!(message.contains("spec.timeout: Invalid value: 0: spec.timeout in body should be greater than or equal to 1"), "{message}");
        assert!(
            message.contains("spec.name: Too long: may not be more than 5 characters"),
            "{message}"
        );
    }

    #[test]
    fn wrong_types_and_missing_required_fields_are_reported() {
        let message = errors(json!({"spec": {"timeout": "5", "env": {"A": 1}, "tags": [true]}}));
        for expected in [
            "spec.runtime: Required value",
            "spec.timeout: Invalid value: \"string\": spec.timeout in body must be of type integer",
            "spec.env[A]: Invalid value",
            "spec.tags[0]: Invalid value",
        ] {
            assert!(message.contains(expected), "{expected} not in {message}");
        }
    }

    #[test]
    fn one_of_rejects_none_and_two() {
        let none = errors(json!({"spec": {"runtime": "go", "code": {}}}));
        assert!(none.contains("spec.code in body must match exactly one schema in oneOf, matched 0 (set exactly one of: a, b)"), "{none}");
        let two = errors(json!({"spec": {"runtime": "go", "code": {"a": "x", "b": "y"}}}));
        assert!(two.contains("matched 2"), "{two}");
    }

    #[test]
    fn unknown_fields_are_found_outside_preserved_nodes() {
        let object = json!({"spec": {"runtime": "go", "timout": 5, "payload": {"free": 1},
                                     "env": {"FREE": "ok"}, "code": {"a": "x", "c": 1}}});
        assert_eq!(unknown_fields(&object, &sample()), vec!["spec.code.c", "spec.timout"]);
    }

    #[test]
    fn structural_rules_are_enforced() {
        assert!(
            structural_violations(&sample()).is_empty(),
            "{:?}",
            structural_violations(&sample())
        );
        let bad = schema(json!({
            "type": "object",
            "properties": {
                "untyped": {"description": "no type"},
                "both": {"type": "object", "properties": {"a": {"type": "string"}},
                         "additionalProperties": {"type": "string"}},
                "junctor": {"type": "object", "properties": {"a": {"type": "string"}},
                            "oneOf": [{"required": ["b"]}, {"type": "object"}]},
                "list": {"type": "array"}
            }
        }));
        let found = structural_violations(&bad).join("\n");
        for expected in [
            ".untyped: type is not set",
            ".both: properties and additionalProperties are both set",
            ".junctor: b is used inside allOf/anyOf/oneOf/not but not declared",
            ".junctor: type is not allowed inside",
            ".list: an array must specify items",
        ] {
            assert!(found.contains(expected), "{expected} not in:\n{found}");
        }
    }

    #[test]
    fn preserved_nodes_are_listed() {
        assert_eq!(preserve_unknown_fields_paths(&sample()), vec![".spec.payload"]);
    }
}
