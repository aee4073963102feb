//! Checks on `Function` and `Invocation` specs that the operator and the gateway both apply.
//!
//! The CRD schema already makes a real API server reject wrong types, unknown runtimes, missing
//! fields, out-of-range numbers and a `code` with zero or two sources. These functions repeat
//! those rules (the gateway does not go through an API server on every path, and the operator
//! must not trust that the CRD installed is the current one) and add what a schema cannot say:
//! handler syntax per language, quantities within the platform's bounds, decodable code within
//! the size limit, environment names, and so on. They are pure: no I/O, every problem reported
//! at once with the path of the field, in the same words Kubernetes uses.

use std::{collections::BTreeMap, fmt};

use base64::Engine as _;
use kube_quantity::ParsedQuantity;

use crate::{
    resources::{FunctionCode, FunctionSpec, InvocationSpec},
    runtime::{self, Language},
};

/// Platform-wide bounds, configurable by operators of the platform ([`LimitFlags`]: the same
/// flags on the operator, the gateway and `kubefaas up`, and `limits` in the Helm chart).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Highest `timeoutSeconds` a function may ask for.
    pub max_timeout_seconds: i32,
    /// Smallest memory limit, in bytes (below it no interpreter starts).
    pub min_memory_bytes: u64,
    /// Largest memory limit, in bytes.
    pub max_memory_bytes: u64,
    /// Smallest CPU limit, in millicores.
    pub min_cpu_millis: u64,
    /// Largest CPU limit, in millicores.
    pub max_cpu_millis: u64,
    /// Largest code (decoded) carried inside a Function. The code is stored in a ConfigMap, and
    /// Kubernetes objects stay below about 1 MiB; larger code belongs behind `url` + `sha256`.
    pub max_code_bytes: usize,
    /// Largest total size of `env` names and values.
    pub max_env_bytes: usize,
    /// Largest serialised payload of one invocation.
    pub max_payload_bytes: usize,
    /// Largest total size of an invocation's header names and values.
    pub max_header_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_timeout_seconds: 900,
            min_memory_bytes: 16 * MIB,
            max_memory_bytes: 4096 * MIB,
            min_cpu_millis: 10,
            max_cpu_millis: 4000,
            max_code_bytes: 768 * 1024,
            max_env_bytes: 32 * 1024,
            max_payload_bytes: 1024 * 1024,
            max_header_bytes: 16 * 1024,
        }
    }
}

const MIB: u64 = 1024 * 1024;

/// [`Limits`] as command-line flags (and environment variables), shared by the binaries that
/// validate specs: the operator, the gateway and `kubefaas up`. Each defaults to
/// [`Limits::default`].
#[cfg(feature = "flags")]
#[derive(Clone, Debug, clap::Args)]
pub struct LimitFlags {
    /// Highest `timeoutSeconds` a function may ask for (the resource's schema allows up to 3600).
    #[arg(long, env = "KUBEFAAS_MAX_TIMEOUT_SECONDS", default_value_t = 900,
        value_parser = clap::value_parser!(i32).range(1..=3600))]
    pub max_timeout_seconds: i32,
    /// Smallest memory limit a function may ask for, in MiB.
    #[arg(long, env = "KUBEFAAS_MIN_MEMORY_MB", default_value_t = 16,
        value_parser = clap::value_parser!(u64).range(1..))]
    pub min_memory_mb: u64,
    /// Largest memory limit a function may ask for, in MiB.
    #[arg(long, env = "KUBEFAAS_MAX_MEMORY_MB", default_value_t = 4096,
        value_parser = clap::value_parser!(u64).range(1..))]
    pub max_memory_mb: u64,
    /// Smallest CPU limit a function may ask for, in millicores.
    #[arg(long, env = "KUBEFAAS_MIN_CPU_MILLIS", default_value_t = 10,
        value_parser = clap::value_parser!(u64).range(1..))]
    pub min_cpu_millis: u64,
    /// Largest CPU limit a function may ask for, in millicores.
    #[arg(long, env = "KUBEFAAS_MAX_CPU_MILLIS", default_value_t = 4000,
        value_parser = clap::value_parser!(u64).range(1..))]
    pub max_cpu_millis: u64,
    /// Largest code (decoded) a Function may carry inline or as a zip; it is stored in a
    /// ConfigMap, and Kubernetes objects stay below about 1 MiB.
    #[arg(long, env = "KUBEFAAS_MAX_CODE_BYTES", default_value_t = 768 * 1024,
        value_parser = clap::value_parser!(u64).range(1..=1024 * 1024))]
    pub max_code_bytes: u64,
    /// Largest total size of a function's `env` names and values.
    #[arg(long, env = "KUBEFAAS_MAX_ENV_BYTES", default_value_t = 32 * 1024,
        value_parser = clap::value_parser!(u64).range(1..))]
    pub max_env_bytes: u64,
    /// Largest serialised payload of one invocation.
    #[arg(long, env = "KUBEFAAS_MAX_PAYLOAD_BYTES", default_value_t = 1024 * 1024,
        value_parser = clap::value_parser!(u64).range(1..))]
    pub max_payload_bytes: u64,
    /// Largest total size of an invocation's header names and values.
    #[arg(long, env = "KUBEFAAS_MAX_HEADER_BYTES", default_value_t = 16 * 1024,
        value_parser = clap::value_parser!(u64).range(1..))]
    pub max_header_bytes: u64,
}

