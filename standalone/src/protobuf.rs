//! Decoding of the Kubernetes protobuf encoding for the few built-in kinds `kubectl create`
//! sends that way (`kubectl create namespace|configmap|secret|serviceaccount`). Typed clients
//! send protobuf and do not fall back to JSON, so the server must read it; answers are JSON,
//! which those clients also accept. Other kinds get 415.
//!
//! Wire format: the magic `k8s\0`, then a `runtime.Unknown` message (1: typeMeta {1: apiVersion,
//! 2: kind}, 2: raw) whose `raw` is the object's own message. Fields not listed here (like
//! timestamps the server sets anyway) are skipped.

use base64::Engine;
use serde_json::{Map, Value, json};

use crate::error::{ApiError, ApiResult};

const MAGIC: &[u8] = b"k8s\0";

enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Other,
}

fn varint(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let mut out = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *buf.get(*pos)?;
        *pos += 1;
        out |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(out);
        }
    }
    None
}

/// The fields of one message, in order: (number, value).
fn fields(buf: &[u8]) -> Option<Vec<(u64, Field<'_>)>> {
    let mut pos = 0;
    let mut out = Vec::new();
    while pos < buf.len() {
        let tag = varint(buf, &mut pos)?;
        let field = match tag & 7 {
            0 => Field::Varint(varint(buf, &mut pos)?),
            1 => {
                pos = pos.checked_add(8)?;
                Field::Other
            }
            2 => {
                let len = usize::try_from(varint(buf, &mut pos)?).ok()?;
                let end = pos.checked_add(len)?;
                let bytes = buf.get(pos..end)?;
                pos = end;
                Field::Bytes(bytes)
            }
            5 => {
                pos = pos.checked_add(4)?;
                Field::Other
            }
            _ => return None,
        };
        out.push((tag >> 3, field));
    }
    (pos == buf.len()).then_some(out)
}

fn text(bytes: &[u8]) -> Value {
    Value::String(String::from_utf8_lossy(bytes).into_owned())
}

fn map_entry(bytes: &[u8], binary: bool) -> Option<(String, Value)> {
    let mut key = String::new();
    let mut value = json!("");
    for (n, f) in fields(bytes)? {
        match (n, f) {
            (1, Field::Bytes(b)) => key = String::from_utf8_lossy(b).into_owned(),
            (2, Field::Bytes(b)) if binary => {
                value = Value::String(base64::engine::general_purpose::STANDARD.encode(b));
            }
            (2, Field::Bytes(b)) => value = text(b),
            _ => {}
        }
    }
    Some((key, value))
}

fn insert_entry(
    target: &mut Map<String, Value>,
    field: &str,
    bytes: &[u8],
    binary: bool,
) -> Option<()> {
    let (k, v) = map_entry(bytes, binary)?;
    let slot = target.entry(field.to_owned()).or_insert_with(|| json!({}));
    slot.as_object_mut()?.insert(k, v);
    Some(())
}

fn push(target: &mut Map<String, Value>, field: &str, value: Value) -> Option<()> {
    target.entry(field.to_owned()).or_insert_with(|| json!([])).as_array_mut()?.push(value);
    Some(())
}

fn owner_reference(bytes: &[u8]) -> Option<Value> {
    let mut out = Map::new();
    for (n, f) in fields(bytes)? {
        let name = match n {
            1 => "kind",
            3 => "name",
            4 => "uid",
            5 => "apiVersion",
            6 => "controller",
            7 => "blockOwnerDeletion",
            _ => continue,
        };
        match f {
            Field::Bytes(b) => out.insert(name.into(), text(b)),
            Field::Varint(v) => out.insert(name.into(), Value::Bool(v != 0)),
            Field::Other => None,
        };
    }
    Some(Value::Object(out))
}

fn object_meta(bytes: &[u8]) -> Option<Value> {
    let mut out = Map::new();
    for (n, f) in fields(bytes)? {
        match (n, f) {
            (1, Field::Bytes(b)) => {
                out.insert("name".into(), text(b));
            }
            (2, Field::Bytes(b)) if !b.is_empty() => {
                out.insert("generateName".into(), text(b));
            }
            (3, Field::Bytes(b)) if !b.is_empty() => {
                out.insert("namespace".into(), text(b));
            }
            (6, Field::Bytes(b)) if !b.is_empty() => {
                out.insert("resourceVersion".into(), text(b));
            }
            (11, Field::Bytes(b)) => insert_entry(&mut out, "labels", b, false)?,
            (12, Field::Bytes(b)) => insert_entry(&mut out, "annotations", b, false)?,
            (13, Field::Bytes(b)) => push(&mut out, "ownerReferences", owner_reference(b)?)?,
            (14, Field::Bytes(b)) => push(&mut out, "finalizers", text(b))?,
            _ => {}
        }
    }
    Some(Value::Object(out))
}

