//! One pod on this machine: its directories and volumes, a supervisor per container that runs
//! the watchdog as a `runc` container (its own bundle and cgroup), restarts it by the pod's
//! `restartPolicy` and probes its readiness, and the status written back to the API.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod};
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

use super::bundle::{Bundle, Runtime, WATCHDOG_PATH};
use super::oci::{self, Mount};
use super::process::kill_group;
use super::spec::{self, Plan, Refusal, VolumeSource};
use super::{Agent, NodeError};

/// What one container is doing, as `containerStatuses` reports it.
#[derive(Clone, Debug, Default)]
struct ContainerState {
    name: String,
    image: String,
    /// `state`: one of `waiting`, `running`, `terminated`.
    state: Value,
    /// `lastState`: the previous run's termination, if any.
    last_state: Value,
    ready: bool,
    restarts: u32,
}

impl ContainerState {
    fn running(&self) -> bool {
        self.state.get("running").is_some()
    }

    fn terminated(&self) -> Option<i64> {
        self.state.get("terminated").map(|t| t["exitCode"].as_i64().unwrap_or(1))
    }

    fn to_json(&self, uid: &str) -> Value {
        json!({
            "name": self.name,
            "image": self.image,
            "imageID": "",
            "containerID": format!("kubefaas://{uid}/{}", self.name),
            "ready": self.ready,
            "started": self.running(),
            "restartCount": self.restarts,
            "state": self.state,
            "lastState": self.last_state,
        })
    }
}

fn waiting(reason: &str, message: &str) -> Value {
    json!({"waiting": {"reason": reason, "message": message}})
}

fn now() -> String {
    jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Runs `pod` until `stop` turns true, then stops its processes and removes its files.
pub(crate) async fn run(
    agent: Arc<Agent>,
    pod: Pod,
    ip: Ipv4Addr,
    mut stop: watch::Receiver<bool>,
) {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    // Short: unix socket paths below it must stay under 108 bytes. The address is unique while
    // the pod lives, and the directory goes before the address is released.
    let dir = agent.config.work_dir.join(ip.to_string());
    let api: Api<Pod> = Api::namespaced(agent.client.clone(), &namespace);
    let spec = pod.spec.clone().unwrap_or_default();
    let restart_policy = spec.restart_policy.clone().unwrap_or_else(|| "Always".into());
    let mut status = PodStatus {
        uid: uid.clone(),
        ip,
        start_time: now(),
        ready_since: now(),
        restart_policy: restart_policy.clone(),
        containers: spec
            .containers
            .iter()
            .map(|c| ContainerState {
                name: c.name.clone(),
                image: c.image.clone().unwrap_or_default(),
                state: waiting("ContainerCreating", ""),
                ..ContainerState::default()
            })
            .collect(),
    };
    status.write(&api, &name).await;

    let (updates, mut updated) = mpsc::unbounded_channel::<(usize, ContainerState)>();
    let mut supervisors = tokio::task::JoinSet::new();
    let prepared = match &agent.runtime {
        Ok(runtime) => prepare(&agent, &pod, &dir, &api, &name, &mut status, &mut stop)
            .await
            .map(|volumes| (runtime.clone(), volumes)),
        Err(why) => Err(Some(Refusal { reason: "CreateContainerError", message: why.clone() })),
    };
    match prepared {
        Ok((runtime, volumes)) => {
            for (index, container) in spec.containers.iter().enumerate() {
                let Some(env_from) =
                    env_from(&agent, container, index, &api, &name, &mut status, &mut stop).await
                else {
                    break;
                };
                let planned = spec::plan(&spec, container, ip, env_from)
                    .and_then(|plan| volume_mounts(&plan, &volumes).map(|m| (plan, m)));
                match planned {
                    Ok((plan, volume_mounts)) => {
                        let supervisor = Supervisor {
                            agent: Arc::clone(&agent),
                            runtime: runtime.clone(),
                            index,
                            state: status.containers[index].clone(),
                            plan,
                            volume_mounts,
                            ip,
                            id: format!("{uid}-{}", container.name),
                            hostname: name.chars().take(63).collect(),
                            bundle: dir.join("containers").join(&container.name),
                            log: dir.join(format!("{}.log", container.name)),
                            restart_policy: restart_policy.clone(),
                            updates: updates.clone(),
                        };
                        supervisors.spawn(supervisor.run(stop.clone()));
                    }
                    Err(Refusal { reason, message }) => {
                        tracing::warn!(pod = %name, container = %container.name, reason, %message, "container cannot run");
                        status.containers[index].state = waiting(reason, &message);
                    }
                }
            }
        }
        Err(Some(Refusal { reason, message })) => {
            for c in &mut status.containers {
                c.state = waiting(reason, &message);
            }
        }
        Err(None) => {}
    }
    drop(updates);
    status.write(&api, &name).await;
    loop {
        tokio::select! {
            update = updated.recv() => match update {
                Some((index, state)) => {
                    if let Some(slot) = status.containers.get_mut(index) {
                        if state.ready && !slot.ready { status.ready_since = now(); }
                        *slot = state;
                    }
                    while let Ok((index, state)) = updated.try_recv() {
                        if let Some(slot) = status.containers.get_mut(index) { *slot = state; }
                    }
                    status.write(&api, &name).await;
                }
                // Every supervisor is done (or none could start): wait for the deletion.
                None => { super::stopped(&mut stop).await; break; }
            },
            () = super::stopped(&mut stop) => break,
        }
    }
    while supervisors.join_next().await.is_some() {}
    if let Err(error) = tokio::fs::remove_dir_all(&dir).await
        && error.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(pod = %name, %error, "pod directory could not be removed");
    }
    tracing::info!(namespace, pod = %name, %ip, "pod stopped");
}

