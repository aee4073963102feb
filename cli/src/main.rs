//! `kubefaas`: the user's command line.
//!
//! - `kubefaas up` runs the whole platform on one machine (see [`up`]).
//! - `kubefaas crds` prints the CustomResourceDefinitions.
//! - `kubefaas fn …`, `invoke`, `logs` talk to the REST gateway (see [`client`]).
//! - `kubefaas token create`, `list` and `revoke` manage API tokens in the platform's database.
//! - `kubefaas completions SHELL` prints shell completions.

/// `println!` that ignores a closed stdout (`kubefaas fn list | head` must not panic).
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// `print!` that ignores a closed stdout.
macro_rules! out_raw {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout(), $($arg)*);
    }};
}

mod client;
mod up;

use std::{io::Write, process::ExitCode};

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use tracing_subscriber::EnvFilter;

/// Errors shown to the user, one line each.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CliError {
    /// A component of `kubefaas up` failed to start or stopped.
    #[error("{component}: {message}")]
    Start {
        /// Which one.
        component: &'static str,
        /// What happened.
        message: String,
    },
    /// A file could not be read or written.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The input is unusable.
    #[error("{0}")]
    Usage(String),
    /// The gateway could not be reached.
    #[error("cannot reach the gateway at {url}: {message}")]
    Unreachable {
        /// Where.
        url: String,
        /// Why.
        message: String,
    },
    /// The gateway answered with an error.
    #[error("{status}: {message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// The error's message (and code).
        message: String,
    },
}

/// Output format of the client commands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Output {
    /// For people.
    Text,
    /// The gateway's JSON, for scripts.
    Json,
}

