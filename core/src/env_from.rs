//! `envFrom`: environment variables taken from every key of a ConfigMap or a Secret.
//!
//! Kubernetes resolves a pod's `envFrom` in the kubelet. Two places here stand in for it: the
//! standalone node agent, which runs runtime pods as `runc` containers, and the executor's local
//! backend, which runs instances with no pod at all. Both read the objects through the API
//! server and merge them with the rules of the kubelet:
//!
//! - sources apply in order, a later one overriding an earlier one on the same name, and the
//!   function's own `env` overrides them all (the caller applies it last);
//! - each key gets the source's prefix; a result that is not a valid variable name is skipped
//!   and reported, not an error (a kubelet records an event and starts the container);
//! - names starting with `KUBEFAAS_` belong to the platform and are skipped the same way;
//! - a missing object is an error unless the source is optional, and so is a Secret value that
//!   is not UTF-8 text (an environment variable cannot hold it faithfully).

use std::{collections::BTreeMap, fmt};

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::{Api, Client};

use crate::{resources::EnvFromSource, validation::RESERVED_ENV_PREFIX};

/// The kind of object a source reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceKind {
    /// A ConfigMap: `data` and `binaryData` keys.
    ConfigMap,
    /// A Secret: `data` keys.
    Secret,
}

impl fmt::Display for SourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::ConfigMap => "configmap",
            Self::Secret => "secret",
        })
    }
}

/// One `envFrom` entry, whichever resource it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvSource {
    /// What is read.
    pub kind: SourceKind,
    /// Its name, in the namespace being resolved.
    pub name: String,
    /// Put before every key.
    pub prefix: String,
    /// Whether a missing object contributes nothing instead of failing.
    pub optional: bool,
}

impl EnvSource {
    /// The source of a Function's `spec.envFrom[]` entry; `None` for an entry that names no
    /// object (validation refuses those).
    pub fn of_function(source: &EnvFromSource) -> Option<Self> {
        let (kind, name) = match (&source.config_map_ref, &source.secret_ref) {
            (Some(r), None) => (SourceKind::ConfigMap, r.name.clone()),
            (None, Some(r)) => (SourceKind::Secret, r.name.clone()),
            _ => return None,
        };
        Some(Self {
            kind,
            name,
            prefix: source.prefix.clone().unwrap_or_default(),
            optional: false,
        })
    }
}

/// Why the variables could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum EnvFromError {
    /// A source that is not optional names an object that does not exist.
    #[error("{kind} {name:?} not found")]
    NotFound {
        /// Kind of the object.
        kind: SourceKind,
        /// Its name.
        name: String,
    },
    /// Reading the object failed.
    #[error("reading {kind} {name:?}: {source}")]
    Read {
        /// Kind of the object.
        kind: SourceKind,
        /// Its name.
        name: String,
        /// What the API said.
        source: kube::Error,
    },
    /// A value is not UTF-8 text.
    #[error("{kind} {name:?}, key {key:?}: the value is not UTF-8 text")]
    NotText {
        /// Kind of the object.
        kind: SourceKind,
        /// Its name.
        name: String,
        /// The key.
        key: String,
    },
}

/// The variables of some sources.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EnvFromVars {
    /// Name → value.
    pub vars: BTreeMap<String, String>,
    /// Names that were skipped: not valid variable names, or reserved for the platform.
    pub skipped: Vec<String>,
}

impl EnvFromVars {
    /// Adds `key`, with `prefix`, unless the result may not be used as a variable name.
    fn add(&mut self, prefix: &str, key: &str, value: String) {
        let name = format!("{prefix}{key}");
        if crate::validation::is_env_name(&name) && !name.starts_with(RESERVED_ENV_PREFIX) {
            self.vars.insert(name, value);
        } else {
            self.skipped.push(name);
        }
    }

    /// Adds the keys of `config_map`: `data`, then `binaryData` that is UTF-8 text.
    pub fn add_config_map(
        &mut self,
        source: &EnvSource,
        config_map: &ConfigMap,
    ) -> Result<(), EnvFromError> {
        for (key, value) in config_map.data.iter().flatten() {
            self.add(&source.prefix, key, value.clone());
        }
        for (key, value) in config_map.binary_data.iter().flatten() {
            self.add(&source.prefix, key, text(source, key, &value.0)?);
        }
        Ok(())
    }

    /// Adds the keys of `secret`.
    pub fn add_secret(&mut self, source: &EnvSource, secret: &Secret) -> Result<(), EnvFromError> {
        for (key, value) in secret.data.iter().flatten() {
            self.add(&source.prefix, key, text(source, key, &value.0)?);
        }
        Ok(())
    }
}

