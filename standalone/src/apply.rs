//! Server-side apply and `metadata.managedFields`, simplified.
//!
//! A field set is the set of leaf paths of an object: scalars, lists and empty maps are leaves,
//! so every list is owned as a whole (a real API server tracks items of keyed lists one by one).
//! Field sets are stored as `FieldsV1` (`{"f:spec": {"f:runtime": {}}}`).
//!
//! Apply by manager M with configuration C:
//! - a conflict is a field in C that another manager owns (exactly, or as a parent or child
//!   path) whose live value differs from C's; conflicts fail with 409 unless `force=true`, which
//!   moves ownership to M;
//! - fields M applied before but left out of C are removed, unless another manager owns them;
//! - C is merged into the live object (maps recursively, lists and scalars replaced).
//!
//! Every other write records its changed fields under the writer's manager with operation
//! `Update` and takes them away from other managers (updates never conflict).

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

type Path = Vec<String>;

/// Which part of an object a write may touch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    /// The main resource; `status` excluded when the status subresource is enabled.
    Main {
        /// Whether `status` is left out.
        without_status: bool,
    },
    /// The status subresource: only `status`.
    Status,
}

impl Scope {
    fn admits(self, path: &[String]) -> bool {
        let first = path.first().map(String::as_str);
        let system = matches!(
            (first, path.get(1).map(String::as_str)),
            (Some("apiVersion" | "kind"), _)
                | (
                    Some("metadata"),
                    Some(
                        "name"
                            | "namespace"
                            | "uid"
                            | "resourceVersion"
                            | "generation"
                            | "creationTimestamp"
                            | "deletionTimestamp"
                            | "managedFields"
                            | "selfLink"
                            | "deletionGracePeriodSeconds"
                    )
                )
        );
        if system {
            return false;
        }
        match self {
            Self::Main { without_status } => !(without_status && first == Some("status")),
            Self::Status => first == Some("status"),
        }
    }

    fn subresource(self) -> Option<&'static str> {
        match self {
            Self::Main { .. } => None,
            Self::Status => Some("status"),
        }
    }
}

#[derive(Debug, Clone)]
struct Entry {
    manager: String,
    operation: String,
    api_version: String,
    time: String,
    subresource: Option<String>,
    fields: BTreeSet<Path>,
}

fn leaves(value: &Value, prefix: &mut Path, scope: Scope, out: &mut BTreeSet<Path>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                prefix.push(k.clone());
                leaves(v, prefix, scope, out);
                prefix.pop();
            }
        }
        _ if !prefix.is_empty() && scope.admits(prefix) => {
            out.insert(prefix.clone());
        }
        _ => {}
    }
}

fn field_set(value: &Value, scope: Scope) -> BTreeSet<Path> {
    let mut out = BTreeSet::new();
    leaves(value, &mut Vec::new(), scope, &mut out);
    out
}

fn get<'a>(value: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(value, |node, seg| node.as_object()?.get(seg))
}

fn remove(value: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else { return };
    let mut node = value;
    for seg in parents {
        match node.as_object_mut().and_then(|m| m.get_mut(seg)) {
            Some(next) => node = next,
            None => return,
        }
    }
    if let Some(map) = node.as_object_mut() {
        map.remove(last);
    }
}

fn overlaps(a: &[String], b: &[String]) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

fn to_fields_v1(set: &BTreeSet<Path>) -> Value {
    let mut root = Map::new();
    for path in set {
        let mut node = &mut root;
        for seg in path {
            let slot = node.entry(format!("f:{seg}")).or_insert_with(|| Value::Object(Map::new()));
            let Value::Object(next) = slot else { break };
            node = next;
        }
    }
    Value::Object(root)
}

fn from_fields_v1(value: &Value, prefix: &mut Path, out: &mut BTreeSet<Path>) {
    let children: Vec<(&String, &Value)> = value
        .as_object()
        .map(|m| m.iter().filter(|(k, _)| k.starts_with("f:")).collect())
        .unwrap_or_default();
    // A node without `f:` children is a leaf; `k:`/`v:`/`i:` list items collapse to their list.
    if children.is_empty() {
        if !prefix.is_empty() {
            out.insert(prefix.clone());
        }
        return;
    }
    for (k, v) in children {
        prefix.push(k[2..].to_owned());
        from_fields_v1(v, prefix, out);
        prefix.pop();
    }
}

