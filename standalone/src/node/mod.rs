//! The node agent: a stand-in kubelet for one machine. It watches Pods through the API (its
//! own `kube` client, like a kubelet, so it works the same in-process and beside a separate
//! `kubefaas-apiserver`) and runs each container of a pod whose containers use a kubefaas
//! runtime image as a `runc` container running `kubefaas-watchdog`: the host's system
//! directories and interpreters read-only as its root file system, a synthesized `/etc`, the
//! pod's security context applied (user, no capabilities, no privilege escalation, a seccomp
//! profile), its memory, CPU and pids limits in its own cgroup, ConfigMap volumes read-only and
//! emptyDir volumes as size-limited tmpfs. Each pod has its own loopback address (`127.1.x.y`,
//! its `status.podIP`) in the host's network namespace. The pod's status is written back
//! (phase, conditions, container states with exit codes, `OOMKilled`, restarts). Images it
//! cannot run are reported as `ErrImagePull`, specs it cannot enforce as
//! `CreateContainerConfigError`. See the crate README for what is isolated and what is not.

mod bundle;
mod cgroup;
mod oci;
mod pod;
mod process;
mod spec;

use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// How the node agent runs.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// The `kubefaas-watchdog` program.
    pub watchdog: PathBuf,
    /// Where pod directories (volumes, logs, work directories) are made.
    pub work_dir: PathBuf,
    /// The node's name: pods bound to another node (`spec.nodeName`) are left alone.
    pub node_name: String,
    /// The OCI runtime; `None` finds `runc` on the `PATH` (or Debian's `/usr/sbin/runc`).
    pub runc: Option<PathBuf>,
    /// `pids.max` of every container: processes and threads a container may have at once.
    pub pids_limit: i64,
    /// The size of an `emptyDir` without a `sizeLimit`, and of a container's `/tmp` when no
    /// volume is mounted there.
    pub empty_dir_bytes: u64,
}

/// Default [`NodeConfig::pids_limit`]: far more than an instance needs (the watchdog's and the
/// interpreter's threads), far fewer than a fork bomb wants.
pub const DEFAULT_PIDS_LIMIT: i64 = 1024;

/// Default [`NodeConfig::empty_dir_bytes`]: 64 MiB.
pub const DEFAULT_EMPTY_DIR_BYTES: u64 = 64 << 20;

impl NodeConfig {
    /// Defaults with pod directories below `work_dir`: the watchdog next to the running program
    /// (where cargo and the release archives put it), else on the `PATH`.
    pub fn new(work_dir: impl Into<PathBuf>) -> Self {
        Self {
            watchdog: default_watchdog(),
            work_dir: work_dir.into(),
            node_name: "kubefaas-node".into(),
            runc: None,
            pids_limit: DEFAULT_PIDS_LIMIT,
            empty_dir_bytes: DEFAULT_EMPTY_DIR_BYTES,
        }
    }
}

/// `kubefaas-watchdog` next to the current executable (or one directory up, for test binaries
/// in `target/debug/deps`), else the bare name for a `PATH` lookup.
pub fn default_watchdog() -> PathBuf {
    let exe = std::env::current_exe().ok();
    let dirs = exe.iter().flat_map(|e| e.ancestors().skip(1).take(2));
    dirs.map(|d| d.join(spec::WATCHDOG))
        .find(|p| p.is_file())
        .unwrap_or_else(|| spec::WATCHDOG.into())
}

