//! The patch types of `PATCH` requests other than server-side apply: JSON patch (RFC 6902),
//! JSON merge patch (RFC 7386) and a simplified strategic merge patch.
//!
//! Strategic merge, as done here: maps merge like a merge patch; `null` deletes; lists of
//! objects merge by a merge key chosen by field name (`containers`, `initContainers`,
//! `volumes`, `env`, `imagePullSecrets` by `name`; `volumeMounts` by `mountPath`; `ports` by
//! `containerPort` or `port`; `conditions` by `type`; `ownerReferences` by `uid`); `finalizers`
//! merges as a set; every other list is replaced. The directives `$patch: replace|delete`,
//! `$retainKeys` and `$deleteFromPrimitiveList/<field>` are honoured; `$setElementOrder/<field>`
//! is accepted and ignored (merged lists keep the live order, new items go last).

use serde_json::{Map, Value};

use crate::error::{ApiError, ApiResult};

/// Content types of `PATCH`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PatchType {
    /// `application/json-patch+json`.
    Json,
    /// `application/merge-patch+json`.
    Merge,
    /// `application/strategic-merge-patch+json`.
    Strategic,
    /// `application/apply-patch+yaml` (server-side apply).
    Apply,
}

impl PatchType {
    /// The patch type of a `Content-Type`.
    pub(crate) fn from_content_type(content_type: &str) -> Option<Self> {
        let base = content_type.split(';').next().unwrap_or_default().trim();
        match base {
            "application/json-patch+json" => Some(Self::Json),
            "application/merge-patch+json" => Some(Self::Merge),
            "application/strategic-merge-patch+json" => Some(Self::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+json" => Some(Self::Apply),
            _ => None,
        }
    }
}

/// Applies an RFC 6902 patch.
///
/// Like the Kubernetes API server, a `test` for `null` passes when the path does not exist:
/// clients (kube-runtime's finalizer helper among them) test that a list is absent that way
/// before adding it.
pub(crate) fn json_patch(target: &Value, patch: &Value) -> ApiResult<Value> {
    let mut patch: json_patch::Patch = serde_json::from_value(patch.clone())
        .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?;
    patch.0.retain(|op| match op {
        json_patch::PatchOperation::Test(test) => {
            !(test.value.is_null() && target.pointer(test.path.as_str()).is_none())
        }
        _ => true,
    });
    let mut out = target.clone();
    json_patch::patch(&mut out, &patch).map_err(|e| {
        let mut err = ApiError::bad_request(format!(
            "the server rejected our request due to an error in our request: {e}"
        ));
        err.code = 422;
        err.reason = "Invalid";
        err
    })?;
    Ok(out)
}

/// Applies an RFC 7386 merge patch.
pub(crate) fn merge_patch(target: &Value, patch: &Value) -> ApiResult<Value> {
    if !patch.is_object() {
        return Err(ApiError::bad_request("a merge patch must be a JSON object"));
    }
    let mut out = target.clone();
    json_patch::merge(&mut out, patch);
    Ok(out)
}

/// Applies a strategic merge patch (simplified; see the module docs).
pub(crate) fn strategic_merge_patch(target: &Value, patch: &Value) -> ApiResult<Value> {
    let Value::Object(patch) = patch else {
        return Err(ApiError::bad_request("a strategic merge patch must be a JSON object"));
    };
    let mut out = target.clone();
    merge_map(&mut out, patch);
    Ok(out)
}

fn merge_key(field: &str, item: &Map<String, Value>) -> Option<&'static str> {
    match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "volumes"
        | "env"
        | "imagePullSecrets" => Some("name"),
        "volumeMounts" | "volumeDevices" => Some("mountPath"),
        "ports" if item.contains_key("containerPort") => Some("containerPort"),
        "ports" => Some("port"),
        "conditions" => Some("type"),
        "ownerReferences" => Some("uid"),
        _ => None,
    }
}

/// A patch value with its directives removed, to be stored as-is.
fn clean(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), clean(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(clean).collect()),
        other => other.clone(),
    }
}

