//! `kubefaas-executor`: parses flags, sets up logging and consumes the invocation queue until
//! SIGTERM or Ctrl-C, then finishes in-flight work within the grace period.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, ValueEnum};
use kubefaas_executor::{
    SandboxMode,
    kubernetes::KubernetesConfig,
    service::{ExecutorConfig, run, run_kubernetes},
    worker::WorkerConfig,
};
use tracing_subscriber::EnvFilter;

/// Where function instances run.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum Backend {
    /// Processes on this machine with cgroup limits where the host allows, but as the
    /// executor's user, seeing its file system and network: unsafe for untrusted code (see
    /// `executor/SANDBOX.md`). Never the default.
    #[value(name = "local-unsafe")]
    Local,
    /// Runtime pods created through the Kubernetes API (a node agent runs them in standalone
    /// mode).
    Kubernetes,
}

/// Runs kubefaas invocations from the queue.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Flags {
    /// PostgreSQL URL.
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    /// Redis URL.
    #[arg(long, env = "REDIS_URL")]
    redis_url: String,
    /// Prefix of every Redis key; the operator must use the same.
    #[arg(long, env = "KUBEFAAS_QUEUE_PREFIX", default_value = "kubefaas")]
    queue_prefix: String,
    /// Where function instances run: runtime pods (`kubernetes`), or `local-unsafe` processes of
    /// the executor's own machine, which are not isolated enough for untrusted code.
    #[arg(long, env = "KUBEFAAS_BACKEND", value_enum, default_value = "kubernetes")]
    backend: Backend,
    /// Registry prefix of runtime images for the kubernetes backend (e.g. `registry.example/kf`).
    #[arg(long, env = "KUBEFAAS_IMAGE_PREFIX", default_value = "")]
    image_prefix: String,
    /// Working directory of the local backend (instances, caches).
    #[arg(long, env = "KUBEFAAS_WORK_DIR", default_value = "/var/lib/kubefaas-executor")]
    work_dir: PathBuf,
    /// This executor's name in the consumer group and as lease owner (default: POD_NAME or the
    /// host name, plus the process id).
    #[arg(long, env = "KUBEFAAS_EXECUTOR_NAME")]
    name: Option<String>,
    /// Most invocations in flight at once.
    #[arg(long, env = "KUBEFAAS_MAX_IN_FLIGHT", default_value_t = 16)]
    max_in_flight: usize,
    /// Lease length in seconds (renewed while an invocation runs).
    #[arg(long, env = "KUBEFAAS_LEASE_SECONDS", default_value_t = 30)]
    lease_seconds: u64,
    /// Seconds a `queued` invocation may wait past its due time before the sweeper puts it on
    /// the queue again (covers a Redis that lost its data).
    #[arg(long, env = "KUBEFAAS_STUCK_AFTER_SECONDS", default_value_t = 60)]
    stuck_after_seconds: u64,
    /// Address of the /metrics, /healthz and /readyz endpoint.
    #[arg(long, env = "KUBEFAAS_EXECUTOR_HTTP_ADDR", default_value = "0.0.0.0:8081")]
    http_addr: SocketAddr,
    /// Seconds a new runtime pod (kubernetes backend) may take to become Ready before its
    /// start fails: scheduling, image, interpreter start and, for go, the build of its code.
    #[arg(long, env = "KUBEFAAS_POD_START_TIMEOUT_SECONDS", default_value_t = 120,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pod_start_timeout_seconds: u64,
    /// CPU a runtime pod requests, in percent of its function's CPU limit. 100 reserves the
    /// whole limit (Guaranteed QoS); less lets more pods share a node's idle CPU.
    #[arg(long, env = "KUBEFAAS_RUNTIME_CPU_REQUEST_PERCENT", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..=100))]
    runtime_cpu_request_percent: u32,
    /// Seconds in-flight invocations may take to finish after SIGTERM.
    #[arg(long, env = "KUBEFAAS_GRACE_SECONDS", default_value_t = 30)]
    grace_seconds: u64,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let flags = Flags::parse();
    let name = flags.name.unwrap_or_else(|| {
        let host = std::env::var("POD_NAME")
            .or_else(|_| std::env::var("HOSTNAME"))
            .unwrap_or_else(|_| "executor".to_owned());
        format!("{host}-{}", std::process::id())
    });
    let mut kubernetes = KubernetesConfig::new(&name);
    kubernetes.image_prefix = flags.image_prefix;
    kubernetes.start_timeout = Duration::from_secs(flags.pod_start_timeout_seconds);
    kubernetes.cpu_request_percent = flags.runtime_cpu_request_percent;
    let mut worker = WorkerConfig::new(name);
    worker.max_in_flight = flags.max_in_flight.max(1);
    worker.lease = Duration::from_secs(flags.lease_seconds.max(1));
    worker.stuck_after = Duration::from_secs(flags.stuck_after_seconds.max(1));
    let config = ExecutorConfig {
        database_url: flags.database_url,
        redis_url: flags.redis_url,
        queue_prefix: flags.queue_prefix,
        work_dir: flags.work_dir,
        sandbox: SandboxMode::Auto,
        worker,
        http_addr: flags.http_addr,
        grace: Duration::from_secs(flags.grace_seconds),
    };
    let shutdown = kubefaas_core::service::shutdown_signal();
    let result = match flags.backend {
        Backend::Local => run(config, shutdown).await,
        Backend::Kubernetes => run_kubernetes(config, kubernetes, shutdown).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = %error, "kubefaas-executor stopped");
            ExitCode::FAILURE
        }
    }
}
