//! `kubefaas-api-gateway`: parses flags, sets up logging and serves the REST API until SIGTERM
//! or Ctrl-C. `kubefaas-api-gateway token create` makes an API token instead.

use std::{net::SocketAddr, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand, ValueEnum};
use kubefaas_api_gateway::{AuthMode, Config, Gateway, RateLimit, create_token};
use tracing_subscriber::EnvFilter;

/// Serves the kubefaas REST API.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Flags {
    /// PostgreSQL URL.
    #[arg(long, env = "DATABASE_URL", global = true)]
    database_url: Option<String>,
    /// Redis URL.
    #[arg(long, env = "REDIS_URL")]
    redis_url: Option<String>,
    /// Prefix of every Redis key; the operator and executor must use the same.
    #[arg(long, env = "KUBEFAAS_QUEUE_PREFIX", default_value = "kubefaas")]
    queue_prefix: String,
    /// Address to listen on (port 0 picks a free port; the ready line says which).
    #[arg(long, env = "KUBEFAAS_GATEWAY_ADDR", default_value = "0.0.0.0:8080")]
    addr: SocketAddr,
    /// `token`: every API request needs a bearer token; `none`: no authentication (local use).
    #[arg(long, env = "KUBEFAAS_AUTH", value_enum, default_value = "token")]
    auth: Auth,
    /// Namespace of requests that name none.
    #[arg(long, env = "KUBEFAAS_DEFAULT_NAMESPACE", default_value = "default")]
    default_namespace: String,
    /// Origins allowed by CORS (comma-separated, `*` for any); CORS is off when empty.
    #[arg(long, env = "KUBEFAAS_CORS_ORIGINS", value_delimiter = ',')]
    cors_origins: Vec<String>,
    /// Largest request body in bytes.
    #[arg(long, env = "KUBEFAAS_MAX_BODY_BYTES", default_value_t = 6 * 1024 * 1024)]
    max_body_bytes: usize,
    /// Requests per second per token (0 turns the rate limit off).
    #[arg(long, env = "KUBEFAAS_RATE_LIMIT", default_value_t = RateLimit::DEFAULT.per_second)]
    rate_limit: f64,
    /// Burst of the per-token rate limit.
    #[arg(long, env = "KUBEFAAS_RATE_BURST", default_value_t = RateLimit::DEFAULT.burst)]
    rate_burst: u32,
    /// Unfinished invocations a function may have before new ones get 429 (0: no bound).
    #[arg(long, env = "KUBEFAAS_MAX_BACKLOG", default_value_t = kubefaas_api_gateway::DEFAULT_MAX_BACKLOG)]
    max_backlog: u64,
    /// Seconds function create/update/delete wait for the operator.
    #[arg(long, env = "KUBEFAAS_GATEWAY_FUNCTION_WAIT_SECONDS", default_value_t = 30)]
    function_wait_seconds: u64,
    /// Seconds a synchronous invocation may hold the request before a 504 with its id.
    #[arg(long, env = "KUBEFAAS_SYNC_TIMEOUT_SECONDS", default_value_t = 60)]
    sync_timeout_seconds: u64,
    #[command(flatten)]
    limits: kubefaas_core::validation::LimitFlags,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Auth {
    Token,
    None,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Manage API tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Creates a token and prints it once (only its hash is stored).
    Create {
        /// A name to tell the token apart.
        #[arg(long)]
        name: String,
        /// Namespace the token may act in (repeat for several; `*` for all).
        #[arg(long = "namespace", required = true)]
        namespaces: Vec<String>,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let flags = Flags::parse();
    let Some(database_url) = flags.database_url.clone() else {
        eprintln!("error: --database-url (or DATABASE_URL) is required");
        return ExitCode::from(2);
    };
    if let Some(Command::Token { command: TokenCommand::Create { name, namespaces } }) =
        &flags.command
    {
        return match create_token(&database_url, name, namespaces).await {
            Ok(token) => {
                println!("{}", token.secret);
                eprintln!(
                    "token {:?} ({}) for namespaces {}: shown once, store it now",
                    token.row.name,
                    token.row.id,
                    token.row.namespaces.join(",")
                );
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("error: {error}");
                ExitCode::FAILURE
            }
        };
    }
    let Some(redis_url) = flags.redis_url.clone() else {
        eprintln!("error: --redis-url (or REDIS_URL) is required");
        return ExitCode::from(2);
    };
    let mut config = Config::new(database_url, redis_url);
    config.queue_prefix = flags.queue_prefix;
    config.addr = flags.addr;
    config.auth = match flags.auth {
        Auth::Token => AuthMode::Token,
        Auth::None => AuthMode::None,
    };
    config.default_namespace = flags.default_namespace;
    config.cors_origins = flags.cors_origins.into_iter().filter(|o| !o.is_empty()).collect();
    config.max_body_bytes = flags.max_body_bytes;
    config.rate_limit = (flags.rate_limit > 0.0)
        .then_some(RateLimit { per_second: flags.rate_limit, burst: flags.rate_burst });
    config.max_backlog = (flags.max_backlog > 0).then_some(flags.max_backlog);
    config.function_wait = Duration::from_secs(flags.function_wait_seconds);
    config.sync_timeout = Duration::from_secs(flags.sync_timeout_seconds);
    config.limits = match flags.limits.limits() {
        Ok(limits) => limits,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    if config.auth == AuthMode::None {
        tracing::warn!(
            "authentication is OFF (--auth none): anyone who reaches the gateway may do anything"
        );
    }
    let result = async {
        let client =
            kube::Client::try_default().await.map_err(kubefaas_api_gateway::Error::KubeClient)?;
        let gateway = Gateway::bind(client, config).await?;
        // The ready line: tests and `kubefaas up` read the address from it.
        println!("kubefaas-api-gateway ready on http://{}", gateway.local_addr());
        gateway.serve(kubefaas_core::service::shutdown_signal()).await
    }
    .await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = %error, "kubefaas-api-gateway stopped");
            ExitCode::FAILURE
        }
    }
}
