//! `Table` output (`Accept: application/json;as=Table;g=meta.k8s.io;v=v1`), which `kubectl get`
//! asks for: the NAME column, the type's printer columns, and AGE for built-ins.

use serde_json::{Value, json};

use crate::registry::{PrinterColumn, ResourceType};

/// `?includeObject=`: what each row carries besides its cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum IncludeObject {
    /// Only `metadata` (a `PartialObjectMetadata`), the API server's default.
    #[default]
    Metadata,
    /// The whole object.
    Object,
    /// Nothing.
    None,
}

fn columns(rt: &ResourceType) -> Vec<PrinterColumn> {
    // A type that places NAME itself (core events show it only with `-o wide`) gets no other.
    let mut out = Vec::new();
    if !rt.columns.iter().any(|c| c.name == "Name") {
        out.push(PrinterColumn {
            name: "Name".into(),
            type_: "string".into(),
            format: "name".into(),
            description: "Name must be unique within a namespace.".into(),
            priority: 0,
            json_path: ".metadata.name".into(),
        });
    }
    out.extend(rt.columns.iter().cloned());
    let has_date = rt.columns.iter().any(|c| c.type_ == "date")
        || rt.columns.iter().any(|c| c.json_path == ".metadata.creationTimestamp");
    if (!rt.custom || rt.columns.is_empty()) && !has_date {
        out.push(PrinterColumn {
            name: "Age".into(),
            type_: "date".into(),
            format: String::new(),
            description: "CreationTimestamp is a timestamp representing the server time when this object was created.".into(),
            priority: 0,
            json_path: ".metadata.creationTimestamp".into(),
        });
    }
    out
}

/// A `Table` of `items`.
pub(crate) fn table(
    rt: &ResourceType,
    items: &[Value],
    rv: &str,
    next: Option<&str>,
    include: IncludeObject,
) -> Value {
    let cols = columns(rt);
    let definitions: Vec<Value> = cols
        .iter()
        .map(|c| {
            let type_ = if c.type_ == "date" { "string" } else { c.type_.as_str() };
            json!({"name": c.name, "type": type_, "format": c.format, "description": c.description, "priority": c.priority})
        })
        .collect();
    let now = jiff::Timestamp::now();
    let rows: Vec<Value> = items
        .iter()
        .map(|item| {
            let cells: Vec<Value> = cols.iter().map(|c| cell(item, c, rt.custom, now)).collect();
            let mut row = json!({"cells": cells});
            match include {
                IncludeObject::Object => row["object"] = item.clone(),
                IncludeObject::Metadata => {
                    row["object"] = json!({
                        "kind": "PartialObjectMetadata",
                        "apiVersion": "meta.k8s.io/v1",
                        "metadata": item["metadata"],
                    });
                }
                IncludeObject::None => {}
            }
            row
        })
        .collect();
    let mut meta = json!({"resourceVersion": rv});
    if let Some(next) = next {
        meta["continue"] = json!(next);
    }
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": meta, "columnDefinitions": definitions, "rows": rows})
}

/// One cell. A missing value is `null` for custom resources (kubectl prints it blank, as for a
/// CRD on a real cluster) and `<none>` in the string columns of built-ins (as their printers do).
fn cell(item: &Value, column: &PrinterColumn, custom: bool, now: jiff::Timestamp) -> Value {
    let computed_value;
    let found = match column.json_path.strip_prefix('#') {
        Some(special) => {
            computed_value = computed(item, special);
            Some(&computed_value)
        }
        None => eval_path(item, &column.json_path),
    };
    let Some(value) = found.filter(|v| !v.is_null()) else {
        return if !custom && (column.type_ == "string" || column.type_ == "date") {
            json!("<none>")
        } else {
            Value::Null
        };
    };
    if column.type_ == "date" {
        return match value.as_str().and_then(|s| s.parse::<jiff::Timestamp>().ok()) {
            Some(t) => json!(human_duration(now.as_second() - t.as_second())),
            None => json!("<unknown>"),
        };
    }
    match value {
        Value::Array(_) | Value::Object(_) => json!(value.to_string()),
        other => other.clone(),
    }
}