#[cfg(feature = "flags")]
impl LimitFlags {
    /// The limits, or which pair of flags contradicts itself.
    pub fn limits(&self) -> Result<Limits, String> {
        if self.min_memory_mb > self.max_memory_mb {
            return Err(format!(
                "--min-memory-mb ({}) is above --max-memory-mb ({})",
                self.min_memory_mb, self.max_memory_mb
            ));
        }
        if self.min_cpu_millis > self.max_cpu_millis {
            return Err(format!(
                "--min-cpu-millis ({}) is above --max-cpu-millis ({})",
                self.min_cpu_millis, self.max_cpu_millis
            ));
        }
        let size = |bytes: u64| usize::try_from(bytes).unwrap_or(usize::MAX);
        Ok(Limits {
            max_timeout_seconds: self.max_timeout_seconds,
            min_memory_bytes: self.min_memory_mb.saturating_mul(MIB),
            max_memory_bytes: self.max_memory_mb.saturating_mul(MIB),
            min_cpu_millis: self.min_cpu_millis,
            max_cpu_millis: self.max_cpu_millis,
            max_code_bytes: size(self.max_code_bytes),
            max_env_bytes: size(self.max_env_bytes),
            max_payload_bytes: size(self.max_payload_bytes),
            max_header_bytes: size(self.max_header_bytes),
        })
    }
}

/// Environment variable names reserved for the platform.
pub const RESERVED_ENV_PREFIX: &str = "KUBEFAAS_";

/// Why a field was rejected, following the Kubernetes field-error types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// A required field is missing or empty.
    Required,
    /// The value is malformed or out of range.
    Invalid,
    /// The value is not one of the allowed values.
    NotSupported,
    /// The value is longer or larger than allowed.
    TooLong,
    /// The field may not be set (in this combination).
    Forbidden,
}

/// One rejected field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// Path of the field, as Kubernetes prints it: `spec.code.base64`, `spec.env[FOO]`.
    pub path: String,
    pub kind: ErrorKind,
    /// What is wrong and, where it helps, what would be right.
    pub detail: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            ErrorKind::Required => "Required value",
            ErrorKind::Invalid => "Invalid value",
            ErrorKind::NotSupported => "Unsupported value",
            ErrorKind::TooLong => "Too long",
            ErrorKind::Forbidden => "Forbidden",
        };
        if self.detail.is_empty() {
            write!(f, "{}: {kind}", self.path)
        } else {
            write!(f, "{}: {kind}: {}", self.path, self.detail)
        }
    }
}

/// Every problem found in one object. Never empty.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidationErrors(pub Vec<FieldError>);

/// The path of the first string or key inside `value` (at `path`) that holds a NUL character.
fn nul_in(value: &serde_json::Value, path: String) -> Option<String> {
    match value {
        serde_json::Value::String(text) => text.contains('\0').then_some(path),
        serde_json::Value::Array(items) => {
            items.iter().enumerate().find_map(|(i, item)| nul_in(item, format!("{path}[{i}]")))
        }
        serde_json::Value::Object(fields) => fields.iter().find_map(|(key, item)| {
            let at = format!("{path}.{key}");
            if key.contains('\0') { Some(at) } else { nul_in(item, at) }
        }),
        _ => None,
    }
}

impl ValidationErrors {
    /// The rejected fields.
    pub fn errors(&self) -> &[FieldError] {
        &self.0
    }

    /// Whether some problem concerns `path` or a field below it.
    pub fn mentions(&self, path: &str) -> bool {
        self.0.iter().any(|e| {
            e.path == path
                || e.path
                    .strip_prefix(path)
                    .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
        })
    }
}

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ValidationErrors {}

/// Collects field errors while a validator walks an object.
#[derive(Debug, Default)]
pub struct Collector(Vec<FieldError>);

impl Collector {
    /// Records a problem.
    pub fn push(&mut self, path: impl Into<String>, kind: ErrorKind, detail: impl Into<String>) {
        self.0.push(FieldError { path: path.into(), kind, detail: detail.into() });
    }

    /// How many problems were recorded so far.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether nothing was recorded so far.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `Ok` when nothing was recorded.
    pub fn finish(self) -> Result<(), ValidationErrors> {
        if self.0.is_empty() { Ok(()) } else { Err(ValidationErrors(self.0)) }
    }
}

