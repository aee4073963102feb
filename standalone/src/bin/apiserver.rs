//! `kubefaas-apiserver`: runs the standalone Kubernetes API server on its own.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// An embedded Kubernetes API server for kubefaas development and tests (plain HTTP, no auth).
#[derive(Debug, Parser)]
#[command(name = "kubefaas-apiserver", version)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    /// Where to write a kubeconfig for kubectl and other clients.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Directory to persist objects in; omit to keep everything in memory.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Also run the node agent: pods with kubefaas runtime images run as local watchdogs.
    #[arg(long)]
    node_agent: bool,
    /// The node agent's `kubefaas-watchdog` (default: next to this program, else on the PATH).
    #[arg(long, requires = "node_agent")]
    watchdog: Option<PathBuf>,
    /// Where the node agent keeps pod directories (default: `node` in the data directory,
    /// else in the system's temporary directory).
    #[arg(long, requires = "node_agent")]
    node_dir: Option<PathBuf>,
    /// How many changes are kept for watches and paginated lists to resume from; a client
    /// further behind gets 410 Expired and lists again.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    history: u64,
    /// End every watch after at most this many seconds, whatever its client asked for: a
    /// fault-injection knob for testing how clients resume (unset: honour `timeoutSeconds`).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    max_watch_seconds: Option<u64>,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt().with_target(false).with_max_level(tracing::Level::INFO).init();
    let args = Args::parse();
    let node_agent = args.node_agent.then(|| {
        let dir = args.node_dir.clone().unwrap_or_else(|| match &args.data_dir {
            Some(data) => data.join("node"),
            None => std::env::temp_dir().join(format!("kubefaas-node-{}", std::process::id())),
        });
        let mut node = kubefaas_standalone::node::NodeConfig::new(dir);
        if let Some(watchdog) = args.watchdog.clone() {
            node.watchdog = watchdog;
        }
        node
    });
    let config = kubefaas_standalone::Config {
        node_agent,
        listen: args.listen,
        data_dir: args.data_dir,
        kubeconfig: args.kubeconfig,
        history: usize::try_from(args.history).unwrap_or(usize::MAX),
        max_watch: args.max_watch_seconds.map(std::time::Duration::from_secs),
        ..Default::default()
    };
    match kubefaas_standalone::run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let mut message = error.to_string();
            let mut source = std::error::Error::source(&error);
            while let Some(cause) = source {
                message.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            tracing::error!("{message}");
            ExitCode::FAILURE
        }
    }
}