/// The variables of the container's `envFrom`, read as a kubelet reads them: while a Secret or
/// ConfigMap it needs is missing, the container waits (`CreateContainerConfigError`, saying
/// which) and the agent reads again. `None` when the pod is stopped meanwhile.
async fn env_from(
    agent: &Agent,
    container: &Container,
    index: usize,
    api: &Api<Pod>,
    name: &str,
    status: &mut PodStatus,
    stop: &mut watch::Receiver<bool>,
) -> Option<BTreeMap<String, String>> {
    let sources = spec::env_sources(container);
    if sources.is_empty() {
        return Some(BTreeMap::new());
    }
    let namespace = api.namespace().unwrap_or_default();
    loop {
        match kubefaas_core::env_from::resolve(&agent.client, namespace, &sources).await {
            Ok(resolved) => {
                if !resolved.skipped.is_empty() {
                    tracing::warn!(
                        pod = %name, container = %container.name, skipped = ?resolved.skipped,
                        "envFrom keys that are not valid variable names were skipped"
                    );
                }
                return Some(resolved.vars);
            }
            Err(error) => {
                if let Some(slot) = status.containers.get_mut(index) {
                    slot.state = waiting("CreateContainerConfigError", &error.to_string());
                }
                status.write(api, name).await;
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(2)) => {}
                    () = super::stopped(stop) => return None,
                }
            }
        }
    }
}

/// A volume of the pod on this machine.
#[derive(Clone, Debug)]
enum PodVolume {
    /// A directory of the pod, read-only in containers (ConfigMaps, as on a kubelet).
    ReadOnly(PathBuf),
    /// A tmpfs of this many bytes in each container that mounts it (an `emptyDir`).
    Tmpfs(u64),
}

type Volumes = BTreeMap<String, PodVolume>;