/// Validates a Function's name and spec.
pub fn validate_function(
    name: &str,
    spec: &FunctionSpec,
    limits: &Limits,
) -> Result<(), ValidationErrors> {
    let mut errs = Collector::default();
    check_name(&mut errs, "metadata.name", name);

    let runtime = runtime::lookup(&spec.runtime);
    match runtime {
        None if spec.runtime.is_empty() => errs.push("spec.runtime", ErrorKind::Required, ""),
        None => errs.push(
            "spec.runtime",
            ErrorKind::NotSupported,
            format!("{:?}: supported values: {}", spec.runtime, quoted_list(runtime::names())),
        ),
        Some(_) => {}
    }
    if spec.handler.is_empty() {
        errs.push("spec.handler", ErrorKind::Required, "");
    } else if let Some(runtime) = runtime
        && let Err(why) = check_handler(runtime.language, &spec.handler)
    {
        errs.push("spec.handler", ErrorKind::Invalid, format!("{:?}: {why}", spec.handler));
    }

    check_code(&mut errs, &spec.code, limits);

    if spec.version.is_empty() || spec.version.len() > 64 {
        errs.push("spec.version", ErrorKind::Invalid, "must be 1 to 64 characters");
    } else if !spec.version.bytes().all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b)) {
        errs.push(
            "spec.version",
            ErrorKind::Invalid,
            format!("{:?}: may contain only letters, digits, '.', '_', '+' and '-'", spec.version),
        );
    }

    check_env(&mut errs, &spec.env, limits);
    for (i, source) in spec.env_from.iter().enumerate() {
        let path = format!("spec.envFrom[{i}]");
        match (&source.config_map_ref, &source.secret_ref) {
            (Some(r), None) => {
                check_subdomain(&mut errs, &format!("{path}.configMapRef.name"), &r.name)
            }
            (None, Some(r)) => {
                check_subdomain(&mut errs, &format!("{path}.secretRef.name"), &r.name)
            }
            (None, None) => {
                errs.push(path.clone(), ErrorKind::Required, "set one of configMapRef or secretRef")
            }
            (Some(_), Some(_)) => errs.push(
                path.clone(),
                ErrorKind::Forbidden,
                "set only one of configMapRef or secretRef",
            ),
        }
        if let Some(prefix) = &source.prefix
            && !prefix.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            errs.push(
                format!("{path}.prefix"),
                ErrorKind::Invalid,
                format!("{prefix:?}: may contain only letters, digits and '_'"),
            );
        } else if let Some(prefix) = &source.prefix
            && prefix.starts_with(RESERVED_ENV_PREFIX)
        {
            errs.push(
                format!("{path}.prefix"),
                ErrorKind::Forbidden,
                format!("names starting with {RESERVED_ENV_PREFIX} are reserved for the platform"),
            );
        }
    }

    match parse_memory_bytes(&spec.resources.memory) {
        Ok(bytes) if bytes < limits.min_memory_bytes || bytes > limits.max_memory_bytes => errs
            .push(
                "spec.resources.memory",
                ErrorKind::Invalid,
                format!(
                    "{:?}: must be between {}Mi and {}Mi",
                    spec.resources.memory,
                    limits.min_memory_bytes / MIB,
                    limits.max_memory_bytes / MIB
                ),
            ),
        Ok(_) => {}
        Err(why) => errs.push("spec.resources.memory", ErrorKind::Invalid, why),
    }
    match parse_cpu_millis(&spec.resources.cpu) {
        Ok(millis) if millis < limits.min_cpu_millis || millis > limits.max_cpu_millis => errs
            .push(
                "spec.resources.cpu",
                ErrorKind::Invalid,
                format!(
                    "{:?}: must be between {}m and {}m",
                    spec.resources.cpu, limits.min_cpu_millis, limits.max_cpu_millis
                ),
            ),
        Ok(_) => {}
        Err(why) => errs.push("spec.resources.cpu", ErrorKind::Invalid, why),
    }

    check_range(
        &mut errs,
        "spec.timeoutSeconds",
        spec.timeout_seconds,
        1,
        limits.max_timeout_seconds,
    );
    check_range(&mut errs, "spec.maxConcurrency", spec.max_concurrency, 1, 1000);
    check_range(&mut errs, "spec.scaling.minWarm", spec.scaling.min_warm, 0, 100);
    check_range(&mut errs, "spec.scaling.maxInstances", spec.scaling.max_instances, 1, 1000);
    check_range(
        &mut errs,
        "spec.scaling.idleTimeoutSeconds",
        spec.scaling.idle_timeout_seconds,
        1,
        86400,
    );
    if spec.scaling.min_warm > spec.scaling.max_instances {
        errs.push(
            "spec.scaling.minWarm",
            ErrorKind::Invalid,
            format!(
                "{}: must not exceed spec.scaling.maxInstances ({})",
                spec.scaling.min_warm, spec.scaling.max_instances
            ),
        );
    }
    check_range(&mut errs, "spec.retry.maxAttempts", spec.retry.max_attempts, 1, 20);
    check_range(&mut errs, "spec.retry.backoffSeconds", spec.retry.backoff_seconds, 0, 3600);

    errs.finish()
}