/// kubefaas: functions on Kubernetes.
#[derive(Debug, Parser)]
#[command(name = "kubefaas", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// The REST gateway.
    #[arg(long, global = true, env = "KUBEFAAS_GATEWAY", default_value = "http://127.0.0.1:8080")]
    gateway: String,
    /// PEM file of CA certificates to trust besides the system's, for an `https://` gateway
    /// whose certificate a private CA signed.
    #[arg(long, global = true, env = "KUBEFAAS_CA_FILE", value_name = "PEM")]
    ca_file: Option<std::path::PathBuf>,
    /// API token, when the gateway asks for one.
    #[arg(long, global = true, env = "KUBEFAAS_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Namespace (default: the gateway's default namespace).
    #[arg(short = 'n', long, global = true, env = "KUBEFAAS_NAMESPACE")]
    namespace: Option<String>,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value = "text")]
    output: Output,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the whole platform on this machine: control plane, operator, executor, gateway.
    Up(up::UpArgs),
    /// Print the kubefaas CustomResourceDefinitions (YAML).
    Crds,
    /// Manage functions.
    #[command(subcommand, name = "fn")]
    Function(client::FunctionCommand),
    /// Invoke a function (synchronously unless --async).
    Invoke(client::InvokeArgs),
    /// Manage API tokens (talks to PostgreSQL directly).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Print the logs of an invocation.
    Logs {
        /// Invocation id.
        id: String,
    },
    /// Print shell completions.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Create an API token and print it once (only its hash is stored).
    Create {
        /// A name to tell the token apart.
        #[arg(long)]
        name: String,
        /// Namespace the token may act in (repeat for several; `*` for all).
        #[arg(long = "namespace-scope", value_name = "NAMESPACE", required = true)]
        namespaces: Vec<String>,
        /// PostgreSQL URL of the platform.
        #[arg(long, env = "DATABASE_URL")]
        database_url: String,
    },
    /// List API tokens, newest first (never their secrets).
    List {
        /// PostgreSQL URL of the platform.
        #[arg(long, env = "DATABASE_URL")]
        database_url: String,
    },
    /// Revoke an API token: gateways refuse it within 10 s.
    Revoke {
        /// Token id (`kubefaas token list` shows it).
        id: String,
        /// PostgreSQL URL of the platform.
        #[arg(long, env = "DATABASE_URL")]
        database_url: String,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), CliError> {
    let gateway = || {
        client::Gateway::new(
            &cli.gateway,
            cli.ca_file.as_deref(),
            cli.token.clone(),
            cli.namespace.clone(),
            cli.output,
        )
    };
    match cli.command {
        Command::Up(args) => up::up(args).await,
        Command::Crds => {
            let mut out = String::new();
            for crd in kubefaas_core::resources::crds() {
                let yaml = kubefaas_core::resources::crd_yaml(&crd)
                    .map_err(|e| CliError::Usage(e.to_string()))?;
                out.push_str("---\n");
                out.push_str(&yaml);
            }
            out_raw!("{out}");
            Ok(())
        }
        Command::Function(command) => gateway()?.function(command).await,
        Command::Invoke(args) => gateway()?.invoke(args).await,
        Command::Logs { id } => gateway()?.logs(&id).await,
        Command::Token(TokenCommand::Create { name, namespaces, database_url }) => {
            let token = kubefaas_api_gateway::create_token(&database_url, &name, &namespaces)
                .await
                .map_err(|e| CliError::Usage(format!("creating the token: {e}")))?;
            match cli.output {
                Output::Json => out!(
                    "{}",
                    serde_json::json!({"id": token.row.id, "name": name, "namespaces": namespaces, "token": token.secret})
                ),
                Output::Text => {
                    eprintln!(
                        "token {name:?} for namespaces {namespaces:?} (shown once; only its hash is stored):"
                    );
                    out!("{}", token.secret);
                }
            }
            Ok(())
        }
        Command::Token(TokenCommand::List { database_url }) => {
            let tokens = kubefaas_api_gateway::list_tokens(&database_url)
                .await
                .map_err(|e| CliError::Usage(format!("listing tokens: {e}")))?;
            match cli.output {
                Output::Json => out!("{}", serde_json::json!({ "tokens": tokens })),
                Output::Text => print_token_table(&tokens),
            }
            Ok(())
        }
        Command::Token(TokenCommand::Revoke { id, database_url }) => {
            let uuid = id.parse().map_err(|_| {
                CliError::Usage(format!(
                    "{id:?} is not a token id (a UUID; see kubefaas token list)"
                ))
            })?;
            let revoked = kubefaas_api_gateway::revoke_token(&database_url, uuid)
                .await
                .map_err(|e| CliError::Usage(format!("revoking the token: {e}")))?
                .ok_or_else(|| {
                    CliError::Usage(format!(
                        "no active token has id {id} (unknown, or revoked already)"
                    ))
                })?;
            match cli.output {
                Output::Json => out!("{}", serde_json::json!(revoked)),
                Output::Text => out!("token {:?} ({id}) revoked", revoked.name),
            }
            Ok(())
        }
        Command::Completions { shell } => {
            let mut command = Cli::command();
            let mut stdout = std::io::stdout();
            clap_complete::generate(shell, &mut command, "kubefaas", &mut stdout);
            let _ = stdout.flush();
            Ok(())
        }
    }
}

fn print_token_table(tokens: &[kubefaas_api_gateway::model::TokenInfo]) {
    out!(
        "{:<36} {:<20} {:<12} {:<8} {:<20} {:<20} {:<20} NAMESPACES",
        "ID",
        "NAME",
        "PREFIX",
        "STATE",
        "CREATED",
        "EXPIRES",
        "LAST USED"
    );
    let time = |t: &chrono::DateTime<chrono::Utc>| t.format("%Y-%m-%dT%H:%M:%SZ").to_string();
    for token in tokens {
        let state = match (token.active, token.revoked_at) {
            (true, _) => "active",
            (false, Some(_)) => "revoked",
            (false, None) => "expired",
        };
        out!(
            "{:<36} {:<20} {:<12} {:<8} {:<20} {:<20} {:<20} {}",
            token.id,
            token.name,
            token.token_prefix,
            state,
            time(&token.created_at),
            token.expires_at.as_ref().map_or_else(|| "never".to_owned(), time),
            token.last_used_at.as_ref().map_or_else(|| "never".to_owned(), time),
            token.namespaces.join(",")
        );
    }
}