/// The mounts of the pod's volumes that `plan` asks for.
fn volume_mounts(plan: &Plan, volumes: &Volumes) -> Result<Vec<Mount>, Refusal> {
    plan.mounts
        .iter()
        .map(|m| {
            let volume = volumes.get(&m.volume).ok_or_else(|| Refusal {
                reason: "CreateContainerConfigError",
                message: format!("volumeMounts {:?}: the pod has no such volume", m.volume),
            })?;
            Ok(match volume {
                PodVolume::ReadOnly(dir) => Mount::bind_ro(dir, &m.path),
                PodVolume::Tmpfs(bytes) => Mount::tmpfs(&m.path, *bytes, m.read_only),
            })
        })
        .collect()
}

/// Makes the pod's directories and volumes (an `emptyDir` is a tmpfs of its `sizeLimit`, else
/// the agent's default, made by runc in the container's own mount namespace, so nothing of it
/// outlives the container, even when the agent is killed). `Err(Some)` reports a refusal,
/// `Err(None)` a stop.
async fn prepare(
    agent: &Agent,
    pod: &Pod,
    dir: &Path,
    api: &Api<Pod>,
    name: &str,
    status: &mut PodStatus,
    stop: &mut watch::Receiver<bool>,
) -> Result<Volumes, Option<Refusal>> {
    let volumes = spec::volumes(pod).map_err(Some)?;
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let config_maps: Api<ConfigMap> = Api::namespaced(agent.client.clone(), &namespace);
    let mut dirs = BTreeMap::new();
    let io_refusal = |e: std::io::Error| {
        Some(Refusal {
            reason: "CreateContainerError",
            message: format!("preparing the pod's files: {e}"),
        })
    };
    for (volume, source) in volumes {
        if let VolumeSource::EmptyDir { size_limit } = source {
            let bytes = size_limit.unwrap_or(agent.config.empty_dir_bytes);
            dirs.insert(volume, PodVolume::Tmpfs(bytes));
            continue;
        }
        let target = dir.join("volumes").join(&volume);
        tokio::fs::create_dir_all(&target).await.map_err(io_refusal)?;
        if let VolumeSource::ConfigMap { name: cm, items, optional } = source {
            loop {
                match config_maps.get_opt(&cm).await {
                    Ok(Some(config_map)) => {
                        write_config_map(&config_map, &items, &target).await.map_err(io_refusal)?;
                        break;
                    }
                    Ok(None) if optional => break,
                    result => {
                        let why = match result {
                            Err(e) => e.to_string(),
                            _ => format!("configmap {cm:?} not found"),
                        };
                        let message = format!("volume {volume:?}: {why}");
                        for c in &mut status.containers {
                            c.state = waiting("ContainerCreating", &message);
                        }
                        status.write(api, name).await;
                        // A kubelet keeps retrying the mount; so does the agent.
                        tokio::select! {
                            () = tokio::time::sleep(Duration::from_secs(2)) => {}
                            () = super::stopped(stop) => return Err(None),
                        }
                    }
                }
            }
        }
        dirs.insert(volume, PodVolume::ReadOnly(target));
    }
    Ok(dirs)
}

/// Writes the keys of `config_map` (or just `items`, key → relative path) below `target`.
async fn write_config_map(
    config_map: &ConfigMap,
    items: &[(String, String)],
    target: &Path,
) -> std::io::Result<()> {
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for (k, v) in config_map.data.iter().flatten() {
        files.insert(k.clone(), v.clone().into_bytes());
    }
    for (k, v) in config_map.binary_data.iter().flatten() {
        files.insert(k.clone(), v.0.clone());
    }
    let wanted: Vec<(String, String)> = if items.is_empty() {
        files.keys().map(|k| (k.clone(), k.clone())).collect()
    } else {
        items.to_vec()
    };
    for (key, path) in wanted {
        let Some(bytes) = files.get(&key) else { continue };
        // Kubernetes refuses `..` and absolute item paths; so does the agent.
        if path.starts_with('/') || path.split('/').any(|p| p == "..") {
            continue;
        }
        let file = target.join(&path);
        if let Some(parent) = file.parent() {
            tokio::fs::create_dir_all(parent).await?;
        }
        tokio::fs::write(file, bytes).await?;
    }
    Ok(())
}