/// Validates an Invocation's name and spec on its own (without its function).
pub fn validate_invocation(
    name: &str,
    spec: &InvocationSpec,
    limits: &Limits,
) -> Result<(), ValidationErrors> {
    let mut errs = Collector::default();
    // Invocation names end up only in labels of the Postgres row, so the looser subdomain rule
    // that Kubernetes itself applies is enough (generateName produces such names).
    check_subdomain(&mut errs, "metadata.name", name);
    if spec.function_ref.name.is_empty() {
        errs.push("spec.functionRef.name", ErrorKind::Required, "");
    } else {
        check_name(&mut errs, "spec.functionRef.name", &spec.function_ref.name);
    }
    if let Some(payload) = &spec.payload {
        let size = serde_json::to_vec(payload).map(|v| v.len()).unwrap_or(usize::MAX);
        if size > limits.max_payload_bytes {
            errs.push(
                "spec.payload",
                ErrorKind::TooLong,
                format!("{size} bytes: must be at most {} bytes", limits.max_payload_bytes),
            );
        }
        if let Some(path) = nul_in(payload, "spec.payload".to_owned()) {
            errs.push(
                path,
                ErrorKind::Invalid,
                "text may not contain the character U+0000 (NUL), which PostgreSQL cannot store",
            );
        }
    }
    let mut header_bytes = 0;
    for (key, value) in &spec.headers {
        header_bytes += key.len() + value.len();
        if key.is_empty() || !key.bytes().all(is_header_name_byte) {
            errs.push(
                format!("spec.headers[{key}]"),
                ErrorKind::Invalid,
                "header names may contain only letters, digits and !#$%&'*+-.^_`|~",
            );
        }
        if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
            errs.push(
                format!("spec.headers[{key}]"),
                ErrorKind::Invalid,
                "header values must not contain CR, LF or NUL",
            );
        }
    }
    if header_bytes > limits.max_header_bytes {
        errs.push(
            "spec.headers",
            ErrorKind::TooLong,
            format!("{header_bytes} bytes: must be at most {} bytes", limits.max_header_bytes),
        );
    }
    if let Some(timeout) = spec.timeout_seconds {
        check_range(&mut errs, "spec.timeoutSeconds", timeout, 1, limits.max_timeout_seconds);
    }
    if let Some(ttl) = spec.ttl_seconds_after_finished
        && ttl < 0
    {
        errs.push(
            "spec.ttlSecondsAfterFinished",
            ErrorKind::Invalid,
            format!("{ttl}: must be greater than or equal to 0"),
        );
    }
    errs.finish()
}

/// Checks an invocation against the function it runs: its timeout may only shorten the
/// function's.
pub fn validate_invocation_for_function(
    spec: &InvocationSpec,
    function: &FunctionSpec,
) -> Result<(), ValidationErrors> {
    let mut errs = Collector::default();
    if let Some(timeout) = spec.timeout_seconds
        && timeout > function.timeout_seconds
    {
        errs.push(
            "spec.timeoutSeconds",
            ErrorKind::Invalid,
            format!(
                "{timeout}: must not exceed the function's timeoutSeconds ({})",
                function.timeout_seconds
            ),
        );
    }
    errs.finish()
}

/// Whether `name` is a DNS-1123 label: at most 63 lower-case letters, digits and '-', starting
/// and ending with a letter or digit. Function names must be labels because they become label
/// values and parts of pod and ConfigMap names.
pub fn is_dns1123_label(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes.iter().all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
}

/// Whether `name` is a DNS-1123 subdomain (dot-separated labels, at most 253 characters), the
/// rule for most Kubernetes object names.
pub fn is_dns1123_subdomain(name: &str) -> bool {
    name.len() <= 253 && name.split('.').all(is_dns1123_label)
}

/// Parses a memory quantity (`128Mi`, `1G`, `1e9`) into bytes.
pub fn parse_memory_bytes(quantity: &str) -> Result<u64, String> {
    let parsed = ParsedQuantity::try_from(quantity)
        .map_err(|_| format!("{quantity:?}: not a valid quantity (like 128Mi or 1Gi)"))?;
    parsed.to_bytes_u64().ok_or_else(|| format!("{quantity:?}: must be a positive number of bytes"))
}

/// Parses a CPU quantity (`100m`, `0.5`, `2`) into millicores, rounding up.
pub fn parse_cpu_millis(quantity: &str) -> Result<u64, String> {
    let parsed = ParsedQuantity::try_from(quantity)
        .map_err(|_| format!("{quantity:?}: not a valid quantity (like 100m or 1)"))?;
    let cores = parsed
        .to_bytes_f64()
        .filter(|c| c.is_finite() && *c >= 0.0)
        .ok_or_else(|| format!("{quantity:?}: must be a positive number of cores"))?;
    let millis = (cores * 1000.0).ceil();
    if millis > u64::MAX as f64 {
        return Err(format!("{quantity:?}: too large"));
    }
    Ok(millis as u64)
}

/// Decodes `spec.code.base64`, accepting the standard alphabet with or without padding and
/// ignoring line breaks (base64 tools wrap at 76 columns).
pub fn decode_base64_code(encoded: &str) -> Result<Vec<u8>, base64::DecodeError> {
    let compact: String = encoded.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(compact.as_bytes())
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(compact.as_bytes()))
}

