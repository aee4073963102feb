//! Function code: one source file, a zip archive, or a directory, and how it is laid out in an
//! instance's code directory.
//!
//! Archives are untrusted input: entries that would land outside the code directory (absolute
//! paths, `..`, symlinks) are rejected rather than skipped, and the unpacked size is capped by
//! counting the bytes actually written, not by trusting the sizes the archive declares.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use kubefaas_core::runtime::Language;
use sha2::{Digest, Sha256};

use crate::error::Error;

/// Most bytes an archive may unpack to, unless configured otherwise.
pub const DEFAULT_MAX_UNPACKED_BYTES: u64 = 256 * 1024 * 1024;
/// Most entries an archive may have.
const MAX_ENTRIES: usize = 10_000;

/// The code of a function.
#[derive(Clone, Debug)]
pub enum Code {
    /// One source file, written under `name` in the code directory.
    File {
        /// File name, e.g. `main.py`, `index.mjs`, `handler.go`.
        name: String,
        /// The source text.
        contents: Vec<u8>,
    },
    /// A zip archive unpacked into the code directory.
    Zip(Vec<u8>),
    /// A directory whose files are copied (inside runtime containers: the mounted code).
    Directory(PathBuf),
}

impl Code {
    /// Whether `bytes` look like a zip archive (so `base64` code can be either kind).
    pub fn is_zip(bytes: &[u8]) -> bool {
        kubefaas_core::code::is_zip(bytes)
    }

    /// A single source file named as the handler expects: `main.handler` → `main.py`,
    /// `index.handler` → `index.mjs` when the source uses `import`/`export` lines, else
    /// `index.js`; Go source → `function.go`.
    pub fn single_file(language: Language, handler: &str, contents: Vec<u8>) -> Code {
        let name = kubefaas_core::code::source_file_name(language, handler, &contents);
        Code::File { name, contents }
    }

    /// The sha256 of the code, hex-encoded: the key of warm instances and Go builds.
    pub fn checksum(&self) -> Result<String, Error> {
        let mut hasher = Sha256::new();
        match self {
            Code::File { name, contents } => {
                hasher.update(b"file\0");
                hasher.update(name.as_bytes());
                hasher.update(b"\0");
                hasher.update(contents);
            }
            Code::Zip(bytes) => {
                hasher.update(b"zip\0");
                hasher.update(bytes);
            }
            Code::Directory(dir) => {
                hasher.update(b"dir\0");
                let mut files = Vec::new();
                list_files(dir, dir, &mut files)?;
                files.sort();
                for rel in files {
                    let path = dir.join(&rel);
                    let contents = fs::read(&path).map_err(|source| prepare(&path, source))?;
                    hasher.update(rel.to_string_lossy().as_bytes());
                    hasher.update(b"\0");
                    hasher.update((contents.len() as u64).to_le_bytes());
                    hasher.update(&contents);
                }
            }
        }
        Ok(hex::encode(hasher.finalize()))
    }

    /// Writes the code into `dest` (which must exist and be empty), at most `max_bytes` in all.
    pub fn materialize(&self, dest: &Path, max_bytes: u64) -> Result<(), Error> {
        match self {
            Code::File { name, contents } => {
                let rel = safe_relative(name)
                    .ok_or_else(|| Error::InvalidCode(format!("unsafe file name {name:?}")))?;
                if contents.len() as u64 > max_bytes {
                    return Err(Error::InvalidCode(format!("code is over {max_bytes} bytes")));
                }
                write_file(&dest.join(rel), contents)
            }
            Code::Zip(bytes) => unzip(bytes, dest, max_bytes),
            Code::Directory(dir) => {
                let mut files = Vec::new();
                list_files(dir, dir, &mut files)?;
                let mut total = 0u64;
                for rel in files {
                    let from = dir.join(&rel);
                    let contents = fs::read(&from).map_err(|source| prepare(&from, source))?;
                    total += contents.len() as u64;
                    if total > max_bytes {
                        return Err(Error::InvalidCode(format!("code is over {max_bytes} bytes")));
                    }
                    write_file(&dest.join(&rel), &contents)?;
                }
                Ok(())
            }
        }
    }
}

fn prepare(path: &Path, source: io::Error) -> Error {
    Error::PrepareFiles { path: path.to_owned(), source }
}

fn write_file(path: &Path, contents: &[u8]) -> Result<(), Error> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(|source| prepare(parent, source))?;
    }
    fs::write(path, contents).map_err(|source| prepare(path, source))
}

/// Regular files below `dir`, relative to `root`. Symlinks are followed only when they resolve
/// inside `root`; entries named `..*` are skipped. That is the layout of a ConfigMap volume:
/// `main.py -> ..data/main.py`, `..data -> ..2024_01_01_00_00_00.1`, real files in the latter.
fn list_files(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), Error> {
    let real_root = fs::canonicalize(root).map_err(|source| prepare(root, source))?;
    let entries = fs::read_dir(dir).map_err(|source| prepare(dir, source))?;
    for entry in entries {
        let entry = entry.map_err(|source| prepare(dir, source))?;
        let path = entry.path();
        if entry.file_name().to_string_lossy().starts_with("..") {
            continue;
        }
        let kind = entry.file_type().map_err(|source| prepare(&path, source))?;
        let (is_dir, is_file) = if kind.is_symlink() {
            match fs::canonicalize(&path) {
                Ok(target) if target.starts_with(&real_root) => (target.is_dir(), target.is_file()),
                _ => continue,
            }
        } else {
            (kind.is_dir(), kind.is_file())
        };
        if is_dir {
            list_files(root, &path, out)?;
        } else if is_file && let Ok(rel) = path.strip_prefix(root) {
            out.push(rel.to_owned());
        }
    }
    Ok(())
}