/// The pod's status as the agent knows it.
struct PodStatus {
    uid: String,
    ip: Ipv4Addr,
    start_time: String,
    ready_since: String,
    restart_policy: String,
    containers: Vec<ContainerState>,
}

impl PodStatus {
    fn phase(&self) -> &'static str {
        let all_terminated = self.containers.iter().all(|c| c.terminated().is_some());
        if all_terminated && !self.containers.is_empty() && self.restart_policy != "Always" {
            let ok = self.containers.iter().all(|c| c.terminated() == Some(0));
            if ok || self.restart_policy == "Never" {
                return if ok { "Succeeded" } else { "Failed" };
            }
        }
        let started = self
            .containers
            .iter()
            .all(|c| c.running() || c.terminated().is_some() || c.restarts > 0);
        if started && !self.containers.is_empty() { "Running" } else { "Pending" }
    }

    fn to_json(&self) -> Value {
        let ready = !self.containers.is_empty() && self.containers.iter().all(|c| c.ready);
        let flag = |b: bool| if b { "True" } else { "False" };
        let condition = |type_: &str, status: bool, since: &str| json!({"type": type_, "status": flag(status), "lastTransitionTime": since, "lastProbeTime": null});
        json!({
            "phase": self.phase(),
            "hostIP": "127.0.0.1",
            "hostIPs": [{"ip": "127.0.0.1"}],
            "podIP": self.ip.to_string(),
            "podIPs": [{"ip": self.ip.to_string()}],
            "startTime": self.start_time,
            "qosClass": "Burstable",
            "conditions": [
                condition("PodScheduled", true, &self.start_time),
                condition("Initialized", true, &self.start_time),
                condition("ContainersReady", ready, &self.ready_since),
                condition("Ready", ready, &self.ready_since),
            ],
            "containerStatuses": self.containers.iter().map(|c| c.to_json(&self.uid)).collect::<Vec<_>>(),
        })
    }

    /// Writes the status; a pod that is gone is not an error (its task is about to stop).
    async fn write(&self, api: &Api<Pod>, name: &str) {
        let patch = Patch::Merge(json!({"status": self.to_json()}));
        match api.patch_status(name, &PatchParams::default(), &patch).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(error) => tracing::warn!(pod = %name, %error, "pod status could not be written"),
        }
    }
}

/// Runs one container: start, watch, restart.
struct Supervisor {
    agent: Arc<Agent>,
    runtime: Runtime,
    index: usize,
    state: ContainerState,
    plan: Plan,
    /// The pod's volumes as this container mounts them.
    volume_mounts: Vec<Mount>,
    ip: Ipv4Addr,
    /// The container's id for runc and the name of its cgroup.
    id: String,
    hostname: String,
    /// The container's bundle directory.
    bundle: PathBuf,
    log: PathBuf,
    restart_policy: String,
    updates: mpsc::UnboundedSender<(usize, ContainerState)>,
}

/// How one run of a container ended.
struct Exit {
    code: i64,
    reason: &'static str,
    started_at: String,
    message: Option<String>,
}

impl Supervisor {
    fn send(&self) {
        let _ = self.updates.send((self.index, self.state.clone()));
    }