/// Checks the handler syntax of a language. Returns why it is wrong.
fn check_handler(language: Language, handler: &str) -> Result<(), &'static str> {
    match language {
        Language::Python => {
            let parts: Vec<&str> = handler.split('.').collect();
            if parts.len() >= 2 && parts.iter().all(|p| is_identifier(p)) {
                Ok(())
            } else {
                Err("must be module.function, like main.handler")
            }
        }
        Language::Nodejs => {
            let (file, export) =
                handler.rsplit_once('.').ok_or("must be file.export, like index.handler")?;
            let file_ok = !file.is_empty()
                && !file.starts_with('/')
                && file.split('/').all(|seg| {
                    !seg.is_empty()
                        && seg != "."
                        && seg != ".."
                        && seg.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
                });
            if file_ok && is_identifier(export) {
                Ok(())
            } else {
                Err("must be file.export, like index.handler, with a relative file path")
            }
        }
        Language::Go => {
            if is_identifier(handler) && handler.starts_with(|c: char| c.is_ascii_uppercase()) {
                Ok(())
            } else {
                Err("must be the name of an exported function, like Handle")
            }
        }
    }
}

fn check_code(errs: &mut Collector, code: &FunctionCode, limits: &Limits) {
    let FunctionCode { inline, base64, config_map_ref, url, sha256 } = code;
    let set: Vec<&str> = [
        inline.as_ref().map(|_| "inline"),
        base64.as_ref().map(|_| "base64"),
        config_map_ref.as_ref().map(|_| "configMapRef"),
        url.as_ref().map(|_| "url"),
    ]
    .into_iter()
    .flatten()
    .collect();
    match set.len() {
        0 => errs.push(
            "spec.code",
            ErrorKind::Required,
            "set exactly one of inline, base64, configMapRef or url",
        ),
        1 => {}
        _ => errs.push(
            "spec.code",
            ErrorKind::Forbidden,
            format!(
                "set exactly one of inline, base64, configMapRef or url, not {}",
                set.join(" and ")
            ),
        ),
    }

    if let Some(source) = inline {
        if source.is_empty() {
            errs.push("spec.code.inline", ErrorKind::Required, "the source text is empty");
        } else if source.len() > limits.max_code_bytes {
            errs.push(
                "spec.code.inline",
                ErrorKind::TooLong,
                too_long(source.len(), limits.max_code_bytes),
            );
        }
    }
    if let Some(encoded) = base64 {
        // Cheap bound before decoding: base64 is 4 characters for every 3 bytes.
        if encoded.len() / 4 * 3 > limits.max_code_bytes + 3 {
            errs.push(
                "spec.code.base64",
                ErrorKind::TooLong,
                too_long(encoded.len() / 4 * 3, limits.max_code_bytes),
            );
        } else {
            match decode_base64_code(encoded) {
                Ok(bytes) if bytes.is_empty() => {
                    errs.push("spec.code.base64", ErrorKind::Required, "the decoded code is empty")
                }
                Ok(bytes) if bytes.len() > limits.max_code_bytes => errs.push(
                    "spec.code.base64",
                    ErrorKind::TooLong,
                    too_long(bytes.len(), limits.max_code_bytes),
                ),
                Ok(_) => {}
                Err(err) => errs.push(
                    "spec.code.base64",
                    ErrorKind::Invalid,
                    format!("not valid base64: {err}"),
                ),
            }
        }
    }
    if let Some(reference) = config_map_ref {
        check_subdomain(errs, "spec.code.configMapRef.name", &reference.name);
        let key_ok = !reference.key.is_empty()
            && reference.key.len() <= 253
            && reference.key.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
        if !key_ok {
            errs.push(
                "spec.code.configMapRef.key",
                ErrorKind::Invalid,
                format!("{:?}: must be 1 to 253 letters, digits, '-', '_' or '.'", reference.key),
            );
        }
    }
    if let Some(url) = url {
        let rest = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://"));
        let host_ok = rest.is_some_and(|r| {
            let host = r.split(['/', '?', '#']).next().unwrap_or("");
            !host.is_empty() && !host.contains('@')
        });
        if !host_ok || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
            errs.push(
                "spec.code.url",
                ErrorKind::Invalid,
                format!("{url:?}: must be an http:// or https:// address with a host"),
            );
        }
        if sha256.is_none() {
            errs.push("spec.code.sha256", ErrorKind::Required, "required with spec.code.url");
        }
    }
    if let Some(digest) = sha256 {
        if url.is_none() {
            errs.push(
                "spec.code.sha256",
                ErrorKind::Forbidden,
                "only meaningful with spec.code.url",
            );
        }
        if digest.len() != 64
            || !digest.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            errs.push(
                "spec.code.sha256",
                ErrorKind::Invalid,
                format!("{digest:?}: must be 64 lower-case hexadecimal characters"),
            );
        }
    }
}