/// `name` as a relative path that stays below its base, or `None`.
fn safe_relative(name: &str) -> Option<PathBuf> {
    let path = Path::new(name);
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::Normal(p) => out.push(p),
            std::path::Component::CurDir => {}
            _ => return None,
        }
    }
    (!out.as_os_str().is_empty()).then_some(out)
}

fn unzip(bytes: &[u8], dest: &Path, max_bytes: u64) -> Result<(), Error> {
    let bad = |what: String| Error::InvalidCode(what);
    let mut archive = zip::ZipArchive::new(io::Cursor::new(bytes))
        .map_err(|e| bad(format!("not a readable zip archive: {e}")))?;
    if archive.len() > MAX_ENTRIES {
        return Err(bad(format!("archive has {} entries, at most {MAX_ENTRIES}", archive.len())));
    }
    let mut total = 0u64;
    for index in 0..archive.len() {
        let mut entry =
            archive.by_index(index).map_err(|e| bad(format!("archive entry {index}: {e}")))?;
        let name = entry.name().map(|n| n.into_owned()).unwrap_or_else(|_| format!("#{index}"));
        if entry.is_symlink() {
            return Err(bad(format!("archive entry {name:?} is a symlink")));
        }
        let rel = entry
            .enclosed_name()
            .and_then(|p| safe_relative(&p.to_string_lossy()))
            .ok_or_else(|| bad(format!("archive entry {name:?} points outside the code")))?;
        let path = dest.join(rel);
        if entry.is_dir() {
            fs::create_dir_all(&path).map_err(|source| prepare(&path, source))?;
            continue;
        }
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(|source| prepare(parent, source))?;
        }
        let mut out = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|source| prepare(&path, source))?;
        // One byte more than allowed tells "exactly at the cap" from "over it".
        let allowed = max_bytes - total;
        let written = io::copy(&mut (&mut entry).take(allowed + 1), &mut out)
            .map_err(|e| bad(format!("archive entry {name:?}: {e}")))?;
        if written > allowed {
            return Err(bad(format!("archive unpacks to more than {max_bytes} bytes")));
        }
        total += written;
        out.flush().map_err(|source| prepare(&path, source))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;
    use zip::write::SimpleFileOptions;

    fn zip_of(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut writer = zip::ZipWriter::new(Cursor::new(Vec::new()));
        for (name, contents) in files {
            writer.start_file(*name, SimpleFileOptions::default()).unwrap();
            writer.write_all(contents).unwrap();
        }
        writer.finish().unwrap().into_inner()
    }

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("kubefaas-code-test-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn zip_with_nested_files_unpacks_below_the_code_dir() {
        let dir = scratch("nested");
        let bytes = zip_of(&[("main.py", b"x = 1"), ("pkg/util.py", b"y = 2")]);
        assert!(Code::is_zip(&bytes));
        Code::Zip(bytes).materialize(&dir, 1024).unwrap();
        assert_eq!(fs::read(dir.join("pkg/util.py")).unwrap(), b"y = 2");
        assert_eq!(fs::read(dir.join("main.py")).unwrap(), b"x = 1");
    }

    #[test]
    fn zip_slip_entry_is_rejected_and_nothing_escapes() {
        let dir = scratch("slip");
        let target = dir.join("inner");
        fs::create_dir_all(&target).unwrap();
        let bytes = zip_of(&[("../escaped.txt", b"evil")]);
        let err = Code::Zip(bytes).materialize(&target, 1024).unwrap_err();
        assert!(err.to_string().contains("outside"), "{err}");
        assert!(!dir.join("escaped.txt").exists());
    }

    #[test]
    fn zip_over_the_size_cap_is_rejected() {
        let dir = scratch("cap");
        let bytes = zip_of(&[("a.txt", &[b'a'; 600]), ("b.txt", &[b'b'; 600])]);
        let err = Code::Zip(bytes).materialize(&dir, 1000).unwrap_err();
        assert!(err.to_string().contains("more than 1000"), "{err}");
    }

    #[test]
    fn single_file_with_parent_path_is_rejected() {
        let dir = scratch("file");
        let code = Code::File { name: "../x.py".into(), contents: b"1".to_vec() };
        assert!(code.materialize(&dir, 1024).is_err());
    }

    #[test]
    fn config_map_volume_layout_is_copied_as_its_visible_files() {
        let mounted = scratch("configmap-src");
        let data = mounted.join("..2026_01_01_00_00_00.1");
        fs::create_dir_all(&data).unwrap();
        fs::write(data.join("main.py"), b"x = 1").unwrap();
        std::os::unix::fs::symlink("..2026_01_01_00_00_00.1", mounted.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/main.py", mounted.join("main.py")).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", mounted.join("escape")).unwrap();
        let dest = scratch("configmap-dest");
        Code::Directory(mounted).materialize(&dest, 1024).unwrap();
        let mut names: Vec<String> = fs::read_dir(&dest)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["main.py"], "no ConfigMap internals, no link out of the mount");
        assert_eq!(fs::read(dest.join("main.py")).unwrap(), b"x = 1");
    }

    #[test]
    fn checksum_changes_with_contents() {
        let a = Code::File { name: "main.py".into(), contents: b"1".to_vec() };
        let b = Code::File { name: "main.py".into(), contents: b"2".to_vec() };
        assert_ne!(a.checksum().unwrap(), b.checksum().unwrap());
        assert_eq!(a.checksum().unwrap(), a.clone().checksum().unwrap());
    }
}
