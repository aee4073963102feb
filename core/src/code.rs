//! Function code as the platform stores it: one source file or a zip archive, kept in a
//! ConfigMap the operator owns (`<function>-code`), and read back by the executor.
//!
//! The operator turns `spec.code` into a [`Package`] and writes it with [`Package::config_map_data`];
//! the executor and the node agent read it with [`Package::from_config_map`]. Both sides agree on
//! the keys through this module only.

use std::collections::BTreeMap;

use k8s_openapi::{ByteString, api::core::v1::ConfigMap};
use sha2::{Digest, Sha256};

use crate::runtime::Language;

/// ConfigMap key of a zip archive.
pub const ZIP_KEY: &str = "code.zip";

/// Annotation on the code ConfigMap holding the package checksum.
pub const CHECKSUM_ANNOTATION: &str = "kubefaas.io/code-checksum";

/// Name of the ConfigMap holding a function's code.
pub fn config_map_name(function: &str) -> String {
    format!("{function}-code")
}

/// Problems reading code back.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodeError {
    /// The ConfigMap holds no code key.
    #[error("ConfigMap {0} holds no code")]
    Empty(String),
    /// The ConfigMap holds more than one code key.
    #[error("ConfigMap {name} holds several code keys ({keys}); expected exactly one")]
    Ambiguous {
        /// The ConfigMap.
        name: String,
        /// The keys found.
        keys: String,
    },
}

/// The code of a function.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Package {
    /// One source file.
    File {
        /// File name inside the code directory, e.g. `main.py`, `index.js`, `function.go`.
        name: String,
        /// The file's bytes.
        contents: Vec<u8>,
    },
    /// A zip archive, unpacked into the code directory.
    Zip(Vec<u8>),
}

impl Package {
    /// Code from raw bytes: a zip archive when they start like one, otherwise a single source
    /// file named after the handler (see [`source_file_name`]).
    pub fn from_bytes(language: Language, handler: &str, bytes: Vec<u8>) -> Self {
        if is_zip(&bytes) {
            Self::Zip(bytes)
        } else {
            Self::File { name: source_file_name(language, handler, &bytes), contents: bytes }
        }
    }

    /// The bytes of the file or archive.
    pub fn bytes(&self) -> &[u8] {
        match self {
            Self::File { contents, .. } => contents,
            Self::Zip(bytes) => bytes,
        }
    }

    /// Size in bytes.
    pub fn size(&self) -> usize {
        self.bytes().len()
    }

    /// Lower-case hex SHA-256 of the bytes: what `sha256sum` prints for the file or archive.
    pub fn checksum(&self) -> String {
        hex::encode(Sha256::digest(self.bytes()))
    }

    /// The ConfigMap key the code is stored under.
    pub fn key(&self) -> &str {
        match self {
            Self::File { name, .. } => name,
            Self::Zip(_) => ZIP_KEY,
        }
    }

    /// `data` and `binaryData` of the code ConfigMap: UTF-8 source as text (readable with
    /// `kubectl get -o yaml`), anything else as binary.
    pub fn config_map_data(&self) -> (BTreeMap<String, String>, BTreeMap<String, ByteString>) {
        let mut data = BTreeMap::new();
        let mut binary = BTreeMap::new();
        match self {
            Self::File { name, contents } => match std::str::from_utf8(contents) {
                Ok(text) => {
                    data.insert(name.clone(), text.to_owned());
                }
                Err(_) => {
                    binary.insert(name.clone(), ByteString(contents.clone()));
                }
            },
            Self::Zip(bytes) => {
                binary.insert(ZIP_KEY.to_owned(), ByteString(bytes.clone()));
            }
        }
        (data, binary)
    }

    /// Reads the code back from its ConfigMap (exactly one key in `data` and `binaryData`).
    pub fn from_config_map(config_map: &ConfigMap) -> Result<Self, CodeError> {
        let name = config_map.metadata.name.clone().unwrap_or_default();
        let mut entries: Vec<(String, Vec<u8>)> = Vec::new();
        for (key, text) in config_map.data.iter().flatten() {
            entries.push((key.clone(), text.clone().into_bytes()));
        }
        for (key, bytes) in config_map.binary_data.iter().flatten() {
            entries.push((key.clone(), bytes.0.clone()));
        }
        match entries.len() {
            0 => Err(CodeError::Empty(name)),
            1 => {
                let (key, bytes) = entries.remove(0);
                Ok(if key == ZIP_KEY {
                    Self::Zip(bytes)
                } else {
                    Self::File { name: key, contents: bytes }
                })
            }
            _ => Err(CodeError::Ambiguous {
                name,
                keys: entries.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>().join(", "),
            }),
        }
    }
}

