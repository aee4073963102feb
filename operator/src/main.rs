//! `kubefaas-operator`: parses flags, sets up logging and runs the operator until SIGTERM or
//! Ctrl-C.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use clap::Parser;
use kubefaas_core::validation::LimitFlags;
use kubefaas_operator::{Config, fetch::FetchConfig, run};
use tracing_subscriber::EnvFilter;

/// Reconciles kubefaas Function and Invocation resources.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Flags {
    /// PostgreSQL URL.
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    /// Redis URL.
    #[arg(long, env = "REDIS_URL")]
    redis_url: String,
    /// Prefix of every Redis key; the executor must use the same.
    #[arg(long, env = "KUBEFAAS_QUEUE_PREFIX", default_value = "kubefaas")]
    queue_prefix: String,
    /// Address of the /metrics, /healthz and /readyz endpoint.
    #[arg(long, env = "KUBEFAAS_OPERATOR_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    http_addr: SocketAddr,
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "KUBEFAAS_NAMESPACE")]
    namespace: Option<String>,
    /// Seconds an Invocation waits for its function to be ready before it fails.
    #[arg(long, env = "KUBEFAAS_FUNCTION_WAIT_SECONDS", default_value_t = 60)]
    function_wait_seconds: u64,
    /// Seconds one download of `spec.code.url` may take, redirects and body included.
    #[arg(long, env = "KUBEFAAS_CODE_DOWNLOAD_TIMEOUT_SECONDS", default_value_t = 60)]
    code_download_timeout_seconds: u64,
    /// PEM file of extra certificate authorities trusted for `spec.code.url` downloads, besides
    /// the system's (for artifact servers with a private CA).
    #[arg(long, env = "KUBEFAAS_CODE_CA_FILE")]
    code_ca_file: Option<PathBuf>,
    /// Let `spec.code.url` reach addresses that are not public: loopback, private networks,
    /// link-local (cloud metadata), and names that resolve only to such. Off by default, since
    /// whoever writes a Function chooses the address.
    #[arg(long, env = "KUBEFAAS_CODE_ALLOW_PRIVATE_ADDRESSES")]
    code_allow_private_addresses: bool,
    /// Seconds between two writes of one function's `status.lastInvokedAt` (at most): a busy
    /// function's status is written once per period, with its newest invocation.
    #[arg(
        long,
        env = "KUBEFAAS_LAST_INVOKED_FLUSH_SECONDS",
        default_value_t = kubefaas_operator::DEFAULT_LAST_INVOKED_FLUSH.as_secs(),
        value_parser = clap::value_parser!(u64).range(1..=3600)
    )]
    last_invoked_flush_seconds: u64,
    #[command(flatten)]
    limits: LimitFlags,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let flags = Flags::parse();
    let limits = match flags.limits.limits() {
        Ok(limits) => limits,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    let extra_ca_pem = match &flags.code_ca_file {
        Some(path) => match std::fs::read(path) {
            Ok(pem) => Some(pem),
            Err(error) => {
                tracing::error!(path = %path.display(), %error, "cannot read --code-ca-file");
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };
    let code_download = FetchConfig {
        timeout: Duration::from_secs(flags.code_download_timeout_seconds),
        // Downloaded code is stored in the code ConfigMap too: the same bound.
        max_bytes: limits.max_code_bytes,
        extra_ca_pem,
        allow_private_addresses: flags.code_allow_private_addresses,
    };
    let config = Config {
        database_url: flags.database_url,
        redis_url: flags.redis_url,
        queue_prefix: flags.queue_prefix,
        http_addr: flags.http_addr,
        namespace: flags.namespace,
        function_wait: Duration::from_secs(flags.function_wait_seconds),
        limits,
        code_download,
        last_invoked_flush: Duration::from_secs(flags.last_invoked_flush_seconds),
    };
    match run(config, kubefaas_core::service::shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = %error, "kubefaas-operator stopped");
            ExitCode::FAILURE
        }
    }
}