fn text(source: &EnvSource, key: &str, bytes: &[u8]) -> Result<String, EnvFromError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| EnvFromError::NotText {
        kind: source.kind,
        name: source.name.clone(),
        key: key.to_owned(),
    })
}

/// Reads `sources` in `namespace` and merges their variables (see the module docs).
pub async fn resolve(
    client: &Client,
    namespace: &str,
    sources: &[EnvSource],
) -> Result<EnvFromVars, EnvFromError> {
    let mut out = EnvFromVars::default();
    for source in sources {
        let missing = || EnvFromError::NotFound { kind: source.kind, name: source.name.clone() };
        let failed = |error: kube::Error| EnvFromError::Read {
            kind: source.kind,
            name: source.name.clone(),
            source: error,
        };
        let found = match source.kind {
            SourceKind::ConfigMap => Api::<ConfigMap>::namespaced(client.clone(), namespace)
                .get_opt(&source.name)
                .await
                .map_err(failed)?
                .map(|config_map| out.add_config_map(source, &config_map)),
            SourceKind::Secret => Api::<Secret>::namespaced(client.clone(), namespace)
                .get_opt(&source.name)
                .await
                .map_err(failed)?
                .map(|secret| out.add_secret(source, &secret)),
        };
        match found {
            Some(added) => added?,
            None if source.optional => {}
            None => return Err(missing()),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use k8s_openapi::ByteString;

    use super::*;
    use crate::resources::LocalObjectRef;

    fn source(kind: SourceKind, prefix: &str) -> EnvSource {
        EnvSource { kind, name: "settings".into(), prefix: prefix.into(), optional: false }
    }

    #[test]
    fn keys_get_the_prefix_and_later_sources_win() {
        let config_map = ConfigMap {
            data: Some([("MODE".into(), "fast".into()), ("LEVEL".into(), "1".into())].into()),
            ..ConfigMap::default()
        };
        let secret = Secret {
            data: Some([("LEVEL".into(), ByteString(b"2".to_vec()))].into()),
            ..Secret::default()
        };
        let mut vars = EnvFromVars::default();
        vars.add_config_map(&source(SourceKind::ConfigMap, ""), &config_map).unwrap();
        vars.add_secret(&source(SourceKind::Secret, ""), &secret).unwrap();
        vars.add_config_map(&source(SourceKind::ConfigMap, "APP_"), &config_map).unwrap();
        assert_eq!(vars.vars["MODE"], "fast");
        assert_eq!(vars.vars["LEVEL"], "2", "the later source overrides the earlier one");
        assert_eq!(vars.vars["APP_LEVEL"], "1");
        assert_eq!(vars.vars.len(), 4);
        assert!(vars.skipped.is_empty());
    }

    #[test]
    fn invalid_and_reserved_names_are_skipped_and_reported() {
        let config_map = ConfigMap {
            data: Some(
                [
                    ("app.conf".into(), "x".into()),
                    ("1ST".into(), "x".into()),
                    ("KUBEFAAS_HANDLER".into(), "evil.handler".into()),
                    ("OK".into(), "y".into()),
                ]
                .into(),
            ),
            ..ConfigMap::default()
        };
        let mut vars = EnvFromVars::default();
        vars.add_config_map(&source(SourceKind::ConfigMap, ""), &config_map).unwrap();
        assert_eq!(vars.vars, [("OK".to_owned(), "y".to_owned())].into());
        let mut skipped = vars.skipped.clone();
        skipped.sort();
        assert_eq!(skipped, ["1ST", "KUBEFAAS_HANDLER", "app.conf"]);
    }

    #[test]
    fn a_value_that_is_not_text_is_an_error_naming_the_key() {
        let secret = Secret {
            data: Some([("BLOB".into(), ByteString(vec![0xff, 0xfe]))].into()),
            ..Secret::default()
        };
        let error = EnvFromVars::default()
            .add_secret(&source(SourceKind::Secret, ""), &secret)
            .unwrap_err()
            .to_string();
        assert!(error.contains("secret \"settings\"") && error.contains("\"BLOB\""), "{error}");
    }

    #[test]
    fn function_entries_become_sources() {
        let entry = EnvFromSource {
            secret_ref: Some(LocalObjectRef { name: "db".into() }),
            prefix: Some("DB_".into()),
            ..EnvFromSource::default()
        };
        assert_eq!(
            EnvSource::of_function(&entry),
            Some(EnvSource {
                kind: SourceKind::Secret,
                name: "db".into(),
                prefix: "DB_".into(),
                optional: false
            })
        );
        assert_eq!(EnvSource::of_function(&EnvFromSource::default()), None);
    }
}
