//! Commands that talk to the REST gateway, in the earlier design's JSON.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use base64::Engine;
use clap::{Args, Subcommand};
use kubefaas_core::resources::Function;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::{CliError, Output};

/// `kubefaas fn …`
#[derive(Debug, Subcommand)]
pub(crate) enum FunctionCommand {
    /// Create a function from a file or from flags.
    Create(CreateArgs),
    /// List functions.
    List {
        /// Only this runtime.
        #[arg(long)]
        runtime: Option<String>,
        /// Page size.
        #[arg(long)]
        limit: Option<u32>,
        /// Functions to skip.
        #[arg(long)]
        offset: Option<u32>,
    },
    /// Show one function.
    Get {
        /// Name or id.
        function: String,
    },
    /// Delete a function (its history stays).
    Delete {
        /// Name or id.
        function: String,
    },
}

/// `kubefaas fn create`
#[derive(Debug, Args)]
pub(crate) struct CreateArgs {
    /// A Function manifest (YAML, as for kubectl) or a REST create body (JSON).
    #[arg(short = 'f', long, conflicts_with_all = ["name", "code"])]
    file: Option<PathBuf>,
    /// Function name.
    #[arg(long, required_unless_present = "file")]
    name: Option<String>,
    /// Runtime: python, nodejs, go (or a version-qualified name).
    #[arg(long, default_value = "python")]
    runtime: String,
    /// Handler, e.g. main.handler.
    #[arg(long, default_value = "main.handler")]
    handler: String,
    /// File with the code: one source file or a zip archive.
    #[arg(long, required_unless_present = "file")]
    code: Option<PathBuf>,
    /// Version label.
    #[arg(long, default_value = "1.0.0")]
    version: String,
    /// Timeout in seconds.
    #[arg(long, default_value_t = 30)]
    timeout: u32,
    /// Memory limit in MiB.
    #[arg(long, default_value_t = 128)]
    memory_mb: u32,
    /// Most invocations at once.
    #[arg(long, default_value_t = 10)]
    max_concurrency: u32,
    /// Environment variable NAME=VALUE (repeatable).
    #[arg(long = "env", value_name = "NAME=VALUE")]
    env: Vec<String>,
}

/// `kubefaas invoke`
#[derive(Debug, Args)]
pub(crate) struct InvokeArgs {
    /// Function name.
    function: String,
    /// JSON payload.
    #[arg(short = 'd', long, default_value = "{}")]
    payload: String,
    /// Queue the invocation and print its id instead of waiting for the result.
    #[arg(long = "async")]
    asynchronous: bool,
    /// With --async: wait for the result anyway (polling), up to --timeout.
    #[arg(long, requires = "asynchronous")]
    wait: bool,
    /// Seconds to wait for the result.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
}

/// A client of the gateway.
#[derive(Debug)]
pub(crate) struct Gateway {
    base: String,
    http: reqwest::Client,
    token: Option<String>,
    namespace: Option<String>,
    output: Output,
}

impl Gateway {
    pub(crate) fn new(
        base: &str,
        ca_file: Option<&std::path::Path>,
        token: Option<String>,
        namespace: Option<String>,
        output: Output,
    ) -> Result<Self, CliError> {
        let mut builder =
            kubefaas_core::http::client_builder().connect_timeout(Duration::from_secs(5));
        if let Some(path) = ca_file {
            let pem = std::fs::read(path).map_err(|source| CliError::Io {
                what: format!("reading --ca-file {}", path.display()),
                source,
            })?;
            builder = kubefaas_core::http::trust_extra_cas(builder, &pem)
                .map_err(|e| CliError::Usage(format!("--ca-file {}: {e}", path.display())))?;
        }
        let http = builder.build().map_err(|e| CliError::Usage(format!("HTTP client: {e}")))?;
        Ok(Self { base: base.trim_end_matches('/').to_owned(), http, token, namespace, output })
    }