    async fn run(mut self, mut stop: watch::Receiver<bool>) {
        loop {
            let exit = match self.run_once(&mut stop).await {
                Ok(Some(exit)) => exit,
                Ok(None) => return,
                Err(error) => {
                    tracing::warn!(container = %self.state.name, %error, "container could not start");
                    Exit {
                        code: 128,
                        reason: "StartError",
                        started_at: now(),
                        message: Some(error.to_string()),
                    }
                }
            };
            let mut terminated = json!({
                "exitCode": exit.code,
                "reason": exit.reason,
                "startedAt": exit.started_at,
                "finishedAt": now(),
                "containerID": format!("kubefaas://{}", self.id),
            });
            if let Some(message) = exit.message {
                terminated["message"] = json!(message);
            }
            tracing::info!(container = %self.id, code = exit.code, reason = exit.reason, "container terminated");
            self.state.ready = false;
            let restart = match self.restart_policy.as_str() {
                "Never" => false,
                "OnFailure" => exit.code != 0,
                _ => true,
            };
            if !restart {
                self.state.state = json!({"terminated": terminated});
                self.send();
                return;
            }
            // Shorter than a kubelet's (10 s doubling to 5 min): this is a development machine.
            let backoff = Duration::from_millis(500 * 2u64.pow(self.state.restarts.min(5)));
            self.state.last_state = json!({"terminated": terminated});
            self.state.state = waiting(
                "CrashLoopBackOff",
                &format!("back-off {}ms restarting failed container", backoff.as_millis()),
            );
            self.state.restarts += 1;
            self.send();
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = super::stopped(&mut stop) => return,
            }
        }
    }

    /// Writes the container's bundle.
    fn write_bundle(&self) -> Result<(), NodeError> {
        let agent = &self.agent;
        let mut env = self.plan.env.clone();
        env.insert("PATH".into(), agent.host.path.clone());
        env.insert("HOSTNAME".into(), self.hostname.clone());
        // Inside too: when runc dies with the agent, the container's program goes with it.
        let mut args = agent.killed_with_parent();
        args.push(WATCHDOG_PATH.to_owned());
        args.extend(self.plan.args.iter().cloned());
        let cgroups = agent.cgroups.as_ref().ok_or(NodeError::NoCgroup)?;
        let tmp_mounted = self.plan.mounts.iter().any(|m| m.path == "/tmp");
        let bundle = Bundle {
            dir: self.bundle.clone(),
            host: &agent.host,
            ip: self.ip,
            watchdog: &agent.config.watchdog,
            volumes: self.volume_mounts.clone(),
            tmp_bytes: (!tmp_mounted).then_some(agent.config.empty_dir_bytes),
        };
        bundle
            .write(oci::Container {
                args,
                env: &env,
                security: &self.plan.security,
                limits: self.plan.limits,
                pids_limit: agent.config.pids_limit,
                swap_accounting: cgroups.swap_accounting(),
                open_files: agent.open_files,
                mounts: Vec::new(),
                cgroups_path: cgroups.cgroups_path(&self.id),
                hostname: self.hostname.clone(),
            })
            .map_err(NodeError::Files)
    }

    /// One run; `None` when stopped.
    async fn run_once(
        &mut self,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<Option<Exit>, NodeError> {
        let agent = Arc::clone(&self.agent);
        let cgroup = agent.cgroups.as_ref().ok_or(NodeError::NoCgroup)?.container(&self.id);
        // What a run before this one (or an agent before this one) left behind.
        self.runtime.delete(&self.id).await;
        self.write_bundle()?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(NodeError::Files)?;
        let log2 = log.try_clone().map_err(NodeError::Files)?;
        // [setpriv --pdeathsig KILL --] runc run …: a killed agent takes runc with it.
        let mut argv = agent.killed_with_parent();
        argv.extend(self.runtime.run(&self.bundle, &self.id));
        let mut command = tokio::process::Command::new(&argv[0]);
        command
            .args(&argv[1..])
            .env_clear()
            .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
            .current_dir(&self.bundle)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .process_group(0)
            .kill_on_drop(true);
        let mut child = command.spawn().map_err(NodeError::Spawn)?;
        let pid = child.id().and_then(|p| i32::try_from(p).ok());
        let started_at = now();
        self.state.state = json!({"running": {"startedAt": started_at}});
        self.send();

        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut ticks: u32 = 0;
        let mut oom = false;
        let status = loop {
            tokio::select! {
                status = child.wait() => break status.ok(),
                _ = tick.tick() => {
                    ticks += 1;
                    if cgroup.oom_kills() > 0 && !oom {
                        // One process was killed; the container goes as a whole (memory.oom.group).
                        oom = true;
                        cgroup.kill_all();
                    }
                    let every = if self.state.ready { 20 } else { 3 };
                    if ticks.is_multiple_of(every) {
                        let ready = probe(self.ip, self.plan.port, &self.plan.ready_path).await;
                        if ready != self.state.ready {
                            self.state.ready = ready;
                            self.send();
                        }
                    }
                }
                () = super::stopped(stop) => {
                    self.runtime.kill(&self.id, "TERM").await;
                    if tokio::time::timeout(Duration::from_secs(3), child.wait()).await.is_err() {
                        self.runtime.kill(&self.id, "KILL").await;
                        if let Some(pid) = pid { kill_group(pid); }
                        let _ = child.kill().await;
                    }
                    self.runtime.delete(&self.id).await;
                    drop(cgroup);
                    return Ok(None);
                }
            }
        };
        oom |= cgroup.oom_kills() > 0;
        if let Some(pid) = pid {
            kill_group(pid);
        }
        self.runtime.delete(&self.id).await;
        drop(cgroup);
        use std::os::unix::process::ExitStatusExt;
        let code = status.map_or(128, |s| {
            s.code().map_or_else(|| 128 + i64::from(s.signal().unwrap_or(9)), i64::from)
        });
        let (code, reason) = if oom {
            (137, "OOMKilled")
        } else if code == 0 {
            (0, "Completed")
        } else {
            (code, "Error")
        };
        Ok(Some(Exit { code, reason, started_at, message: None }))
    }
}

