//! What the API server does to a custom resource on every write: schema defaults, pruning of
//! undeclared fields (or a strict-validation error naming them), and schema validation.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};
use kubefaas_core::schema;
use serde_json::Value;

use crate::error::{ApiError, ApiResult};
use crate::registry::ResourceType;

/// `?fieldValidation=`: what to do with fields the schema does not declare.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum FieldValidation {
    /// Drop them silently.
    Ignore,
    /// Drop them (a real server also sends a warning).
    #[default]
    Warn,
    /// Reject the write with 400.
    Strict,
}

/// Defaults, prunes and validates `object` against `rt`'s schema. Of the built-ins, only a
/// Secret is changed: its write-only `stringData` is folded into `data`.
pub(crate) fn admit(
    rt: &ResourceType,
    object: &mut Value,
    validation: FieldValidation,
) -> ApiResult<()> {
    if rt.group.is_empty() && rt.kind == "Secret" {
        fold_string_data(object);
    }
    let Some(schema) = &rt.schema else { return Ok(()) };
    let unknown = schema::unknown_fields(object, schema);
    if !unknown.is_empty() && validation == FieldValidation::Strict {
        let list: Vec<String> = unknown.iter().map(|f| format!("unknown field \"{f}\"")).collect();
        return Err(ApiError::bad_request(format!("strict decoding error: {}", list.join(", "))));
    }
    walk(object, schema, true);
    let name = object["metadata"]["name"].as_str().unwrap_or_default().to_owned();
    schema::validate(object, schema)
        .map_err(|errors| ApiError::invalid(&rt.kind, &rt.group, &name, &errors))
}

/// Moves a Secret's `stringData` into `data`, base64-encoded, over any `data` key of the same
/// name, as the API server does: `stringData` is never stored or returned.
fn fold_string_data(secret: &mut Value) {
    use base64::Engine as _;
    let Some(map) = secret.as_object_mut() else { return };
    let Some(Value::Object(strings)) = map.remove("stringData") else { return };
    let data = map.entry("data").or_insert_with(|| Value::Object(Default::default()));
    if !data.is_object() {
        *data = Value::Object(Default::default());
    }
    if let Some(data) = data.as_object_mut() {
        for (key, value) in strings {
            let text = value.as_str().map_or_else(|| value.to_string(), str::to_owned);
            data.insert(key, Value::String(base64::engine::general_purpose::STANDARD.encode(text)));
        }
    }
}

/// Applies `default`s and removes undeclared fields below `value`. At the root, `apiVersion`,
/// `kind` and `metadata` belong to the server and are left alone.
fn walk(value: &mut Value, schema: &JSONSchemaProps, root: bool) {
    if schema.x_kubernetes_preserve_unknown_fields == Some(true) && schema.properties.is_none() {
        return;
    }
    match value {
        Value::Object(map) => {
            if let Some(properties) = &schema.properties {
                let keep_unknown = schema.x_kubernetes_preserve_unknown_fields == Some(true);
                map.retain(|k, _| {
                    keep_unknown
                        || properties.contains_key(k)
                        || (root && matches!(k.as_str(), "apiVersion" | "kind" | "metadata"))
                });
                for (name, sub) in properties {
                    if !map.contains_key(name)
                        && let Some(default) = &sub.default
                    {
                        map.insert(name.clone(), default.0.clone());
                    }
                    if let Some(v) = map.get_mut(name)
                        && !(root && name == "metadata")
                    {
                        walk(v, sub, false);
                    }
                }
            } else if let Some(JSONSchemaPropsOrBool::Schema(sub)) = &schema.additional_properties {
                for v in map.values_mut() {
                    walk(v, sub, false);
                }
            } else if schema.additional_properties.is_none()
                && schema.type_.as_deref() == Some("object")
            {
                map.clear();
            }
        }
        Value::Array(items) => {
            if let Some(JSONSchemaPropsOrArray::Schema(sub)) = &schema.items {
                for v in items {
                    walk(v, sub, false);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use serde_json::json;

    fn rt() -> ResourceType {
        let crd = json!({"spec": {"group": "g.io", "names": {"kind": "T", "plural": "ts"},
            "scope": "Namespaced", "versions": [{"name": "v1", "served": true, "schema": {
            "openAPIV3Schema": {"type": "object", "properties": {"spec": {"type": "object",
                "required": ["size"],
                "properties": {"size": {"type": "integer", "maximum": 5},
                               "mode": {"type": "string", "default": "fast"},
                               "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}}}}}]}});
        crate::registry::from_crd(&crd).remove(0)
    }

    #[test]
    fn unknown_fields_are_pruned_or_rejected_and_defaults_applied() {
        let rt = rt();
        let mut obj = json!({"apiVersion": "g.io/v1", "kind": "T", "metadata": {"name": "a"},
            "spec": {"size": 1, "extra": true, "free": {"any": 1}}});
        admit(&rt, &mut obj.clone(), FieldValidation::Strict).unwrap_err();
        admit(&rt, &mut obj, FieldValidation::Ignore).unwrap();
        assert_eq!(obj["spec"], json!({"size": 1, "mode": "fast", "free": {"any": 1}}));
    }

    #[test]
    fn secret_string_data_is_folded_into_data() {
        let secrets = crate::registry::builtins().into_iter().find(|r| r.kind == "Secret").unwrap();
        let mut obj = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db"},
            "data": {"USER": "b2xk", "KEEP": "eA=="},
            "stringData": {"USER": "admin", "PASSWORD": "s3cret"}});
        admit(&secrets, &mut obj, FieldValidation::Strict).unwrap();
        assert_eq!(obj.get("stringData"), None);
        assert_eq!(
            obj["data"],
            json!({"USER": "YWRtaW4=", "PASSWORD": "czNjcmV0", "KEEP": "eA=="})
        );
    }

    #[test]
    fn schema_violations_are_invalid_and_name_the_field() {
        let mut obj = json!({"metadata": {"name": "a"}, "spec": {"size": 9}});
        let err = admit(&rt(), &mut obj, FieldValidation::Strict).unwrap_err();
        assert_eq!(err.code, 422);
        assert!(err.message.contains("spec.size"), "{}", err.message);
    }
}