/// Whether `bytes` start like a zip archive.
pub fn is_zip(bytes: &[u8]) -> bool {
    bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06")
}

/// The file name a single source file gets, so the runtime finds the handler in it.
///
/// - python: the handler's module as a path (`main.handler` → `main.py`, `pkg.app.handler` →
///   `pkg/app.py`).
/// - nodejs: the handler's file (`index.handler` → `index.js`, or `index.mjs` when the source is
///   an ES module: it has a line starting with `export ` or `import `).
/// - go: `function.go` (the handler names a function of the package, not a file).
pub fn source_file_name(language: Language, handler: &str, contents: &[u8]) -> String {
    let module = handler.rsplit_once('.').map_or(handler, |(module, _)| module);
    match language {
        Language::Python => format!("{}.py", module.replace('.', "/")),
        Language::Nodejs => {
            let esm = String::from_utf8_lossy(contents).lines().any(|line| {
                let line = line.trim_start();
                line.starts_with("export ") || line.starts_with("import ")
            });
            format!("{module}.{}", if esm { "mjs" } else { "js" })
        }
        Language::Go => "function.go".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_single_file_is_named_after_the_handler_module() {
        assert_eq!(source_file_name(Language::Python, "main.handler", b""), "main.py");
        assert_eq!(source_file_name(Language::Python, "pkg.app.main", b""), "pkg/app.py");
        assert_eq!(
            source_file_name(Language::Nodejs, "index.handler", b"exports.handler = 1"),
            "index.js"
        );
        assert_eq!(
            source_file_name(
                Language::Nodejs,
                "index.handler",
                b"// esm\nexport async function handler() {}"
            ),
            "index.mjs"
        );
        assert_eq!(source_file_name(Language::Go, "Handle", b"package main"), "function.go");
    }

    #[test]
    fn zip_archives_are_recognised_by_their_magic() {
        let zip = Package::from_bytes(Language::Python, "main.handler", b"PK\x03\x04rest".to_vec());
        assert_eq!(zip.key(), ZIP_KEY);
        let file = Package::from_bytes(
            Language::Python,
            "main.handler",
            b"def handler(e, c): pass".to_vec(),
        );
        assert_eq!(file.key(), "main.py");
    }

    #[test]
    fn checksum_is_the_sha256_of_the_bytes() {
        let package = Package::File { name: "main.py".into(), contents: b"hello".to_vec() };
        assert_eq!(
            package.checksum(),
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert_eq!(package.size(), 5);
    }

    #[test]
    fn packages_round_trip_through_a_config_map() {
        for package in [
            Package::File { name: "main.py".into(), contents: b"print(1)\n".to_vec() },
            Package::File { name: "blob.py".into(), contents: vec![0xff, 0xfe, 0x00] },
            Package::Zip(b"PK\x03\x04\x00\x01".to_vec()),
        ] {
            let (data, binary) = package.config_map_data();
            let config_map = ConfigMap {
                data: Some(data).filter(|d| !d.is_empty()),
                binary_data: Some(binary).filter(|b| !b.is_empty()),
                ..ConfigMap::default()
            };
            assert_eq!(Package::from_config_map(&config_map), Ok(package));
        }
    }

    #[test]
    fn a_config_map_without_exactly_one_key_is_refused() {
        let mut config_map = ConfigMap::default();
        config_map.metadata.name = Some("f-code".into());
        assert_eq!(Package::from_config_map(&config_map), Err(CodeError::Empty("f-code".into())));
        config_map.data =
            Some(BTreeMap::from([("a.py".into(), "1".into()), ("b.py".into(), "2".into())]));
        assert!(matches!(Package::from_config_map(&config_map), Err(CodeError::Ambiguous { .. })));
    }
}