    /// One request; a JSON error body becomes a [`CliError::Api`] naming its code and message.
    async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<(StatusCode, reqwest::header::HeaderMap, Value), CliError> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.request(method, &url).query(query);
        if let Some(namespace) = &self.namespace {
            request = request.query(&[("namespace", namespace)]);
        }
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|e| CliError::Unreachable {
            url: self.base.clone(),
            message: e.to_string(),
        })?;
        let status = response.status();
        let headers = response.headers().clone();
        let text = response
            .text()
            .await
            .map_err(|e| CliError::Unreachable { url: url.clone(), message: e.to_string() })?;
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if status.is_client_error() || status.is_server_error() {
            let message = match value.pointer("/error") {
                Some(error) => format!(
                    "{} ({})",
                    error.get("message").and_then(Value::as_str).unwrap_or("no message"),
                    error
                        .get("code")
                        .map(|c| c.to_string().trim_matches('"').to_owned())
                        .unwrap_or_default()
                ),
                None => value.to_string(),
            };
            return Err(CliError::Api { status: status.as_u16(), message });
        }
        Ok((status, headers, value))
    }

    fn print_json(&self, value: &Value) {
        out!("{}", serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string()));
    }

    pub(crate) async fn function(&self, command: FunctionCommand) -> Result<(), CliError> {
        match command {
            FunctionCommand::Create(args) => {
                let body = create_body(&args)?;
                let (_, _, created) =
                    self.call(Method::POST, "/functions", &[], Some(&body)).await?;
                match self.output {
                    Output::Json => self.print_json(&created),
                    Output::Text => out!(
                        "function {} created (id {})",
                        field(&created, "name"),
                        field(&created, "id")
                    ),
                }
            }
            FunctionCommand::List { runtime, limit, offset } => {
                let mut query = Vec::new();
                if let Some(runtime) = runtime {
                    query.push(("runtime", runtime));
                }
                if let Some(limit) = limit {
                    query.push(("limit", limit.to_string()));
                }
                if let Some(offset) = offset {
                    query.push(("offset", offset.to_string()));
                }
                let (_, _, listed) = self.call(Method::GET, "/functions", &query, None).await?;
                match self.output {
                    Output::Json => self.print_json(&listed),
                    Output::Text => print_function_table(&listed),
                }
            }
            FunctionCommand::Get { function } => {
                let (_, _, got) =
                    self.call(Method::GET, &format!("/functions/{function}"), &[], None).await?;
                match self.output {
                    Output::Json => self.print_json(&got),
                    Output::Text => {
                        for key in [
                            "id",
                            "name",
                            "version",
                            "runtime",
                            "handler",
                            "status",
                            "created_at",
                            "updated_at",
                        ] {
                            out!("{key:<11} {}", field(&got, key));
                        }
                        out!(
                            "{:<11} {}",
                            "checksum",
                            got.pointer("/code/checksum").and_then(Value::as_str).unwrap_or("-")
                        );
                        out!(
                            "{:<11} {}s",
                            "timeout",
                            got.pointer("/config/timeout").map_or("-".into(), Value::to_string)
                        );
                        out!(
                            "{:<11} {} MiB",
                            "memory",
                            got.pointer("/config/memory_mb").map_or("-".into(), Value::to_string)
                        );
                    }
                }
            }
            FunctionCommand::Delete { function } => {
                let (_, _, deleted) =
                    self.call(Method::DELETE, &format!("/functions/{function}"), &[], None).await?;
                match self.output {
                    Output::Json => self.print_json(&deleted),
                    Output::Text => out!("function {function} deleted"),
                }
            }
        }
        Ok(())
    }

    pub(crate) async fn invoke(&self, args: InvokeArgs) -> Result<(), CliError> {
        let payload: Value = serde_json::from_str(&args.payload)
            .map_err(|e| CliError::Usage(format!("--payload is not JSON: {e}")))?;
        if !args.asynchronous {
            let path = format!("/functions/{}/invoke", args.function);
            let (_, headers, result) = self.call(Method::POST, &path, &[], Some(&payload)).await?;
            if let Some(id) = headers.get("x-kubefaas-invocation-id").and_then(|v| v.to_str().ok())
            {
                eprintln!("invocation {id}");
            }
            self.print_json(&result);
            return Ok(());
        }
        let body = json!({"function": args.function, "payload": payload});
        let (_, _, accepted) = self.call(Method::POST, "/invoke", &[], Some(&body)).await?;
        let id = field(&accepted, "invocation_id");
        if !args.wait {
            match self.output {
                Output::Json => self.print_json(&accepted),
                Output::Text => out!("{id}"),
            }
            return Ok(());
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(args.timeout);
        loop {
            let (_, _, invocation) =
                self.call(Method::GET, &format!("/invocations/{id}"), &[], None).await?;
            let status = field(&invocation, "status");
            if ["succeeded", "failed", "timed_out", "completed"].contains(&status.as_str()) {
                match self.output {
                    Output::Json => self.print_json(&invocation),
                    Output::Text => {
                        eprintln!("invocation {id}: {status}");
                        let shown = invocation
                            .get("result")
                            .filter(|r| !r.is_null())
                            .or_else(|| invocation.get("error"));
                        self.print_json(shown.unwrap_or(&Value::Null));
                    }
                }
                return if status == "succeeded" || status == "completed" {
                    Ok(())
                } else {
                    Err(CliError::Api {
                        status: 200,
                        message: format!("invocation {id} ended {status}"),
                    })
                };
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(CliError::Usage(format!(
                    "invocation {id} still {status} after {} s",
                    args.timeout
                )));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    pub(crate) async fn logs(&self, id: &str) -> Result<(), CliError> {
        let (_, _, logs) =
            self.call(Method::GET, &format!("/invocations/{id}/logs"), &[], None).await?;
        match (self.output, &logs) {
            (Output::Json, _) => self.print_json(&logs),
            (Output::Text, Value::String(text)) => out_raw!("{text}"),
            (Output::Text, other) => {
                out_raw!("{}", other.get("logs").and_then(Value::as_str).unwrap_or_default())
            }
        }
        Ok(())
    }
}

fn field(value: &Value, key: &str) -> String {
    match value.get(key) {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Null) | None => "-".to_owned(),
        Some(other) => other.to_string(),
    }
}

fn print_function_table(listed: &Value) {
    let empty = Vec::new();
    let functions = listed
        .as_array()
        .or_else(|| listed.get("functions").and_then(Value::as_array))
        .unwrap_or(&empty);
    out!("{:<24} {:<10} {:<10} {:<8} ID", "NAME", "RUNTIME", "VERSION", "STATUS");
    for function in functions {
        out!(
            "{:<24} {:<10} {:<10} {:<8} {}",
            field(function, "name"),
            field(function, "runtime"),
            field(function, "version"),
            field(function, "status"),
            field(function, "id")
        );
    }
}

/// The REST create body, from `-f FILE` (a Function manifest or a REST body) or from flags.
fn create_body(args: &CreateArgs) -> Result<Value, CliError> {
    if let Some(path) = &args.file {
        let text = std::fs::read_to_string(path).map_err(|source| CliError::Io {
            what: format!("reading {}", path.display()),
            source,
        })?;
        if let Ok(body) = serde_json::from_str::<Value>(&text)
            && body.get("kind").is_none()
        {
            return Ok(body);
        }
        let function: Function = serde_saphyr::from_str(&text).map_err(|e| {
            CliError::Usage(format!(
                "{}: not a Function manifest or REST body: {e}",
                path.display()
            ))
        })?;
        return manifest_body(&function);
    }
    let (Some(name), Some(code)) = (&args.name, &args.code) else {
        return Err(CliError::Usage("give -f FILE, or --name and --code".into()));
    };
    let bytes = std::fs::read(code)
        .map_err(|source| CliError::Io { what: format!("reading {}", code.display()), source })?;
    let mut environment = BTreeMap::new();
    for pair in &args.env {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| CliError::Usage(format!("--env {pair:?}: expected NAME=VALUE")))?;
        environment.insert(key.to_owned(), value.to_owned());
    }
    Ok(json!({
        "name": name,
        "version": args.version,
        "runtime": args.runtime,
        "handler": args.handler,
        "code": base64::engine::general_purpose::STANDARD.encode(bytes),
        "timeout": args.timeout,
        "memory_mb": args.memory_mb,
        "max_concurrency": args.max_concurrency,
        "environment": environment,
    }))
}

/// A Function manifest as a REST create body.
fn manifest_body(function: &Function) -> Result<Value, CliError> {
    let spec = &function.spec;
    let name = function
        .metadata
        .name
        .clone()
        .ok_or_else(|| CliError::Usage("the manifest has no metadata.name".into()))?;
    let code = match (&spec.code.inline, &spec.code.base64) {
        (Some(text), _) => base64::engine::general_purpose::STANDARD.encode(text),
        (None, Some(encoded)) => encoded.clone(),
        _ => return Err(CliError::Usage("only inline or base64 code can be sent through the gateway; apply other manifests with kubectl".into())),
    };
    let memory_mb = kubefaas_core::validation::parse_memory_bytes(&spec.resources.memory)
        .map(|bytes| bytes.div_ceil(1024 * 1024))
        .map_err(|e| CliError::Usage(format!("spec.resources.memory: {e}")))?;
    Ok(json!({
        "name": name,
        "version": spec.version,
        "runtime": spec.runtime,
        "handler": spec.handler,
        "code": code,
        "timeout": spec.timeout_seconds,
        "memory_mb": memory_mb,
        "max_concurrency": spec.max_concurrency,
        "environment": spec.env,
    }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_python_example_manifest_becomes_a_rest_body() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../examples/function.yaml"
        ))
        .unwrap();
        let function: Function = serde_saphyr::from_str(&text).unwrap();
        let body = manifest_body(&function).unwrap();
        assert_eq!(body["name"], "hello");
        assert_eq!(body["runtime"], "python");
        assert_eq!(body["memory_mb"], 128);
        let code = base64::engine::general_purpose::STANDARD
            .decode(body["code"].as_str().unwrap())
            .unwrap();
        assert!(String::from_utf8(code).unwrap().contains("def handler"));
    }
}