fn read_entries(object: &Value) -> Vec<Entry> {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    object["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let mut fields = BTreeSet::new();
            from_fields_v1(&e["fieldsV1"], &mut Vec::new(), &mut fields);
            Entry {
                manager: text(&e["manager"]),
                operation: text(&e["operation"]),
                api_version: text(&e["apiVersion"]),
                time: text(&e["time"]),
                subresource: e["subresource"].as_str().map(str::to_owned),
                fields,
            }
        })
        .collect()
}

fn write_entries(object: &mut Value, entries: &[Entry]) {
    let list: Vec<Value> = entries
        .iter()
        .filter(|e| !e.fields.is_empty())
        .map(|e| {
            let mut v = json!({
                "manager": e.manager,
                "operation": e.operation,
                "apiVersion": e.api_version,
                "time": e.time,
                "fieldsType": "FieldsV1",
                "fieldsV1": to_fields_v1(&e.fields),
            });
            if let Some(sub) = &e.subresource {
                v["subresource"] = Value::String(sub.clone());
            }
            v
        })
        .collect();
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        if list.is_empty() {
            meta.remove("managedFields");
        } else {
            meta.insert("managedFields".into(), Value::Array(list));
        }
    }
}

fn entry_mut<'a>(
    entries: &'a mut Vec<Entry>,
    manager: &str,
    operation: &str,
    scope: Scope,
    api_version: &str,
    now: &str,
) -> &'a mut Entry {
    let sub = scope.subresource();
    let found = entries.iter().position(|e| {
        e.manager == manager && e.operation == operation && e.subresource.as_deref() == sub
    });
    let index = match found {
        Some(i) => i,
        None => {
            entries.push(Entry {
                manager: manager.to_owned(),
                operation: operation.to_owned(),
                api_version: api_version.to_owned(),
                time: String::new(),
                subresource: sub.map(str::to_owned),
                fields: BTreeSet::new(),
            });
            entries.len() - 1
        }
    };
    let entry = &mut entries[index];
    entry.time = now.to_owned();
    entry.api_version = api_version.to_owned();
    entry
}

fn deep_merge(target: &mut Value, patch: &Value, path: &mut Path, scope: Scope) {
    match (target, patch) {
        (Value::Object(live), Value::Object(applied)) => {
            for (k, v) in applied {
                path.push(k.clone());
                let admitted = scope.admits(path) || v.is_object();
                if admitted {
                    match live.get_mut(k) {
                        Some(slot) if slot.is_object() && v.is_object() => {
                            deep_merge(slot, v, path, scope);
                        }
                        _ if v.is_object() => {
                            let mut fresh = Value::Object(Map::new());
                            deep_merge(&mut fresh, v, path, scope);
                            if fresh.as_object().is_some_and(|m| !m.is_empty())
                                || scope.admits(path)
                            {
                                live.insert(k.clone(), fresh);
                            }
                        }
                        _ => {
                            live.insert(k.clone(), v.clone());
                        }
                    }
                }
                path.pop();
            }
        }
        (target, patch) => *target = patch.clone(),
    }
}

/// A field another manager owns with a different value.
#[derive(Debug, Clone)]
pub(crate) struct Conflict {
    /// The other manager.
    pub(crate) manager: String,
    /// The field, like `.spec.runtime`.
    pub(crate) field: String,
}

/// Applies `config` on behalf of `manager` onto `live` (or onto nothing, for a create).
/// Returns the new object with its `managedFields`, or the conflicts.
pub(crate) fn apply(
    live: Option<&Value>,
    config: &Value,
    manager: &str,
    force: bool,
    scope: Scope,
    now: &str,
) -> Result<Value, Vec<Conflict>> {
    let api_version = config["apiVersion"].as_str().unwrap_or_default();
    let wanted = field_set(config, scope);
    let mut entries = live.map(read_entries).unwrap_or_default();
    let mut conflicts = Vec::new();
    let empty = Value::Null;
    let live_value = live.unwrap_or(&empty);
    for entry in &mut entries {
        if entry.manager == manager && entry.operation == "Apply" {
            continue;
        }
        let mut lost = Vec::new();
        for owned in &entry.fields {
            for field in wanted.iter().filter(|f| overlaps(f, owned)) {
                let shorter = if field.len() <= owned.len() { field } else { owned };
                if get(live_value, shorter) != get(config, shorter) {
                    conflicts.push(Conflict {
                        manager: entry.manager.clone(),
                        field: format!(".{}", shorter.join(".")),
                    });
                    lost.push(owned.clone());
                }
            }
        }
        if force {
            for path in lost {
                entry.fields.remove(&path);
            }
        }
    }
    if !conflicts.is_empty() && !force {
        return Err(conflicts);
    }

    let mut out = live.cloned().unwrap_or_else(|| json!({"metadata": {}}));
    let previous = entries
        .iter()
        .find(|e| {
            e.manager == manager
                && e.operation == "Apply"
                && e.subresource.as_deref() == scope.subresource()
        })
        .map(|e| e.fields.clone())
        .unwrap_or_default();
    for path in previous.difference(&wanted) {
        let shared = entries.iter().any(|e| {
            !(e.manager == manager && e.operation == "Apply")
                && e.fields.iter().any(|f| overlaps(f, path))
        });
        if !shared {
            remove(&mut out, path);
        }
    }
    deep_merge(&mut out, config, &mut Vec::new(), scope);
    for key in ["apiVersion", "kind"] {
        if let (Some(v), Some(map)) = (config.get(key), out.as_object_mut()) {
            map.insert(key.to_owned(), v.clone());
        }
    }
    entry_mut(&mut entries, manager, "Apply", scope, api_version, now).fields = wanted;
    write_entries(&mut out, &entries);
    Ok(out)
}