/// Why the node agent or one of its containers could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// No cgroup hierarchy is writable, so no container can be limited.
    #[error(
        "no writable cgroup hierarchy: the node agent cannot limit containers (run it as root)"
    )]
    NoCgroup,
    /// A file or directory of a pod could not be made.
    #[error("preparing the pod's files: {0}")]
    Files(#[source] std::io::Error),
    /// Every block of loopback addresses is claimed by another agent.
    #[error("no free block of loopback addresses 127.x.0.0/16 for pods")]
    NoAddresses,
    /// No client could be made for the API server.
    #[error("a client for the API server: {0}")]
    Client(String),
    /// runc could not be started.
    #[error("starting runc: {0}")]
    Spawn(#[source] std::io::Error),
}

/// A `kube` client for an API server at `addr` (plain HTTP, namespace `default`).
pub fn client_for(addr: std::net::SocketAddr) -> Result<kube::Client, NodeError> {
    let url = format!("http://{addr}").parse().map_err(|e| NodeError::Client(format!("{e}")))?;
    kube::Client::try_from(kube::Config::new(url)).map_err(|e| NodeError::Client(e.to_string()))
}

/// Resolves once `stop` is true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// What the pod tasks share.
struct Agent {
    client: kube::Client,
    /// `setpriv`, to give each watchdog a parent-death signal: a killed agent leaves no
    /// watchdog holding a pod address.
    setpriv: Option<PathBuf>,
    config: NodeConfig,
    cgroups: Option<cgroup::Hierarchy>,
    /// runc, or why containers cannot run here (every pod is refused with it).
    runtime: Result<bundle::Runtime, String>,
    /// What of the host containers see.
    host: bundle::HostView,
    /// The open-file limit of containers (the agent's own hard limit, at most 20 000).
    open_files: u64,
    /// The second octet of this agent's pod addresses (`127.<block>.x.y`).
    block: u8,
    /// Held for the agent's life: the claim on `block` (see [`claim_block`]).
    _claim: std::net::TcpListener,
    /// Loopback addresses in use by pods.
    addresses: Mutex<BTreeSet<Ipv4Addr>>,
}

/// The port whose listener on `127.<block>.255.254` claims a block of pod addresses.
const CLAIM_PORT: u16 = 65_010;

/// Claims a block `127.<b>.0.0/16` of loopback addresses for this agent's pods, so several
/// agents on one machine (parallel tests) never hand out the same address: the claim is a
/// listener on `127.<b>.255.254`, which no other agent can bind while this one lives.
fn claim_block() -> Option<(u8, std::net::TcpListener)> {
    (1..=254u8).find_map(|b| {
        let addr = std::net::SocketAddr::from(([127, b, 255, 254], CLAIM_PORT));
        std::net::TcpListener::bind(addr).ok().map(|l| (b, l))
    })
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Agent {
    /// The lowest free address of the agent's block (`127.<block>.0.1`–`127.<block>.255.253`).
    fn allocate(&self) -> Option<Ipv4Addr> {
        let mut used = self.addresses.lock().unwrap_or_else(PoisonError::into_inner);
        let free = (1u16..0xfffe)
            .map(|n| {
                let [hi, lo] = n.to_be_bytes();
                Ipv4Addr::new(127, self.block, hi, lo)
            })
            .find(|ip| !used.contains(ip))?;
        used.insert(free);
        Some(free)
    }

    /// `setpriv --pdeathsig KILL --` where `setpriv` exists: the program after it is killed
    /// when its parent dies.
    fn killed_with_parent(&self) -> Vec<String> {
        let Some(setpriv) = &self.setpriv else { return Vec::new() };
        [setpriv.display().to_string(), "--pdeathsig".into(), "KILL".into(), "--".into()].into()
    }

    fn release(&self, ip: Ipv4Addr) {
        self.addresses.lock().unwrap_or_else(PoisonError::into_inner).remove(&ip);
    }
}

/// A running node agent. Call [`NodeAgent::shutdown`] to stop its pods.
#[derive(Debug)]
pub struct NodeAgent {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl NodeAgent {
    /// Starts watching pods through `client` in the background.
    pub fn start(client: kube::Client, config: NodeConfig) -> Result<Self, NodeError> {
        let (block, claim) = claim_block().ok_or(NodeError::NoAddresses)?;
        let cgroups = cgroup::Hierarchy::detect();
        let runtime = match &cgroups {
            None => Err(NodeError::NoCgroup.to_string()),
            Some(_) => bundle::Runtime::find(config.runc.as_deref(), config.work_dir.join("runc")),
        };
        if let Err(why) = &runtime {
            tracing::error!(%why, "the node agent cannot run containers; every pod is refused");
        }
        tracing::info!(watchdog = %config.watchdog.display(), work_dir = %config.work_dir.display(), pod_addresses = %format!("127.{block}.0.0/16"), ?cgroups, "node agent starting");
        let setpriv = ["/usr/bin/setpriv", "/bin/setpriv"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.is_file());
        let open_files = rustix::process::getrlimit(rustix::process::Resource::Nofile)
            .maximum
            .unwrap_or(u64::MAX)
            .min(20_000);
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            let host = bundle::HostView::detect().await;
            tracing::info!(?host, "what containers see of the host");
            let agent = Arc::new(Agent {
                client,
                setpriv,
                config,
                cgroups,
                runtime,
                host,
                open_files,
                block,
                _claim: claim,
                addresses: Mutex::default(),
            });
            watch_pods(agent, stopped).await;
        });
        Ok(Self { stop, task })
    }

    /// Stops every pod's processes and waits for them to go.
    pub async fn shutdown(self) {
        self.stop.send_replace(true);
        let _ = self.task.await;
    }
}

struct Running {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

async fn watch_pods(agent: Arc<Agent>, mut stopped_rx: watch::Receiver<bool>) {
    let api: Api<Pod> = Api::all(agent.client.clone());
    let mut events = watcher(api, watcher::Config::default()).default_backoff().boxed();
    let mut pods: HashMap<String, Running> = HashMap::new();
    let mut stopping = JoinSet::new();
    let mut listed: Option<BTreeSet<String>> = None;
    loop {
        let event = tokio::select! {
            event = events.next() => event,
            () = stopped(&mut stopped_rx) => break,
        };
        let stop_pod =
            |pods: &mut HashMap<String, Running>, stopping: &mut JoinSet<()>, uid: &str| {
                if let Some(running) = pods.remove(uid) {
                    running.stop.send_replace(true);
                    stopping.spawn(async move {
                        let _ = running.task.await;
                    });
                }
            };
        match event {
            None => break,
            Some(Err(error)) => tracing::warn!(%error, "watching pods failed; retrying"),
            Some(Ok(watcher::Event::Init)) => listed = Some(BTreeSet::new()),
            Some(Ok(watcher::Event::InitDone)) => {
                if let Some(seen) = listed.take() {
                    let gone: Vec<String> =
                        pods.keys().filter(|uid| !seen.contains(*uid)).cloned().collect();
                    for uid in gone {
                        stop_pod(&mut pods, &mut stopping, &uid);
                    }
                }
            }
            Some(Ok(watcher::Event::Delete(pod))) => {
                stop_pod(&mut pods, &mut stopping, pod.metadata.uid.as_deref().unwrap_or_default());
            }
            Some(Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod))) => {
                let uid = pod.metadata.uid.clone().unwrap_or_default();
                if let Some(seen) = &mut listed {
                    seen.insert(uid.clone());
                }
                if pod.metadata.deletion_timestamp.is_some() {
                    stop_pod(&mut pods, &mut stopping, &uid);
                    continue;
                }
                let spec = pod.spec.as_ref();
                let ours = spec
                    .and_then(|s| s.node_name.as_deref())
                    .is_none_or(|n| n == agent.config.node_name);
                let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
                let finished = matches!(phase, Some("Succeeded" | "Failed"));
                if uid.is_empty() || !ours || finished || pods.contains_key(&uid) {
                    continue;
                }
                let Some(ip) = agent.allocate() else {
                    tracing::error!("no loopback address left for pods");
                    continue;
                };
                tracing::info!(namespace = ?pod.metadata.namespace, pod = ?pod.metadata.name, %ip, "starting pod");
                let (stop, stop_rx) = watch::channel(false);
                let task_agent = Arc::clone(&agent);
                let task = tokio::spawn(async move {
                    pod::run(Arc::clone(&task_agent), pod, ip, stop_rx).await;
                    task_agent.release(ip);
                });
                pods.insert(uid, Running { stop, task });
            }
        }
    }
    for (_, running) in pods.drain() {
        running.stop.send_replace(true);
        stopping.spawn(async move {
            let _ = running.task.await;
        });
    }
    while stopping.join_next().await.is_some() {}
    if let Some(cgroups) = &agent.cgroups {
        cgroups.remove();
    }
    tracing::info!("node agent stopped");
}
