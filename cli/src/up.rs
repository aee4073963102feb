//! `kubefaas up`: the whole platform on one machine, in one process.
//!
//! Starts the standalone control plane and its node agent, installs the CRDs, then runs the
//! operator, the executor (by default with the `kubernetes` backend: runtime pods that the node
//! agent runs as `runc` containers) and the gateway against the given PostgreSQL and
//! Redis, until Ctrl-C or SIGTERM, and stops them all cleanly.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, ValueEnum};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
};
use tokio::sync::watch;

use crate::CliError;

/// Whether the gateway asks for tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Auth {
    /// Anyone who can reach the gateway may use it (fine on loopback, nowhere else).
    None,
    /// Bearer tokens (`kubefaas token create`).
    Token,
}

/// Where the executor runs function instances.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Backend {
    /// Runtime pods, run by the standalone node agent as runc containers with the pods'
    /// security context (needs root, `runc`, and `kubefaas-watchdog` next to `kubefaas` or on
    /// the PATH).
    Kubernetes,
    /// Processes started by the executor itself, as this user, seeing this machine's files:
    /// unsafe for untrusted code (see `executor/SANDBOX.md`).
    #[value(name = "local-unsafe")]
    Local,
}

/// Flags of `kubefaas up`.
#[derive(Debug, Args)]
pub(crate) struct UpArgs {
    /// PostgreSQL URL.
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    /// Redis URL.
    #[arg(long, env = "REDIS_URL")]
    redis_url: String,
    /// Address of the REST gateway.
    #[arg(long, env = "KUBEFAAS_GATEWAY_ADDR", default_value = "127.0.0.1:8080")]
    gateway_addr: SocketAddr,
    /// Address of the Kubernetes API of the standalone control plane.
    #[arg(long, env = "KUBEFAAS_API_ADDR", default_value = "127.0.0.1:6443")]
    api_addr: SocketAddr,
    /// Where the control plane keeps its objects and the executor its instances.
    #[arg(long, env = "KUBEFAAS_DATA_DIR", default_value = ".kubefaas")]
    data_dir: PathBuf,
    /// Where to write the kubeconfig for kubectl (default: DATA_DIR/kubeconfig).
    #[arg(long, env = "KUBEFAAS_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Whether the gateway asks for tokens.
    #[arg(long, env = "KUBEFAAS_AUTH", value_enum, default_value = "none")]
    auth: Auth,
    /// Where function instances run.
    #[arg(long, env = "KUBEFAAS_BACKEND", value_enum, default_value = "kubernetes")]
    backend: Backend,
    /// Prefix of every Redis key.
    #[arg(long, env = "KUBEFAAS_QUEUE_PREFIX", default_value = "kubefaas")]
    queue_prefix: String,
    /// Requests per second the gateway allows per token (one shared bucket with `--auth
    /// none`); 0 turns the limit off.
    #[arg(long, env = "KUBEFAAS_RATE_LIMIT",
          default_value_t = kubefaas_api_gateway::RateLimit::DEFAULT.per_second)]
    rate_limit: f64,
    /// Burst of that rate limit.
    #[arg(long, env = "KUBEFAAS_RATE_BURST",
          default_value_t = kubefaas_api_gateway::RateLimit::DEFAULT.burst)]
    rate_burst: u32,
    /// Unfinished invocations a function may have before the gateway answers 429 to new ones;
    /// 0 admits without bound.
    #[arg(long, env = "KUBEFAAS_MAX_BACKLOG",
          default_value_t = kubefaas_api_gateway::DEFAULT_MAX_BACKLOG)]
    max_backlog: u64,
    #[command(flatten)]
    limits: kubefaas_core::validation::LimitFlags,
}