fn computed(item: &Value, which: &str) -> Value {
    match which {
        "data" => {
            let count = |v: &Value| v.as_object().map_or(0, |m| m.len());
            json!(count(&item["data"]) + count(&item["binaryData"]) + count(&item["stringData"]))
        }
        "ready" => {
            let statuses = item["status"]["containerStatuses"].as_array();
            let total = item["spec"]["containers"].as_array().map_or(0, Vec::len);
            let ready = statuses
                .map_or(0, |s| s.iter().filter(|c| c["ready"].as_bool() == Some(true)).count());
            json!(format!("{ready}/{total}"))
        }
        "restarts" => {
            let statuses = item["status"]["containerStatuses"].as_array();
            json!(
                statuses.map_or(0, |s| s
                    .iter()
                    .filter_map(|c| c["restartCount"].as_i64())
                    .sum::<i64>())
            )
        }
        "ports" => {
            let ports: Vec<String> = item["spec"]["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| format!("{}/{}", p["port"], p["protocol"].as_str().unwrap_or("TCP")))
                .collect();
            json!(if ports.is_empty() { "<none>".to_owned() } else { ports.join(",") })
        }
        "lastseen" => {
            let candidates = [
                &item["lastTimestamp"],
                &item["series"]["lastObservedTime"],
                &item["eventTime"],
                &item["metadata"]["creationTimestamp"],
            ];
            candidates.into_iter().find(|v| v.is_string()).cloned().unwrap_or(Value::Null)
        }
        "involved" => {
            let o = &item["involvedObject"];
            json!(format!(
                "{}/{}",
                o["kind"].as_str().unwrap_or_default().to_lowercase(),
                o["name"].as_str().unwrap_or_default()
            ))
        }
        _ => Value::Null,
    }
}

/// Evaluates the JSONPath subset printer columns use: `.a.b`, `[0]`, `['x.y']` and
/// `[?(@.type=="Ready")]` filters (first match).
pub(crate) fn eval_path<'a>(root: &'a Value, path: &str) -> Option<&'a Value> {
    let path = path.trim().trim_start_matches('{').trim_end_matches('}').trim_start_matches('$');
    let mut node = root;
    let mut rest = path;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('.') {
            let end = after.find(['.', '[']).unwrap_or(after.len());
            node = node.get(&after[..end])?;
            rest = &after[end..];
        } else if let Some(after) = rest.strip_prefix('[') {
            let end = after.find(']')?;
            let inner = &after[..end];
            rest = &after[end + 1..];
            if let Some(filter) = inner.strip_prefix("?(@.").and_then(|f| f.strip_suffix(')')) {
                let (field, want) = filter.split_once("==")?;
                let want = want.trim().trim_matches(['"', '\'']);
                node = node.as_array()?.iter().find(|item| {
                    eval_path(item, &format!(".{}", field.trim())).and_then(Value::as_str)
                        == Some(want)
                })?;
            } else if let Ok(index) = inner.parse::<usize>() {
                node = node.get(index)?;
            } else {
                node = node.get(inner.trim_matches(['"', '\'']))?;
            }
        } else {
            return None;
        }
    }
    Some(node)
}

/// Kubernetes' short human durations: `45s`, `3m12s`, `5h`, `2d3h`, `1y30d`.
pub(crate) fn human_duration(seconds: i64) -> String {
    if seconds < -1 {
        return "<invalid>".into();
    }
    let s = seconds.max(0);
    let (m, h, d) = (s / 60, s / 3600, s / 86400);
    if s < 120 {
        format!("{s}s")
    } else if m < 10 {
        if s % 60 == 0 { format!("{m}m") } else { format!("{m}m{}s", s % 60) }
    } else if m < 180 {
        format!("{m}m")
    } else if h < 8 {
        if m % 60 == 0 { format!("{h}h") } else { format!("{h}h{}m", m % 60) }
    } else if h < 48 {
        format!("{h}h")
    } else if h < 192 {
        if h % 24 == 0 { format!("{d}d") } else { format!("{d}d{}h", h % 24) }
    } else if d < 730 {
        format!("{d}d")
    } else if d < 365 * 8 {
        let y = d / 365;
        if d % 365 == 0 { format!("{y}y") } else { format!("{y}y{}d", d % 365) }
    } else {
        format!("{}y", d / 365)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn durations_read_like_kubectl() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(190), "3m10s");
        assert_eq!(human_duration(3600 * 5 + 60), "5h1m");
        assert_eq!(human_duration(86400 * 3), "3d");
    }

    #[test]
    fn json_paths_with_filters_resolve() {
        let v = json!({"status": {"conditions": [{"type": "A", "status": "False"}, {"type": "Ready", "status": "True"}]}});
        assert_eq!(
            eval_path(&v, ".status.conditions[?(@.type==\"Ready\")].status"),
            Some(&json!("True"))
        );
        assert_eq!(eval_path(&v, ".status.conditions[0].type"), Some(&json!("A")));
        assert_eq!(eval_path(&v, ".status.missing"), None);
    }
}