fn local_reference(bytes: &[u8]) -> Option<Value> {
    let mut out = Map::new();
    for (n, f) in fields(bytes)? {
        if let (1, Field::Bytes(b)) = (n, f) {
            out.insert("name".into(), text(b));
        }
    }
    Some(Value::Object(out))
}

fn object(kind: &str, raw: &[u8]) -> Option<Value> {
    let mut out = Map::new();
    for (n, f) in fields(raw)? {
        match (kind, n, f) {
            (_, 1, Field::Bytes(b)) => {
                out.insert("metadata".into(), object_meta(b)?);
            }
            ("ConfigMap", 2, Field::Bytes(b)) => insert_entry(&mut out, "data", b, false)?,
            ("ConfigMap", 3, Field::Bytes(b)) => insert_entry(&mut out, "binaryData", b, true)?,
            ("ConfigMap", 4, Field::Varint(v)) | ("Secret", 5, Field::Varint(v)) => {
                out.insert("immutable".into(), Value::Bool(v != 0));
            }
            ("Secret", 2, Field::Bytes(b)) => insert_entry(&mut out, "data", b, true)?,
            ("Secret", 3, Field::Bytes(b)) if !b.is_empty() => {
                out.insert("type".into(), text(b));
            }
            ("Secret", 4, Field::Bytes(b)) => insert_entry(&mut out, "stringData", b, false)?,
            ("Namespace", 2, Field::Bytes(b)) => {
                let mut spec = Map::new();
                for (n, f) in fields(b)? {
                    if let (1, Field::Bytes(x)) = (n, f) {
                        push(&mut spec, "finalizers", text(x))?;
                    }
                }
                out.insert("spec".into(), Value::Object(spec));
            }
            ("ServiceAccount", 3, Field::Bytes(b)) => {
                push(&mut out, "imagePullSecrets", local_reference(b)?)?;
            }
            ("ServiceAccount", 4, Field::Varint(v)) => {
                out.insert("automountServiceAccountToken".into(), Value::Bool(v != 0));
            }
            _ => {}
        }
    }
    Some(Value::Object(out))
}

/// Decodes a protobuf request body into the JSON object it stands for.
pub(crate) fn decode(body: &[u8]) -> ApiResult<Value> {
    let unsupported = |why: &str| {
        ApiError::unsupported_media_type(format!(
            "{why}; send application/json (protobuf is only read for Namespace, ConfigMap, Secret and ServiceAccount)"
        ))
    };
    let rest = body
        .strip_prefix(MAGIC)
        .ok_or_else(|| unsupported("not a Kubernetes protobuf envelope"))?;
    let envelope = fields(rest).ok_or_else(|| unsupported("malformed protobuf"))?;
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), &[][..]);
    for (n, f) in envelope {
        match (n, f) {
            (1, Field::Bytes(type_meta)) => {
                for (m, g) in fields(type_meta).ok_or_else(|| unsupported("malformed protobuf"))? {
                    match (m, g) {
                        (1, Field::Bytes(b)) => {
                            api_version = String::from_utf8_lossy(b).into_owned()
                        }
                        (2, Field::Bytes(b)) => kind = String::from_utf8_lossy(b).into_owned(),
                        _ => {}
                    }
                }
            }
            (2, Field::Bytes(b)) => raw = b,
            _ => {}
        }
    }
    if !matches!(kind.as_str(), "Namespace" | "ConfigMap" | "Secret" | "ServiceAccount") {
        return Err(unsupported(&format!("cannot read {kind} as protobuf")));
    }
    let mut obj = object(&kind, raw).ok_or_else(|| unsupported("malformed protobuf"))?;
    obj["apiVersion"] = Value::String(api_version);
    obj["kind"] = Value::String(kind);
    Ok(obj)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn field(n: u64, bytes: &[u8]) -> Vec<u8> {
        let mut out = vec![u8::try_from(n << 3 | 2).unwrap(), u8::try_from(bytes.len()).unwrap()];
        out.extend_from_slice(bytes);
        out
    }

    #[test]
    fn configmap_envelope_decodes_to_json() {
        let meta =
            [field(1, b"c1"), field(11, &[field(1, b"app"), field(2, b"web")].concat())].concat();
        let raw = [field(1, &meta), field(2, &[field(1, b"a"), field(2, b"b")].concat())].concat();
        let type_meta = [field(1, b"v1"), field(2, b"ConfigMap")].concat();
        let body = [MAGIC.to_vec(), field(1, &type_meta), field(2, &raw)].concat();
        let obj = decode(&body).unwrap();
        assert_eq!(
            obj,
            json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "c1", "labels": {"app": "web"}}, "data": {"a": "b"}})
        );
        assert_eq!(decode(b"k8s\0\xff").unwrap_err().code, 415);
    }
}
