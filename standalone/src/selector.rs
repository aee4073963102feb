//! Label and field selectors, in the syntax of `?labelSelector=` and `?fieldSelector=`.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::error::{ApiError, ApiResult};

#[derive(Debug, Clone, PartialEq)]
enum Op {
    Exists,
    NotExists,
    Eq(String),
    NotEq(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    Gt(i64),
    Lt(i64),
}

/// A parsed label selector: every requirement must hold.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct LabelSelector(Vec<(String, Op)>);

impl LabelSelector {
    /// Parses `app=web,tier!=db,env in (a,b),!legacy,release`.
    pub(crate) fn parse(text: &str) -> ApiResult<Self> {
        let mut out = Vec::new();
        for part in split_top_level(text) {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            out.push(parse_requirement(part).ok_or_else(|| {
                ApiError::bad_request(format!("unable to parse requirement: {part:?}"))
            })?);
        }
        Ok(Self(out))
    }

    /// Whether `labels` satisfy every requirement.
    pub(crate) fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|(key, op)| {
            let value = labels.get(key);
            match op {
                Op::Exists => value.is_some(),
                Op::NotExists => value.is_none(),
                Op::Eq(v) => value == Some(v),
                Op::NotEq(v) => value != Some(v),
                Op::In(vs) => value.is_some_and(|x| vs.contains(x)),
                Op::NotIn(vs) => value.is_none_or(|x| !vs.contains(x)),
                Op::Gt(n) => value.and_then(|x| x.parse::<i64>().ok()).is_some_and(|x| x > *n),
                Op::Lt(n) => value.and_then(|x| x.parse::<i64>().ok()).is_some_and(|x| x < *n),
            }
        })
    }

    /// Whether `object`'s `metadata.labels` satisfy the selector.
    pub(crate) fn matches_object(&self, object: &Value) -> bool {
        self.0.is_empty() || self.matches(&labels_of(object))
    }
}

/// `metadata.labels` of an object as a map.
pub(crate) fn labels_of(object: &Value) -> BTreeMap<String, String> {
    object["metadata"]["labels"]
        .as_object()
        .map(|m| {
            m.iter().filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned()))).collect()
        })
        .unwrap_or_default()
}

/// Splits on commas that are not inside parentheses.
fn split_top_level(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                out.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&text[start..]);
    out
}

fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 317
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b))
}

fn parse_set(text: &str) -> Option<Vec<String>> {
    let inner = text.trim().strip_prefix('(')?.strip_suffix(')')?;
    Some(inner.split(',').map(|v| v.trim().to_owned()).filter(|v| !v.is_empty()).collect())
}

fn parse_requirement(part: &str) -> Option<(String, Op)> {
    if let Some(key) = part.strip_prefix('!') {
        let key = key.trim();
        return valid_key(key).then(|| (key.to_owned(), Op::NotExists));
    }
    for (word, is_in) in [(" notin ", false), (" in ", true)] {
        if let Some((key, set)) = part.split_once(word) {
            let key = key.trim();
            let set = parse_set(set)?;
            if !valid_key(key) {
                return None;
            }
            return Some((key.to_owned(), if is_in { Op::In(set) } else { Op::NotIn(set) }));
        }
    }
    type MakeOp = fn(&str) -> Option<Op>;
    let ops: [(&str, MakeOp); 5] = [
        ("!=", |v| Some(Op::NotEq(v.to_owned()))),
        ("==", |v| Some(Op::Eq(v.to_owned()))),
        ("=", |v| Some(Op::Eq(v.to_owned()))),
        (">", |v| v.parse().ok().map(Op::Gt)),
        ("<", |v| v.parse().ok().map(Op::Lt)),
    ];
    for (sym, make) in ops {
        if let Some((key, value)) = part.split_once(sym) {
            let key = key.trim();
            if !valid_key(key) {
                return None;
            }
            return make(value.trim()).map(|op| (key.to_owned(), op));
        }
    }
    valid_key(part).then(|| (part.to_owned(), Op::Exists))
}

/// A parsed field selector: `metadata.name=x,metadata.namespace!=y`. Any dotted path of the
/// object may be used (a real API server allows only a few per kind).
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct FieldSelector(Vec<(String, bool, String)>);

impl FieldSelector {
    /// Parses the selector; `==` and `=` mean equal, `!=` not equal.
    pub(crate) fn parse(text: &str) -> ApiResult<Self> {
        let mut out = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (path, equal, value) = if let Some((p, v)) = part.split_once("!=") {
                (p, false, v)
            } else if let Some((p, v)) = part.split_once("==") {
                (p, true, v)
            } else if let Some((p, v)) = part.split_once('=') {
                (p, true, v)
            } else {
                return Err(ApiError::bad_request(format!("invalid field selector: {part:?}")));
            };
            out.push((path.trim().to_owned(), equal, value.trim().to_owned()));
        }
        Ok(Self(out))
    }

    /// Whether the object satisfies every requirement.
    pub(crate) fn matches(&self, object: &Value) -> bool {
        self.0.iter().all(|(path, equal, value)| {
            let mut node = object;
            for part in path.split('.') {
                node = &node[part];
            }
            let actual = match node {
                Value::Null => String::new(),
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (actual == *value) == *equal
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn label_selector_supports_every_operator() {
        let l = labels(&[("app", "web"), ("tier", "front"), ("n", "5")]);
        let yes = [
            "app=web",
            "app==web",
            "tier!=db",
            "app in (web, api)",
            "tier notin (db)",
            "app",
            "!legacy",
            "n>3",
            "n<9",
            "app=web,tier in (front),!x",
            "",
        ];
        let no = [
            "app=api",
            "tier!=front",
            "app in (api)",
            "tier notin (front,db)",
            "legacy",
            "!app",
            "n>5",
            "app=web,legacy",
        ];
        for s in yes {
            assert!(LabelSelector::parse(s).unwrap().matches(&l), "{s}");
        }
        for s in no {
            assert!(!LabelSelector::parse(s).unwrap().matches(&l), "{s}");
        }
        assert!(LabelSelector::parse("a in b").is_err());
        assert!(LabelSelector::parse("=x").is_err());
    }

    #[test]
    fn field_selector_matches_metadata_fields() {
        let obj = serde_json::json!({"metadata": {"name": "a", "namespace": "ns"}});
        assert!(
            FieldSelector::parse("metadata.name=a,metadata.namespace!=x").unwrap().matches(&obj)
        );
        assert!(!FieldSelector::parse("metadata.name==b").unwrap().matches(&obj));
        assert!(FieldSelector::parse("nonsense").is_err());
    }
}