/// An HTTP GET of `path` on the pod's address: ready on a 2xx or 3xx answer within a second.
async fn probe(ip: Ipv4Addr, port: u16, path: &str) -> bool {
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect((ip, port)).await.ok()?;
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {ip}:{port}\r\nUser-Agent: kubefaas-node-agent\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await.ok()?;
        let code = std::str::from_utf8(&head[9..12]).ok()?.parse::<u16>().ok()?;
        Some((200..400).contains(&code))
    };
    tokio::time::timeout(Duration::from_secs(1), attempt).await.ok().flatten().unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(policy: &str, states: &[Value]) -> PodStatus {
        PodStatus {
            uid: "u".into(),
            ip: Ipv4Addr::new(127, 1, 0, 1),
            start_time: now(),
            ready_since: now(),
            restart_policy: policy.into(),
            containers: states
                .iter()
                .map(|s| ContainerState {
                    name: "c".into(),
                    state: s.clone(),
                    ..Default::default()
                })
                .collect(),
        }
    }

    fn terminated(code: i64) -> Value {
        json!({"terminated": {"exitCode": code, "reason": "Error"}})
    }

    #[test]
    fn phase_follows_the_containers_and_the_restart_policy() {
        let running = json!({"running": {"startedAt": now()}});
        assert_eq!(status("Always", &[waiting("ErrImagePull", "no")]).phase(), "Pending");
        assert_eq!(status("Always", std::slice::from_ref(&running)).phase(), "Running");
        assert_eq!(status("Always", &[running, waiting("ErrImagePull", "")]).phase(), "Pending");
        assert_eq!(status("Never", &[terminated(0)]).phase(), "Succeeded");
        assert_eq!(status("Never", &[terminated(137)]).phase(), "Failed");
        assert_eq!(status("OnFailure", &[terminated(0)]).phase(), "Succeeded");
    }

    #[test]
    fn ready_conditions_need_every_container_ready() {
        let mut pod = status("Always", &[json!({"running": {}}), json!({"running": {}})]);
        pod.containers[0].ready = true;
        let json = pod.to_json();
        let ready = json["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Ready");
        assert_eq!(ready.unwrap()["status"], "False");
        pod.containers[1].ready = true;
        assert_eq!(pod.to_json()["conditions"][3]["status"], "True");
        assert_eq!(pod.to_json()["podIP"], "127.1.0.1");
        assert_eq!(pod.to_json()["containerStatuses"][1]["started"], true);
    }
}