fn merge_map(target: &mut Value, patch: &Map<String, Value>) {
    match patch.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            *target = clean(&Value::Object(patch.clone()));
            return;
        }
        Some("delete") => {
            *target = Value::Null;
            return;
        }
        _ => {}
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(map) = target else { return };
    if let Some(Value::Array(keep)) = patch.get("$retainKeys") {
        map.retain(|k, _| keep.iter().any(|x| x.as_str() == Some(k)) || patch.contains_key(k));
    }
    for (key, value) in patch {
        if let Some(field) = key.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(list)), Value::Array(gone)) = (map.get_mut(field), value) {
                list.retain(|x| !gone.contains(x));
            }
            continue;
        }
        if key.starts_with('$') {
            continue;
        }
        match value {
            Value::Null => {
                map.remove(key);
            }
            Value::Object(sub) => {
                let slot = map.entry(key.clone()).or_insert(Value::Null);
                merge_map(slot, sub);
                if slot.is_null() {
                    map.remove(key);
                }
            }
            Value::Array(items) => {
                let merged = match map.get_mut(key) {
                    Some(Value::Array(live)) => merge_list(key, live, items),
                    _ => false,
                };
                if !merged {
                    let items = items
                        .iter()
                        .filter(|i| i.get("$patch").and_then(Value::as_str) != Some("delete"))
                        .map(clean)
                        .collect();
                    map.insert(key.clone(), Value::Array(items));
                }
            }
            scalar => {
                map.insert(key.clone(), scalar.clone());
            }
        }
    }
}

/// Merges `items` into `live` when the field has merge semantics; `false` means "replace".
fn merge_list(field: &str, live: &mut Vec<Value>, items: &[Value]) -> bool {
    if field == "finalizers" {
        for item in items {
            if !live.contains(item) {
                live.push(item.clone());
            }
        }
        return true;
    }
    let Some(Value::Object(first)) = items.first() else { return false };
    let Some(key) = merge_key(field, first) else { return false };
    for item in items {
        let Value::Object(item_map) = item else { return false };
        let Some(id) = item_map.get(key) else { return false };
        let position = live.iter().position(|l| l.get(key) == Some(id));
        let delete = item_map.get("$patch").and_then(Value::as_str) == Some("delete");
        match (position, delete) {
            (Some(i), true) => {
                live.remove(i);
            }
            (None, true) => {}
            (Some(i), false) => {
                if let Some(slot) = live.get_mut(i) {
                    merge_map(slot, item_map);
                }
            }
            (None, false) => live.push(clean(item)),
        }
    }
    true
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn strategic_merge_merges_containers_by_name_and_finalizers_as_a_set() {
        let live = json!({
            "metadata": {"finalizers": ["a"], "labels": {"x": "1", "y": "2"}},
            "spec": {"containers": [{"name": "app", "image": "v1"}, {"name": "side", "image": "s"}],
                     "args": ["1", "2"]}
        });
        let patch = json!({
            "metadata": {"finalizers": ["b"], "labels": {"y": null}},
            "spec": {"containers": [{"name": "app", "image": "v2"}, {"name": "side", "$patch": "delete"},
                                    {"name": "new", "image": "n"}],
                     "args": ["3"]},
            "$setElementOrder/spec": []
        });
        let out = strategic_merge_patch(&live, &patch).unwrap();
        assert_eq!(out["metadata"]["finalizers"], json!(["a", "b"]));
        assert_eq!(out["metadata"]["labels"], json!({"x": "1"}));
        assert_eq!(
            out["spec"]["containers"],
            json!([{"name": "app", "image": "v2"}, {"name": "new", "image": "n"}])
        );
        assert_eq!(out["spec"]["args"], json!(["3"]));
        let removed = strategic_merge_patch(
            &out,
            &json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}}),
        )
        .unwrap();
        assert_eq!(removed["metadata"]["finalizers"], json!(["b"]));
    }

    #[test]
    fn a_test_for_null_passes_on_a_missing_path_as_in_kubernetes() {
        let patch = json!([
            {"op": "test", "path": "/metadata/finalizers", "value": null},
            {"op": "add", "path": "/metadata/finalizers", "value": ["f"]}
        ]);
        let out = json_patch(&json!({"metadata": {}}), &patch).unwrap();
        assert_eq!(out["metadata"]["finalizers"], json!(["f"]));
        // A test for null still fails when the path holds something.
        let held = json!({"metadata": {"finalizers": ["g"]}});
        assert_eq!(json_patch(&held, &patch).unwrap_err().code, 422);
    }

    #[test]
    fn json_patch_failure_is_invalid() {
        let err = json_patch(&json!({}), &json!([{"op": "remove", "path": "/nope"}])).unwrap_err();
        assert_eq!(err.code, 422);
        assert!(json_patch(&json!({}), &json!({"op": "add"})).is_err());
    }
}
