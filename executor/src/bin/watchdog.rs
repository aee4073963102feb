//! `kubefaas-watchdog`: serves one function over HTTP inside a runtime container. Configured
//! by `KUBEFAAS_*` environment variables (see `kubefaas_executor::watchdog::env`).

use std::process::ExitCode;

use kubefaas_executor::watchdog::{WatchdogConfig, run};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    match serve().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = %error, "kubefaas-watchdog stopped");
            ExitCode::FAILURE
        }
    }
}

async fn serve() -> Result<(), Box<dyn std::error::Error>> {
    let config = WatchdogConfig::from_vars(std::env::vars())?;
    let listener = tokio::net::TcpListener::bind(&config.listen).await?;
    run(config, listener, kubefaas_core::service::shutdown_signal()).await?;
    Ok(())
}