fn check_env(errs: &mut Collector, env: &BTreeMap<String, String>, limits: &Limits) {
    let mut total = 0;
    for (name, value) in env {
        total += name.len() + value.len();
        let path = format!("spec.env[{name}]");
        if !is_env_name(name) {
            errs.push(
                path,
                ErrorKind::Invalid,
                "must start with a letter or '_' and contain only letters, digits and '_'",
            );
        } else if name.starts_with(RESERVED_ENV_PREFIX) {
            errs.push(
                path,
                ErrorKind::Forbidden,
                format!("names starting with {RESERVED_ENV_PREFIX} are reserved for the platform"),
            );
        } else if value.contains('\0') {
            errs.push(path, ErrorKind::Invalid, "values must not contain NUL");
        }
    }
    if total > limits.max_env_bytes {
        errs.push("spec.env", ErrorKind::TooLong, too_long(total, limits.max_env_bytes));
    }
}

fn check_name(errs: &mut Collector, path: &str, name: &str) {
    if name.is_empty() {
        errs.push(path, ErrorKind::Required, "");
    } else if !is_dns1123_label(name) {
        errs.push(
            path,
            ErrorKind::Invalid,
            format!(
                "{name:?}: a DNS-1123 label must consist of at most 63 lower case alphanumeric \
                 characters or '-', and must start and end with an alphanumeric character"
            ),
        );
    }
}

fn check_subdomain(errs: &mut Collector, path: &str, name: &str) {
    if name.is_empty() {
        errs.push(path, ErrorKind::Required, "");
    } else if !is_dns1123_subdomain(name) {
        errs.push(
            path,
            ErrorKind::Invalid,
            format!(
                "{name:?}: a DNS-1123 subdomain must consist of lower case alphanumeric \
                 characters, '-' or '.', and must start and end with an alphanumeric character"
            ),
        );
    }
}

fn check_range(errs: &mut Collector, path: &str, value: i32, min: i32, max: i32) {
    if value < min || value > max {
        errs.push(path, ErrorKind::Invalid, format!("{value}: must be between {min} and {max}"));
    }
}