/// Runs the platform until a shutdown signal.
pub(crate) async fn up(args: UpArgs) -> Result<(), CliError> {
    let limits = args.limits.limits().map_err(CliError::Usage)?;
    std::fs::create_dir_all(&args.data_dir).map_err(|source| CliError::Io {
        what: format!("creating {}", args.data_dir.display()),
        source,
    })?;
    let data_dir = args.data_dir.canonicalize().unwrap_or_else(|_| args.data_dir.clone());
    let kubeconfig = args.kubeconfig.clone().unwrap_or_else(|| data_dir.join("kubeconfig"));
    let kubeconfig = std::path::absolute(&kubeconfig).unwrap_or(kubeconfig);

    let server = kubefaas_standalone::ApiServer::start(kubefaas_standalone::Config {
        listen: args.api_addr,
        data_dir: Some(data_dir.join("apiserver")),
        kubeconfig: Some(kubeconfig.clone()),
        ..kubefaas_standalone::Config::default()
    })
    .await
    .map_err(|e| CliError::Start { component: "control plane", message: e.to_string() })?;
    let mut client_config =
        kube::Config::new(format!("http://{}", server.addr()).parse().map_err(|e| {
            CliError::Start { component: "control plane", message: format!("{e}") }
        })?);
    client_config.default_namespace = "default".into();
    let client = kube::Client::try_from(client_config)
        .map_err(|e| CliError::Start { component: "Kubernetes client", message: e.to_string() })?;
    install_crds(&client).await?;

    let (stop, stopped) = watch::channel(false);
    let signal = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };

    let operator = tokio::spawn(kubefaas_operator::run_with_client(
        client.clone(),
        kubefaas_operator::Config {
            database_url: args.database_url.clone(),
            redis_url: args.redis_url.clone(),
            queue_prefix: args.queue_prefix.clone(),
            http_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            namespace: None,
            function_wait: Duration::from_secs(60),
            limits: limits.clone(),
            // A development harness: code served from this machine (`localhost`) is fine.
            code_download: kubefaas_operator::fetch::FetchConfig {
                allow_private_addresses: true,
                max_bytes: limits.max_code_bytes,
                ..kubefaas_operator::fetch::FetchConfig::default()
            },
            last_invoked_flush: kubefaas_operator::DEFAULT_LAST_INVOKED_FLUSH,
        },
        signal(stopped.clone()),
    ));

    let executor_name = format!("kubefaas-up-{}", std::process::id());
    let mut worker = kubefaas_executor::worker::WorkerConfig::new(executor_name.clone());
    worker.lease = Duration::from_secs(30);
    let executor_config = kubefaas_executor::service::ExecutorConfig {
        database_url: args.database_url.clone(),
        redis_url: args.redis_url.clone(),
        queue_prefix: args.queue_prefix.clone(),
        work_dir: data_dir.join("executor"),
        sandbox: kubefaas_executor::SandboxMode::Auto,
        worker,
        http_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        grace: Duration::from_secs(10),
    };
    let (node_agent, executor) = match args.backend {
        Backend::Kubernetes => {
            let agent = kubefaas_standalone::node::NodeAgent::start(
                client.clone(),
                kubefaas_standalone::node::NodeConfig::new(data_dir.join("node")),
            )
            .map_err(|e| CliError::Start { component: "node agent", message: e.to_string() })?;
            let executor = tokio::spawn(kubefaas_executor::service::run_kubernetes_with_client(
                executor_config,
                kubefaas_executor::kubernetes::KubernetesConfig::new(executor_name),
                client.clone(),
                signal(stopped.clone()),
            ));
            (Some(agent), executor)
        }
        Backend::Local => (
            None,
            tokio::spawn(kubefaas_executor::service::run_with_client(
                executor_config,
                client.clone(),
                signal(stopped.clone()),
            )),
        ),
    };

    let mut gateway_config =
        kubefaas_api_gateway::Config::new(args.database_url.clone(), args.redis_url.clone());
    gateway_config.queue_prefix = args.queue_prefix.clone();
    gateway_config.limits = limits;
    gateway_config.addr = args.gateway_addr;
    gateway_config.rate_limit =
        (args.rate_limit > 0.0).then_some(kubefaas_api_gateway::RateLimit {
            per_second: args.rate_limit,
            burst: args.rate_burst.max(1),
        });
    gateway_config.max_backlog = (args.max_backlog > 0).then_some(args.max_backlog);
    gateway_config.auth = match args.auth {
        Auth::None => kubefaas_api_gateway::AuthMode::None,
        Auth::Token => kubefaas_api_gateway::AuthMode::Token,
    };
    let gateway = kubefaas_api_gateway::Gateway::bind(client.clone(), gateway_config)
        .await
        .map_err(|e| CliError::Start { component: "gateway", message: e.to_string() })?;
    let gateway_addr = gateway.local_addr();
    let gateway = tokio::spawn(gateway.serve(signal(stopped.clone())));

    if args.auth == Auth::None {
        eprintln!(
            "WARNING: authentication is OFF (--auth none): anyone who can reach the gateway can use it."
        );
    }
    out!("kubefaas is up");
    out!("  gateway:        http://{gateway_addr}");
    out!(
        "  Kubernetes API: http://{}  (export KUBECONFIG={})",
        server.addr(),
        kubeconfig.display()
    );
    out!("  data:           {}", data_dir.display());
    out!("Press Ctrl-C to stop.");

    let (mut operator, mut executor, mut gateway) = (operator, executor, gateway);
    tokio::select! {
        () = kubefaas_core::service::shutdown_signal() => {}
        result = &mut operator => return Err(ended_early("operator", result)),
        result = &mut executor => return Err(ended_early("executor", result)),
        result = &mut gateway => return Err(ended_early("gateway", result)),
    }
    let _ = stop.send(true);
    let finished = tokio::time::timeout(Duration::from_secs(20), async {
        let _ = (&mut gateway).await;
        let _ = (&mut operator).await;
        let _ = (&mut executor).await;
    })
    .await;
    if finished.is_err() {
        eprintln!("components did not stop within 20 s; stopping anyway");
    }
    if let Some(agent) = node_agent {
        agent.shutdown().await;
    }
    server
        .shutdown()
        .await
        .map_err(|e| CliError::Start { component: "control plane", message: e.to_string() })?;
    out!("kubefaas stopped");
    Ok(())
}

/// A component that should run until shutdown ended early.
fn ended_early<E: std::fmt::Display>(
    component: &'static str,
    result: Result<Result<(), E>, tokio::task::JoinError>,
) -> CliError {
    let message = match result {
        Ok(Ok(())) => "stopped unexpectedly".to_owned(),
        Ok(Err(error)) => error.to_string(),
        Err(join) => join.to_string(),
    };
    CliError::Start { component, message }
}

/// Installs (or updates) the kubefaas CRDs with server-side apply.
async fn install_crds(client: &kube::Client) -> Result<(), CliError> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in kubefaas_core::resources::crds() {
        let name = crd.name_any();
        api.patch(&name, &PatchParams::apply("kubefaas").force(), &Patch::Apply(&crd))
            .await
            .map_err(|e| CliError::Start {
                component: "CRD installation",
                message: format!("{name}: {e}"),
            })?;
    }
    Ok(())
}
