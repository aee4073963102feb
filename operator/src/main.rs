//! `kubefaas-operator`: parses flags, sets up logging and runs the operator until SIGTERM or
//! Ctrl-C.

use std::{net::SocketAddr, process::ExitCode, time::Duration};

use clap::Parser;
use kubefaas_core::validation::Limits;
use kubefaas_operator::{Config, run};
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
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let flags = Flags::parse();
    let config = Config {
        database_url: flags.database_url,
        redis_url: flags.redis_url,
        queue_prefix: flags.queue_prefix,
        http_addr: flags.http_addr,
        namespace: flags.namespace,
        function_wait: Duration::from_secs(flags.function_wait_seconds),
        limits: Limits::default(),
    };
    match run(config, kubefaas_core::service::shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = %error, "kubefaas-operator stopped");
            ExitCode::FAILURE
        }
    }
}