fn too_long(size: usize, max: usize) -> String {
    format!("{size} bytes: must be at most {max} bytes")
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

pub(crate) fn is_env_name(s: &str) -> bool {
    is_identifier(s)
}

fn is_header_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn quoted_list(items: impl Iterator<Item = &'static str>) -> String {
    items.map(|s| format!("{s:?}")).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::{ConfigMapKeyRef, EnvFromSource, LocalObjectRef};

    fn python_hello() -> FunctionSpec {
        FunctionSpec::new(
            "python",
            "main.handler",
            FunctionCode::inline("def handler(event, context):\n    return event\n"),
        )
    }

    #[cfg(feature = "flags")]
    #[derive(clap::Parser)]
    struct Flags {
        #[command(flatten)]
        limits: LimitFlags,
    }

    #[cfg(feature = "flags")]
    fn limits_from(args: &[&str]) -> Result<Limits, String> {
        use clap::Parser as _;
        let flags = Flags::try_parse_from(std::iter::once("test").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        flags.limits.limits()
    }

    #[cfg(feature = "flags")]
    #[test]
    fn limit_flags_default_to_the_defaults_and_change_what_validation_allows() {
        assert_eq!(limits_from(&[]).unwrap(), Limits::default());
        let mut spec = python_hello();
        spec.timeout_seconds = 1800;
        let defaults = Limits::default();
        assert!(validate_function("hello", &spec, &defaults).is_err());
        let longer = limits_from(&["--max-timeout-seconds", "3600"]).unwrap();
        assert!(validate_function("hello", &spec, &longer).is_ok());
        let error = limits_from(&["--max-timeout-seconds", "7200"]).unwrap_err();
        assert!(error.contains("--max-timeout-seconds"), "{error}");
        let error = limits_from(&["--min-memory-mb", "512", "--max-memory-mb", "256"]).unwrap_err();
        assert!(error.contains("--min-memory-mb (512) is above --max-memory-mb (256)"), "{error}");
    }

    fn errors_of(spec: &FunctionSpec) -> ValidationErrors {
        validate_function("hello", spec, &Limits::default()).expect_err("spec should be rejected")
    }

    #[test]
    fn a_complete_python_function_is_valid() {
        assert_eq!(validate_function("hello", &python_hello(), &Limits::default()), Ok(()));
    }

    #[test]
    fn every_problem_is_reported_at_once_with_its_field() {
        let mut spec = python_hello();
        spec.runtime = "ruby".into();
        spec.timeout_seconds = 0;
        spec.resources.memory = "lots".into();
        spec.env.insert("1BAD".into(), "x".into());
        let errs = validate_function("Hello_World", &spec, &Limits::default()).unwrap_err();
        for path in [
            "metadata.name",
            "spec.runtime",
            "spec.timeoutSeconds",
            "spec.resources.memory",
            "spec.env[1BAD]",
        ] {
            assert!(errs.mentions(path), "{path} missing from: {errs}");
        }
        assert_eq!(errs.errors().len(), 5, "{errs}");
    }

    #[test]
    fn unknown_runtime_lists_the_supported_ones() {
        let mut spec = python_hello();
        spec.runtime = "ruby".into();
        let message = errors_of(&spec).to_string();
        assert!(message.starts_with("spec.runtime: Unsupported value: \"ruby\""), "{message}");
        assert!(message.contains("\"python\"") && message.contains("\"go\""), "{message}");
    }

    #[test]
    fn code_needs_exactly_one_source() {
        let mut spec = python_hello();
        spec.code = FunctionCode::default();
        assert!(errors_of(&spec).to_string().contains("spec.code: Required value"));

        spec.code = FunctionCode {
            inline: Some("x = 1".into()),
            base64: Some("eCA9IDE=".into()),
            ..FunctionCode::default()
        };
        let message = errors_of(&spec).to_string();
        assert!(message.contains("not inline and base64"), "{message}");
    }

    #[test]
    fn base64_code_must_decode_and_fit() {
        let mut spec = python_hello();
        spec.code = FunctionCode { base64: Some("not base64!".into()), ..Default::default() };
        assert!(errors_of(&spec).mentions("spec.code.base64"));

        let limits = Limits { max_code_bytes: 4, ..Limits::default() };
        spec.code = FunctionCode { base64: Some("aGVsbG8gd29ybGQ=".into()), ..Default::default() };
        let errs = validate_function("hello", &spec, &limits).unwrap_err();
        assert_eq!(errs.errors()[0].kind, ErrorKind::TooLong, "{errs}");

        spec.code =
            FunctionCode { base64: Some("aGVsbG8g\nd29ybGQ=\n".into()), ..Default::default() };
        assert_eq!(validate_function("hello", &spec, &Limits::default()), Ok(()));
    }

    #[test]
    fn url_code_needs_a_sha256_and_an_http_address() {
        let mut spec = python_hello();
        spec.code =
            FunctionCode { url: Some("ftp://example.test/f.zip".into()), ..Default::default() };
        let errs = errors_of(&spec);
        assert!(errs.mentions("spec.code.url") && errs.mentions("spec.code.sha256"), "{errs}");

        spec.code = FunctionCode {
            url: Some("https://example.test/f.zip".into()),
            sha256: Some("ab".repeat(32)),
            ..Default::default()
        };
        assert_eq!(validate_function("hello", &spec, &Limits::default()), Ok(()));
    }

    #[test]
    fn config_map_code_reference_is_checked() {
        let mut spec = python_hello();
        spec.code = FunctionCode {
            config_map_ref: Some(ConfigMapKeyRef {
                name: "Bad_Name".into(),
                key: "main.py".into(),
            }),
            ..Default::default()
        };
        assert!(errors_of(&spec).mentions("spec.code.configMapRef.name"));
    }

    #[test]
    fn handler_syntax_depends_on_the_language() {
        let cases = [
            ("python", "main.handler", true),
            ("python", "pkg.module.handler", true),
            ("python", "handler", false),
            ("python", "main.", false),
            ("nodejs", "index.handler", true),
            ("nodejs", "src/index.handler", true),
            ("nodejs", "../index.handler", false),
            ("nodejs", "index", false),
            ("go", "Handle", true),
            ("go", "handle", false),
            ("go", "main.Handle", false),
        ];
        for (runtime, handler, ok) in cases {
            let mut spec = python_hello();
            spec.runtime = runtime.into();
            spec.handler = handler.into();
            let result = validate_function("hello", &spec, &Limits::default());
            assert_eq!(result.is_ok(), ok, "{runtime} {handler}: {result:?}");
        }
    }

    #[test]
    fn resources_must_be_quantities_within_the_platform_bounds() {
        let mut spec = python_hello();
        spec.resources.memory = "8Mi".into();
        spec.resources.cpu = "64".into();
        let errs = errors_of(&spec);
        assert!(errs.mentions("spec.resources.memory") && errs.mentions("spec.resources.cpu"));

        spec.resources.memory = "1Gi".into();
        spec.resources.cpu = "0.5".into();
        assert_eq!(validate_function("hello", &spec, &Limits::default()), Ok(()));
    }

    #[test]
    fn quantities_parse_to_bytes_and_millicores() {
        assert_eq!(parse_memory_bytes("128Mi"), Ok(128 * MIB));
        assert_eq!(parse_memory_bytes("1G"), Ok(1_000_000_000));
        assert_eq!(parse_cpu_millis("100m"), Ok(100));
        assert_eq!(parse_cpu_millis("1.5"), Ok(1500));
        assert!(parse_memory_bytes("12 apples").is_err());
    }

    #[test]
    fn timeout_above_the_configured_maximum_is_rejected() {
        let mut spec = python_hello();
        spec.timeout_seconds = 901;
        assert!(errors_of(&spec).mentions("spec.timeoutSeconds"));
        let generous = Limits { max_timeout_seconds: 3600, ..Limits::default() };
        assert_eq!(validate_function("hello", &spec, &generous), Ok(()));
    }

    #[test]
    fn min_warm_may_not_exceed_max_instances() {
        let mut spec = python_hello();
        spec.scaling.min_warm = 5;
        spec.scaling.max_instances = 2;
        assert!(errors_of(&spec).mentions("spec.scaling.minWarm"));
    }

    #[test]
    fn reserved_and_malformed_environment_names_are_rejected() {
        let mut spec = python_hello();
        spec.env.insert("KUBEFAAS_TOKEN".into(), "x".into());
        spec.env.insert("GOOD_NAME".into(), "x".into());
        let errs = errors_of(&spec);
        assert_eq!(errs.errors().len(), 1, "{errs}");
        assert_eq!(errs.errors()[0].kind, ErrorKind::Forbidden);
    }

    #[test]
    fn env_from_needs_exactly_one_reference() {
        let mut spec = python_hello();
        spec.env_from.push(EnvFromSource::default());
        spec.env_from.push(EnvFromSource {
            config_map_ref: Some(LocalObjectRef { name: "a".into() }),
            secret_ref: Some(LocalObjectRef { name: "b".into() }),
            prefix: None,
        });
        let errs = errors_of(&spec);
        assert!(errs.mentions("spec.envFrom[0]") && errs.mentions("spec.envFrom[1]"), "{errs}");
    }

    #[test]
    fn env_from_prefixes_may_not_claim_the_platform_names() {
        let mut spec = python_hello();
        spec.env_from.push(EnvFromSource {
            secret_ref: Some(LocalObjectRef { name: "db".into() }),
            prefix: Some("KUBEFAAS_DB_".into()),
            ..EnvFromSource::default()
        });
        let errs = errors_of(&spec);
        assert_eq!(errs.errors().len(), 1, "{errs}");
        assert_eq!(errs.errors()[0].path, "spec.envFrom[0].prefix");
        assert_eq!(errs.errors()[0].kind, ErrorKind::Forbidden);
    }

    #[test]
    fn function_names_are_dns_labels() {
        assert!(is_dns1123_label("hello-world-2"));
        for bad in ["", "-hello", "hello-", "Hello", "hello.world", &"a".repeat(64)] {
            assert!(!is_dns1123_label(bad), "{bad}");
        }
        assert!(is_dns1123_subdomain("hello.world"));
    }

    #[test]
    fn a_payload_with_nul_in_its_text_is_refused_where_it_is() {
        let limits = Limits::default();
        let ok = InvocationSpec::new("hello", serde_json::json!({"a": ["x", {"b": "fine"}]}));
        assert!(validate_invocation("inv-1", &ok, &limits).is_ok());
        for (payload, path) in [
            (serde_json::json!({"a": ["x", {"b": "nul\u{0}here"}]}), "spec.payload.a[1].b"),
            (serde_json::json!({"k\u{0}": 1}), "spec.payload.k\u{0}"),
            (serde_json::json!("\u{0}"), "spec.payload"),
        ] {
            let spec = InvocationSpec::new("hello", payload);
            let errs = validate_invocation("inv-1", &spec, &limits).unwrap_err();
            assert!(errs.errors().iter().any(|e| e.path == path), "{path}: {errs}");
        }
    }

    #[test]
    fn invocation_payload_and_headers_are_bounded() {
        let limits = Limits { max_payload_bytes: 16, max_header_bytes: 8, ..Limits::default() };
        let mut spec =
            InvocationSpec::new("hello", serde_json::json!({"text": "far too long for this"}));
        spec.headers.insert("X-Trace".into(), "abcdefgh".into());
        spec.headers.insert("bad header".into(), "v".into());
        let errs = validate_invocation("inv-1", &spec, &limits).unwrap_err();
        assert!(errs.mentions("spec.payload"), "{errs}");
        assert!(errs.errors().iter().any(|e| e.path == "spec.headers"), "{errs}");
        assert!(errs.mentions("spec.headers[bad header]"), "{errs}");
    }

    #[test]
    fn invocation_needs_a_function_and_a_positive_timeout() {
        let mut spec = InvocationSpec::new("", serde_json::Value::Null);
        spec.timeout_seconds = Some(0);
        spec.ttl_seconds_after_finished = Some(-1);
        let errs = validate_invocation("inv-1", &spec, &Limits::default()).unwrap_err();
        for path in ["spec.functionRef.name", "spec.timeoutSeconds", "spec.ttlSecondsAfterFinished"]
        {
            assert!(errs.mentions(path), "{path}: {errs}");
        }
    }

    #[test]
    fn invocation_timeout_may_only_shorten_the_functions() {
        let function = python_hello();
        let mut spec = InvocationSpec::new("hello", serde_json::json!(1));
        spec.timeout_seconds = Some(10);
        assert_eq!(validate_invocation_for_function(&spec, &function), Ok(()));
        spec.timeout_seconds = Some(31);
        assert!(validate_invocation_for_function(&spec, &function).is_err());
    }
}
