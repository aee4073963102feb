//! The languages, their bootstraps (embedded in this crate and written out once per driver),
//! the interpreters that run them, and the Go build step.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;

use kubefaas_core::runtime::Language;

use crate::code::Code;
use crate::error::{Error, InvocationError, error_types, platform_error};

/// The python bootstrap.
pub const PYTHON_BOOTSTRAP: &str = include_str!("../bootstrap/python.py");
/// The node.js bootstrap (an ES module; it loads CommonJS and ESM handlers).
pub const NODEJS_BOOTSTRAP: &str = include_str!("../bootstrap/nodejs.mjs");
/// Template of the Go `main` generated around the user's package.
pub const GO_MAIN_TEMPLATE: &str = include_str!("../bootstrap/go_main.go.tmpl");

/// Absolute paths of the host's interpreters, found through the driver's `PATH` once; the
/// instances themselves get no `PATH` lookups of the executor's environment.
#[derive(Debug, Default)]
pub(crate) struct Interpreters {
    found: std::sync::Mutex<HashMap<Language, PathBuf>>,
}

impl Interpreters {
    /// The interpreter (python, node) or toolchain (go) of `language`.
    pub(crate) async fn get(&self, language: Language) -> Result<PathBuf, Error> {
        if let Some(path) = self.lock().get(&language) {
            return Ok(path.clone());
        }
        let (program, args): (&str, &[&str]) = match language {
            Language::Python => ("python3", &["-c", "import sys; print(sys.executable)"]),
            Language::Nodejs => ("node", &["-p", "process.execPath"]),
            Language::Go => ("go", &["env", "GOROOT"]),
        };
        let missing = |reason: String| Error::MissingInterpreter {
            program: program.to_owned(),
            language: language.as_str(),
            reason,
        };
        // Go is often installed outside PATH (Debian's /usr/lib/go, the upstream /usr/local/go).
        let fallbacks: &[&str] = match language {
            Language::Go => &["/usr/lib/go/bin/go", "/usr/local/go/bin/go"],
            _ => &[],
        };
        let command = std::iter::once(program)
            .chain(fallbacks.iter().copied().filter(|p| Path::new(p).exists()))
            .find(|p| p.contains('/') || on_path(p))
            .unwrap_or(program);
        let output = tokio::time::timeout(
            Duration::from_secs(30),
            tokio::process::Command::new(command).args(args).stdin(Stdio::null()).output(),
        )
        .await
        .map_err(|_| missing("did not answer within 30s".into()))?
        .map_err(|e| missing(e.to_string()))?;
        if !output.status.success() {
            return Err(missing(String::from_utf8_lossy(&output.stderr).into_owned()));
        }
        let printed = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        let path = match language {
            Language::Go => Path::new(&printed).join("bin").join("go"),
            _ => PathBuf::from(printed),
        };
        if !path.is_absolute() || !path.exists() {
            return Err(missing(format!("reported path {} does not exist", path.display())));
        }
        self.lock().insert(language, path.clone());
        Ok(path)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Language, PathBuf>> {
        self.found.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Whether `program` is found in the driver's `PATH`.
fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// Writes the embedded bootstraps below `dir` and returns their paths.
pub(crate) fn write_bootstraps(dir: &Path) -> Result<HashMap<Language, PathBuf>, Error> {
    fs::create_dir_all(dir)
        .map_err(|source| Error::PrepareFiles { path: dir.to_owned(), source })?;
    let mut paths = HashMap::new();
    for (language, name, text) in [
        (Language::Python, "bootstrap.py", PYTHON_BOOTSTRAP),
        (Language::Nodejs, "bootstrap.mjs", NODEJS_BOOTSTRAP),
    ] {
        let path = dir.join(name);
        fs::write(&path, text)
            .map_err(|source| Error::PrepareFiles { path: path.clone(), source })?;
        paths.insert(language, path);
    }
    Ok(paths)
}

/// Builds Go functions once per code checksum and handler, below a cache directory shared by
/// every instance (and by concurrent builds of the same code, which wait for each other).
#[derive(Debug)]
pub(crate) struct GoBuilder {
    root: PathBuf,
    locks: std::sync::Mutex<HashMap<String, Arc<Mutex<()>>>>,
    timeout: Duration,
}

/// Module path given to user code that comes without a `go.mod`.
const DEFAULT_MODULE: &str = "kubefaas.local/function";

/// What a build produced: the binary, or the user's compile error.
pub(crate) type BuildResult = Result<PathBuf, InvocationError>;

impl GoBuilder {
    pub(crate) fn new(root: PathBuf, timeout: Duration) -> Self {
        Self { root, locks: std::sync::Mutex::default(), timeout }
    }

    /// The binary of `code` with `handler` (building it if this checksum was never built).
    pub(crate) async fn binary(
        &self,
        go: &Path,
        code: &Code,
        checksum: &str,
        handler: &str,
        max_code_bytes: u64,
    ) -> Result<BuildResult, Error> {
        if handler.is_empty()
            || !handler.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            || !handler.starts_with(|c: char| c.is_ascii_uppercase())
        {
            return Err(Error::InvalidHandler {
                handler: handler.to_owned(),
                reason: "a Go handler is the name of an exported function, like Handle".into(),
            });
        }
        let key = format!("{checksum}-{handler}");
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            Arc::clone(locks.entry(key.clone()).or_default())
        };
        let _guard = lock.lock().await;
        let out_dir = self.root.join("bin").join(&key);
        let binary = out_dir.join("function");
        if binary.exists() {
            return Ok(Ok(binary));
        }
        let prep = |path: &Path| {
            let path = path.to_owned();
            move |source| Error::PrepareFiles { path, source }
        };
        let work = self.root.join("work").join(format!("{key}-{}", crate::instance::unique_id()));
        let src = work.join("src");
        fs::create_dir_all(&src).map_err(prep(&src))?;
        code.materialize(&src, max_code_bytes)?;
        let result = self.build(go, &src, &work, handler).await;
        let outcome = match result {
            Ok(built) => {
                fs::create_dir_all(out_dir.parent().unwrap_or(&self.root))
                    .map_err(prep(&out_dir))?;
                let staged = work.join("out");
                fs::create_dir_all(&staged).map_err(prep(&staged))?;
                fs::rename(&built, staged.join("function")).map_err(prep(&built))?;
                // A directory rename is atomic: a binary in `bin/` is always complete.
                match fs::rename(&staged, &out_dir) {
                    Ok(()) => Ok(Ok(binary)),
                    // Another driver built the same code at the same time: use its binary.
                    Err(_) if binary.exists() => Ok(Ok(binary)),
                    Err(source) => Err(Error::PrepareFiles { path: out_dir.clone(), source }),
                }
            }
            Err(BuildError::User(e)) => Ok(Err(e)),
            Err(BuildError::Driver(e)) => Err(e),
        };
        let _ = fs::remove_dir_all(&work);
        outcome
    }

    async fn build(
        &self,
        go: &Path,
        src: &Path,
        work: &Path,
        handler: &str,
    ) -> Result<PathBuf, BuildError> {
        let prep = |path: &Path, source| {
            BuildError::Driver(Error::PrepareFiles { path: path.to_owned(), source })
        };
        let package = package_name(src).map_err(BuildError::User)?;
        if !src.join("go.mod").exists() {
            let go_mod = format!("module {DEFAULT_MODULE}\n\ngo 1.18\n");
            fs::write(src.join("go.mod"), go_mod).map_err(|e| prep(&src.join("go.mod"), e))?;
        }
        let (main_dir, call, import) = if package == "main" {
            (src.to_owned(), handler.to_owned(), String::new())
        } else {
            let module = module_path(&src.join("go.mod")).unwrap_or_else(|| DEFAULT_MODULE.into());
            (
                src.join("kubefaas_main"),
                format!("function.{handler}"),
                format!("function {:?}", module),
            )
        };
        fs::create_dir_all(&main_dir).map_err(|e| prep(&main_dir, e))?;
        let main = GO_MAIN_TEMPLATE.replace("__IMPORT__", &import).replace("__HANDLER__", &call);
        let main_file = main_dir.join("zz_kubefaas_main.go");
        fs::write(&main_file, main).map_err(|e| prep(&main_file, e))?;
        let output_path = work.join("function");
        let cache = |name: &str| self.root.join(name);
        let mut cmd = tokio::process::Command::new(go);
        cmd.arg("build")
            .arg("-trimpath")
            .arg("-o")
            .arg(&output_path)
            .arg(".")
            .current_dir(&main_dir)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("HOME", cache("home"))
            .env("GOCACHE", cache("gocache"))
            .env("GOPATH", cache("gopath"))
            .env("GOPROXY", "off")
            .env("GOFLAGS", "-mod=mod")
            .env("GO111MODULE", "on")
            .env("GOTOOLCHAIN", "local")
            .env("GOTELEMETRY", "off")
            .env("CGO_ENABLED", "0")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let started = std::time::Instant::now();
        let output = tokio::time::timeout(self.timeout, cmd.output())
            .await
            .map_err(|_| {
                BuildError::User(platform_error(
                    error_types::BUILD_FAILED,
                    format!("go build did not finish within {:?}", self.timeout),
                ))
            })?
            .map_err(|e| BuildError::Driver(Error::SpawnInstance(e)))?;
        tracing::info!(elapsed = ?started.elapsed(), ok = output.status.success(), "go build");
        if !output.status.success() {
            let mut message = String::from_utf8_lossy(&output.stderr).into_owned();
            message.truncate(16 * 1024);
            return Err(BuildError::User(platform_error(
                error_types::BUILD_FAILED,
                format!("go build failed:\n{message}"),
            )));
        }
        Ok(output_path)
    }
}

enum BuildError {
    User(InvocationError),
    Driver(Error),
}

/// The package clause of the Go files at the top of `src`.
fn package_name(src: &Path) -> Result<String, InvocationError> {
    let no_package =
        || platform_error(error_types::BUILD_FAILED, "the code has no .go file at its top level");
    let entries = fs::read_dir(src).map_err(|_| no_package())?;
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".go") || name.ends_with("_test.go") {
            continue;
        }
        let Ok(text) = fs::read_to_string(&path) else { continue };
        if let Some(package) = text
            .lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix("package "))
            .map(|p| p.trim().to_owned())
        {
            return Ok(package);
        }
    }
    Err(no_package())
}

/// The module path a `go.mod` declares.
fn module_path(go_mod: &Path) -> Option<String> {
    let text = fs::read_to_string(go_mod).ok()?;
    text.lines()
        .find_map(|l| l.trim().strip_prefix("module "))
        .map(|m| m.trim().trim_matches('"').to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_node_file_with_exports_is_an_es_module() {
        let esm = Code::single_file(
            Language::Nodejs,
            "index.handler",
            b"export const handler = 1".to_vec(),
        );
        let cjs =
            Code::single_file(Language::Nodejs, "index.handler", b"exports.handler = 1".to_vec());
        assert!(matches!(esm, Code::File { ref name, .. } if name == "index.mjs"));
        assert!(matches!(cjs, Code::File { ref name, .. } if name == "index.js"));
    }
}