/// Records a non-apply write by `manager`: the fields that differ between `old` and `new` move
/// to `manager`'s `Update` entry. `new` gets `old`'s entries plus that change.
pub(crate) fn track_update(
    old: Option<&Value>,
    new: &mut Value,
    manager: &str,
    scope: Scope,
    now: &str,
) {
    let mut entries = old.map(read_entries).unwrap_or_default();
    let empty = Value::Null;
    let before = old.map(|o| field_set(o, scope)).unwrap_or_default();
    let after = field_set(new, scope);
    let old_value = old.unwrap_or(&empty);
    let changed: BTreeSet<Path> =
        after.iter().filter(|p| get(old_value, p) != get(new, p)).cloned().collect();
    let removed: BTreeSet<Path> = before.difference(&after).cloned().collect();
    if changed.is_empty() && removed.is_empty() {
        write_entries(new, &entries);
        return;
    }
    for entry in &mut entries {
        entry.fields.retain(|f| !changed.iter().chain(removed.iter()).any(|c| overlaps(c, f)));
    }
    let api_version = new["apiVersion"].as_str().unwrap_or_default().to_owned();
    let entry = entry_mut(&mut entries, manager, "Update", scope, &api_version, now);
    entry.fields.extend(changed);
    write_entries(new, &entries);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    const MAIN: Scope = Scope::Main { without_status: true };

    #[test]
    fn reapply_removes_fields_the_manager_dropped_and_keeps_others() {
        let first = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c",
            "labels": {"a": "1", "b": "2"}}, "data": {"x": "1", "y": "2"}});
        let live = apply(None, &first, "me", false, MAIN, "t").unwrap();
        let mut edited = live.clone();
        edited["data"]["z"] = json!("3");
        track_update(Some(&live), &mut edited, "kubectl-edit", MAIN, "t");
        let second = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c",
            "labels": {"a": "1"}}, "data": {"x": "9"}});
        let out = apply(Some(&edited), &second, "me", false, MAIN, "t").unwrap();
        assert_eq!(out["data"], json!({"x": "9", "z": "3"}));
        assert_eq!(out["metadata"]["labels"], json!({"a": "1"}));
        let managers: Vec<&str> = out["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["manager"].as_str().unwrap())
            .collect();
        assert_eq!(managers, vec!["me", "kubectl-edit"]);
    }

    #[test]
    fn apply_over_another_managers_value_conflicts_unless_forced() {
        let config = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"},
            "data": {"x": "1"}});
        let live = apply(None, &config, "a", false, MAIN, "t").unwrap();
        let other = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"},
            "data": {"x": "2"}});
        let conflicts = apply(Some(&live), &other, "b", false, MAIN, "t").unwrap_err();
        assert_eq!(conflicts[0].manager, "a");
        assert_eq!(conflicts[0].field, ".data.x");
        // Same value: shared ownership, no conflict.
        assert!(apply(Some(&live), &config, "b", false, MAIN, "t").is_ok());
        let forced = apply(Some(&live), &other, "b", true, MAIN, "t").unwrap();
        assert_eq!(forced["data"]["x"], "2");
    }

    #[test]
    fn status_is_left_out_of_main_resource_applies() {
        let config = json!({"apiVersion": "v1", "kind": "X", "metadata": {"name": "c"},
            "spec": {"a": 1}, "status": {"phase": "Ready"}});
        let out = apply(None, &config, "a", false, MAIN, "t").unwrap();
        assert!(out.get("status").is_none());
        assert_eq!(out["spec"]["a"], 1);
    }
}
