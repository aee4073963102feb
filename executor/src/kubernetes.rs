//! The `kubernetes` backend: invocations run in runtime pods the executor creates per function
//! — the catalogue's image, the code mounted from the Function's code
//! ConfigMap, the function's limits, the restricted security context, an owner reference to
//! the Function so pods are garbage-collected with it. Each pod's `kubefaas-watchdog` takes one
//! invocation at a time over HTTP (`POST http://<podIP>:<port>/invoke`).
//!
//! Pods are reused while warm, created up to `maxInstances` when all are busy, reaped after
//! `idleTimeoutSeconds` down to `minWarm`, and replaced when the function's code or settings
//! change. A container the kubelet reports `OOMKilled` during an invocation makes it fail with
//! `OutOfMemory`; so does an instance the kernel killed inside a container that lives on (the OOM
//! killer picks the interpreter, not the watchdog): the watchdog reads its container cgroup's
//! OOM-kill counter. `minWarm` pods are started as soon as the Function is Ready, ahead of its first
//! invocation, and retired when it is deleted ([`crate::warm`] drives both from the watch of
//! Functions); `minWarm` and `maxInstances` count per executor, so each executor keeps and caps
//! that many (the Function's field docs say so; a shared pool across executors is future work).
//!
//! The backend knows its pods from memory only. Each pod carries the executor's name as a label,
//! and an executor starting under a name deletes the pods labelled with it (a restart with the
//! same `--name` cleans up after a crash). Pods of an executor that never comes back under its
//! name stay until their Function is deleted (its owner reference garbage-collects them).

use std::{
    collections::HashMap,
    hash::{DefaultHasher, Hash, Hasher},
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, PostParams},
};
use kubefaas_core::{
    code,
    env_from::SourceKind,
    resources::{Function, GROUP, VERSION},
    runtime,
};
use serde_json::{Value, json};
use tokio::sync::Notify;

use crate::{
    Invocation, Metrics, Request,
    error::{error_types, platform_error},
    watchdog::{InvokeResponse, env},
    worker::{Backend, ResolvedFunction, WarmInstances},
};

/// Labels and names of the pods this backend makes.
pub mod labels {
    /// The function a pod runs (the operator watches runtime pods by it).
    pub use kubefaas_core::resources::labels::FUNCTION;
    /// The executor that made it (and alone uses it).
    pub const EXECUTOR: &str = "kubefaas.io/executor";
    /// `app.kubernetes.io/managed-by` value.
    pub const MANAGED_BY: &str = "kubefaas-executor";
    /// The container's name.
    pub const CONTAINER: &str = "function";
    /// The code volume's mount path.
    pub const CODE_DIR: &str = "/var/task";
}

/// How the backend runs pods.
#[derive(Clone, Debug)]
pub struct KubernetesConfig {
    /// Registry prefix of runtime images (`registry.example/team`); empty for the catalogue's
    /// names as they are.
    pub image_prefix: String,
    /// The container port of the watchdog.
    pub port: u16,
    /// How long a new pod may take to become Ready.
    pub start_timeout: Duration,
    /// How often idle pods are reaped.
    pub reap_interval: Duration,
    /// This executor's name, as a label on its pods (a label value: 63 characters at most).
    pub executor: String,
    /// The CPU a runtime pod requests, in percent of its function's CPU limit (1–100). At 100
    /// (the default) the scheduler reserves the whole limit and the pod is in the Guaranteed
    /// QoS class; lower packs more pods on a node, which then share idle CPU. Memory is always
    /// requested in full: a node must never run out of what its pods were promised.
    pub cpu_request_percent: u32,
}

impl KubernetesConfig {
    /// Defaults for executor `name`.
    pub fn new(executor: impl Into<String>) -> Self {
        Self {
            image_prefix: String::new(),
            port: 8080,
            start_timeout: Duration::from_secs(120),
            reap_interval: Duration::from_secs(5),
            executor: label_value(&executor.into()),
            cpu_request_percent: 100,
        }
    }
}

/// The CPU request for a limit of `limit_millis` at `percent` of it: rounded up, at least 1m, at
/// most the limit.
fn cpu_request_millis(limit_millis: u64, percent: u32) -> u64 {
    let limit = limit_millis.max(1);
    let percent = u64::from(percent.clamp(1, 100));
    limit.saturating_mul(percent).div_ceil(100).clamp(1, limit)
}

/// A label value from any string: allowed characters only, 63 at most, alphanumeric ends.
fn label_value(s: &str) -> String {
    let cleaned: String = s
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '-' })
        .take(63)
        .collect();
    cleaned.trim_matches(|c: char| !c.is_ascii_alphanumeric()).to_owned()
}

/// Why an invocation could not be run on a pod.
#[derive(Debug, thiserror::Error)]
pub enum KubernetesError {
    /// The Function could not be read (to own and configure its pods).
    #[error("reading function {0}: {1}")]
    GetFunction(String, #[source] kube::Error),
    /// The Function names a runtime the catalogue does not have.
    #[error("function {0}: unknown runtime {1:?}")]
    UnknownRuntime(String, String),
    /// The pod could not be created.
    #[error("creating a pod for {0}: {1}")]
    CreatePod(String, #[source] kube::Error),
    /// The pod did not become Ready.
    #[error("pod {0} did not become ready: {1}")]
    NotReady(String, String),
    /// No pod became free in time.
    #[error("no instance of {0} became free within {1:?}")]
    NoInstance(String, Duration),
}

/// One runtime pod.
#[derive(Debug)]
struct Slot {
    name: String,
    /// `http://<podIP>:<port>`, once Ready.
    url: Option<String>,
    busy: bool,
    last_used: Instant,
    /// The container's restart count when it became ready (a higher one means it died).
    restarts: i32,
    /// The pod runs outdated code or settings, or its function was deleted: it is deleted
    /// when released.
    stale: bool,
}

/// The pods of one function.
#[derive(Debug, Default)]
struct FunctionPods {
    /// The function as last invoked or kept warm, to keep `minWarm` pods of it.
    function: Option<Arc<ResolvedFunction>>,
    fingerprint: u64,
    slots: Vec<Slot>,
    min_warm: usize,
    idle_timeout: Duration,
}

impl FunctionPods {
    /// Takes on `function`'s settings. When its code or settings changed, idle pods are
    /// removed (returned, to be deleted) and busy ones marked stale (deleted when released).
    fn update(&mut self, function: &Arc<ResolvedFunction>) -> Vec<String> {
        self.function = Some(Arc::clone(function));
        self.min_warm = function.scaling.min_warm;
        self.idle_timeout = function.scaling.idle_timeout;
        let print = fingerprint(function);
        let mut stale = Vec::new();
        if self.fingerprint != print {
            self.fingerprint = print;
            self.slots.retain(|s| {
                if !s.busy {
                    stale.push(s.name.clone());
                }
                s.busy
            });
            for slot in &mut self.slots {
                slot.stale = true;
            }
        }
        stale
    }

    /// Reserves placeholders for the pods missing to `minWarm` (counting those starting).
    fn missing_warm(&mut self) -> Vec<String> {
        let Some(function) = &self.function else { return Vec::new() };
        let wanted = self.min_warm.min(function.scaling.max_instances.max(1));
        let live = self.slots.iter().filter(|s| !s.stale).count();
        (live..wanted).map(|_| placeholder(&mut self.slots, false)).collect()
    }
}

/// Runs invocations on runtime pods (see the module docs).
pub struct KubernetesBackend {
    client: Client,
    config: KubernetesConfig,
    http: reqwest::Client,
    functions: Mutex<HashMap<(String, String), FunctionPods>>,
    /// Woken whenever a pod is released or removed.
    freed: Notify,
}

impl std::fmt::Debug for KubernetesBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesBackend").field("config", &self.config).finish_non_exhaustive()
    }
}

/// What identifies a function's pods: code, handler, environment and limits. A change makes
/// new pods.
fn fingerprint(function: &ResolvedFunction) -> u64 {
    let spec = &function.spec;
    let mut h = DefaultHasher::new();
    (function.id, &spec.checksum, &spec.handler, &spec.version, &spec.env, spec.limits)
        .hash(&mut h);
    for source in &function.env_from {
        (source.kind == SourceKind::Secret, &source.name, &source.prefix).hash(&mut h);
    }
    spec.language.as_str().hash(&mut h);
    h.finish()
}

impl KubernetesBackend {
    /// A backend over `client`; deletes pods a previous executor of the same name left, and
    /// reaps idle pods in the background.
    pub async fn start(client: Client, config: KubernetesConfig) -> Arc<Self> {
        let backend = Arc::new(Self {
            client,
            config,
            http: kubefaas_core::http::client_builder().build().unwrap_or_default(),
            functions: Mutex::default(),
            freed: Notify::new(),
        });
        let leftovers: Api<Pod> = Api::all(backend.client.clone());
        let selector = format!("{}={}", labels::EXECUTOR, backend.config.executor);
        if let Ok(list) = leftovers.list(&ListParams::default().labels(&selector)).await {
            for pod in list {
                let api: Api<Pod> =
                    Api::namespaced(backend.client.clone(), &pod.namespace().unwrap_or_default());
                let _ = api.delete(&pod.name_any(), &DeleteParams::default()).await;
            }
        }
        let reaper = Arc::downgrade(&backend);
        tokio::spawn(async move {
            let interval =
                reaper.upgrade().map_or(Duration::from_secs(5), |b| b.config.reap_interval);
            let mut tick = tokio::time::interval(interval);
            loop {
                tick.tick().await;
                let Some(backend) = reaper.upgrade() else { return };
                backend.reap().await;
                backend.top_up();
            }
        });
        backend
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), FunctionPods>> {
        self.functions.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Deletes idle pods past their function's idle timeout, keeping `minWarm`.
    async fn reap(&self) {
        let mut doomed = Vec::new();
        {
            let mut functions = self.lock();
            for ((namespace, _), pods) in functions.iter_mut() {
                let mut keep = pods.slots.len();
                let idle_timeout = pods.idle_timeout;
                let min_warm = pods.min_warm;
                pods.slots.retain(|slot| {
                    let expired = !slot.busy
                        && slot.url.is_some()
                        && slot.last_used.elapsed() >= idle_timeout
                        && keep > min_warm;
                    if expired {
                        keep -= 1;
                        doomed.push((namespace.clone(), slot.name.clone()));
                    }
                    !expired
                });
            }
        }
        for (namespace, name) in doomed {
            tracing::info!(%namespace, pod = %name, "reaping idle runtime pod");
            self.delete_pod(&namespace, &name).await;
        }
    }

    /// Starts pods for functions with fewer than `minWarm` (counting those starting), in the
    /// background.
    fn top_up(self: &Arc<Self>) {
        let mut wanted = Vec::new();
        {
            let mut functions = self.lock();
            for ((namespace, _), pods) in functions.iter_mut() {
                let Some(function) = pods.function.clone() else { continue };
                for placeholder in pods.missing_warm() {
                    wanted.push((namespace.clone(), Arc::clone(&function), placeholder));
                }
            }
        }
        for (namespace, function, placeholder) in wanted {
            let backend = Arc::clone(self);
            tokio::spawn(
                async move { backend.start_warm(&namespace, &function, &placeholder).await },
            );
        }
    }

    /// Starts a warm pod in place of `placeholder`.
    async fn start_warm(&self, namespace: &str, function: &ResolvedFunction, placeholder: &str) {
        let started = self.start_pod(namespace, function).await;
        let placed =
            self.fill(namespace, &function.spec.name, placeholder, started.as_ref(), false);
        if let (false, Ok((pod, _, _))) = (placed, &started) {
            self.delete_pod(namespace, pod).await;
        }
    }

    /// Puts a started pod in place of its placeholder, or removes the placeholder (and the
    /// whole function, when it is gone) if it failed. Returns whether the pod was put in place:
    /// not when its placeholder went meanwhile (the function changed or was retired).
    fn fill(
        &self,
        namespace: &str,
        function: &str,
        placeholder: &str,
        started: Result<&(String, String, i32), &KubernetesError>,
        busy: bool,
    ) -> bool {
        let key = (namespace.to_owned(), function.to_owned());
        match started {
            Ok((name, url, restarts)) => {
                let (name, url, restarts) = (name.clone(), url.clone(), *restarts);
                let placed = match self
                    .lock()
                    .get_mut(&key)
                    .and_then(|p| p.slots.iter_mut().find(|s| s.name == placeholder))
                {
                    Some(slot) => {
                        slot.name = name;
                        slot.url = Some(url);
                        slot.restarts = restarts;
                        slot.busy = busy;
                        slot.last_used = Instant::now();
                        true
                    }
                    None => false,
                };
                self.freed.notify_waiters();
                placed
            }
            Err(KubernetesError::GetFunction(_, kube::Error::Api(e))) if e.code == 404 => {
                self.lock().remove(&key);
                self.freed.notify_waiters();
                false
            }
            Err(error) => {
                if !busy {
                    tracing::warn!(%namespace, %function, %error, "starting a warm pod failed");
                }
                self.forget(&key, placeholder);
                false
            }
        }
    }

    async fn delete_pod(&self, namespace: &str, name: &str) {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        match api.delete(name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(error) => {
                tracing::warn!(%namespace, pod = %name, %error, "deleting a runtime pod failed")
            }
        }
    }

    /// A free pod of the function, made if there is room: `(pod, url, restarts, cold)`.
    async fn acquire(
        &self,
        namespace: &str,
        function: &Arc<ResolvedFunction>,
    ) -> Result<(String, String, i32, bool), KubernetesError> {
        let key = (namespace.to_owned(), function.spec.name.clone());
        let deadline = Instant::now() + self.config.start_timeout;
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            let stale;
            let create = {
                let mut functions = self.lock();
                let pods = functions.entry(key.clone()).or_default();
                // New code or settings: idle pods go now, busy ones when released.
                stale = pods.update(function);
                if let Some(slot) = pods.slots.iter_mut().find(|s| !s.busy && s.url.is_some()) {
                    slot.busy = true;
                    let url = slot.url.clone().unwrap_or_default();
                    return Ok((slot.name.clone(), url, slot.restarts, false));
                }
                let live = pods.slots.iter().filter(|s| !s.stale).count();
                if live < function.scaling.max_instances.max(1) {
                    Some(placeholder(&mut pods.slots, true))
                } else {
                    None
                }
            };
            for name in stale {
                self.delete_pod(namespace, &name).await;
            }
            if let Some(placeholder) = create {
                let started = self.start_pod(namespace, function).await;
                self.fill(namespace, &key.1, &placeholder, started.as_ref(), true);
                return started.map(|(name, url, restarts)| (name, url, restarts, true));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || tokio::time::timeout(left, freed).await.is_err() {
                return Err(KubernetesError::NoInstance(key.1, self.config.start_timeout));
            }
        }
    }

    fn forget(&self, key: &(String, String), name: &str) {
        if let Some(pods) = self.lock().get_mut(key) {
            pods.slots.retain(|s| s.name != name);
        }
        self.freed.notify_waiters();
    }

    /// Marks the pod free again, or deletes it when it is stale or `broken`.
    async fn release(&self, namespace: &str, function: &str, name: &str, broken: bool) {
        let key = (namespace.to_owned(), function.to_owned());
        let delete = {
            let mut functions = self.lock();
            functions.get_mut(&key).and_then(|p| p.slots.iter_mut().find(|s| s.name == name)).map(
                |slot| {
                    slot.busy = false;
                    slot.last_used = Instant::now();
                    broken || slot.stale
                },
            )
        };
        let Some(delete) = delete else {
            // Its function was retired while it ran.
            self.delete_pod(namespace, name).await;
            return;
        };
        if delete {
            self.forget(&key, name);
            self.delete_pod(namespace, name).await;
        } else {
            self.freed.notify_waiters();
        }
    }

    /// Creates a pod for the function and waits until it is Ready: `(name, url, restarts)`.
    async fn start_pod(
        &self,
        namespace: &str,
        function: &ResolvedFunction,
    ) -> Result<(String, String, i32), KubernetesError> {
        let name = function.spec.name.clone();
        let functions: Api<Function> = Api::namespaced(self.client.clone(), namespace);
        let resource = functions
            .get(&name)
            .await
            .map_err(|e| KubernetesError::GetFunction(name.clone(), e))?;
        let runtime = runtime::lookup(&resource.spec.runtime).ok_or_else(|| {
            KubernetesError::UnknownRuntime(name.clone(), resource.spec.runtime.clone())
        })?;
        let pod = runtime_pod(&self.config, &resource, function, runtime);
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let created = pods
            .create(&PostParams::default(), &pod)
            .await
            .map_err(|e| KubernetesError::CreatePod(name.clone(), e))?;
        let pod_name = created.name_any();
        tracing::info!(%namespace, function = %name, pod = %pod_name, "runtime pod created");
        match self.wait_ready(&pods, &pod_name).await {
            Ok((ip, restarts)) => {
                Ok((pod_name, format!("http://{ip}:{}", self.config.port), restarts))
            }
            Err(why) => {
                self.delete_pod(namespace, &pod_name).await;
                Err(KubernetesError::NotReady(pod_name, why))
            }
        }
    }

    /// Polls the pod until it is Ready (its IP and restart count) or cannot become so.
    async fn wait_ready(&self, pods: &Api<Pod>, name: &str) -> Result<(String, i32), String> {
        let deadline = Instant::now() + self.config.start_timeout;
        // Why the pod is not running yet, as the scheduler or kubelet says (for the timeout).
        let mut pending = String::new();
        loop {
            match pods.get_opt(name).await {
                Ok(Some(pod)) => {
                    let status = pod.status.unwrap_or_default();
                    if let Some(unscheduled) = status
                        .conditions
                        .iter()
                        .flatten()
                        .find(|c| c.type_ == "PodScheduled" && c.status == "False")
                    {
                        pending = format!(
                            ": {}: {}",
                            unscheduled.reason.as_deref().unwrap_or("not scheduled"),
                            unscheduled.message.as_deref().unwrap_or_default()
                        );
                    }
                    let ready = status
                        .conditions
                        .iter()
                        .flatten()
                        .any(|c| c.type_ == "Ready" && c.status == "True");
                    let container = status.container_statuses.iter().flatten().next();
                    if ready && let Some(ip) = status.pod_ip {
                        return Ok((ip, container.map_or(0, |c| c.restart_count)));
                    }
                    if let Some(waiting) =
                        container.and_then(|c| c.state.as_ref()).and_then(|s| s.waiting.as_ref())
                        && let Some(reason) = waiting.reason.as_deref()
                        && UNRECOVERABLE.contains(&reason)
                    {
                        return Err(format!(
                            "{reason}: {}",
                            waiting.message.clone().unwrap_or_default()
                        ));
                    }
                    if matches!(status.phase.as_deref(), Some("Failed" | "Succeeded")) {
                        return Err(format!("the pod ended ({:?})", status.phase));
                    }
                }
                Ok(None) => return Err("the pod was deleted".into()),
                Err(error) => tracing::warn!(pod = %name, %error, "reading a runtime pod failed"),
            }
            if Instant::now() >= deadline {
                return Err(format!("not Ready within {:?}{pending}", self.config.start_timeout));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Whether the pod's container was `OOMKilled` since it had `restarts` restarts. The
    /// kubelet reports it a moment after the kill, so this waits a little for it.
    async fn oom_killed(&self, namespace: &str, name: &str, restarts: i32) -> bool {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            let pod = match pods.get_opt(name).await {
                Ok(Some(pod)) => pod,
                Ok(None) => return false,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            {
                let status = pod.status.unwrap_or_default();
                for c in status.container_statuses.iter().flatten() {
                    let reasons = [c.state.as_ref(), c.last_state.as_ref()]
                        .into_iter()
                        .flatten()
                        .filter_map(|s| s.terminated.as_ref()?.reason.clone());
                    let died = c.restart_count > restarts
                        || c.state.as_ref().is_some_and(|s| s.terminated.is_some());
                    if died {
                        return reasons.into_iter().any(|r| r == "OOMKilled");
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        false
    }
}

/// Reserves a place for a pod that is starting; returns its placeholder name.
fn placeholder(slots: &mut Vec<Slot>, busy: bool) -> String {
    let name = format!("starting-{}", uuid::Uuid::new_v4().simple());
    slots.push(Slot {
        name: name.clone(),
        url: None,
        busy,
        last_used: Instant::now(),
        restarts: 0,
        stale: false,
    });
    name
}

/// Waiting reasons a pod does not recover from by itself.
const UNRECOVERABLE: &[&str] = &[
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
];

impl Backend for Arc<KubernetesBackend> {
    type Error = KubernetesError;

    /// Runtime pods carry the function's `envFrom`; the kubelet reads it.
    const READS_ENV_FROM: bool = true;

    async fn keep_warm(&self, namespace: &str, function: &Arc<ResolvedFunction>) {
        let (stale, placeholders) = {
            let mut functions = self.lock();
            let pods =
                functions.entry((namespace.to_owned(), function.spec.name.clone())).or_default();
            (pods.update(function), pods.missing_warm())
        };
        for name in stale {
            self.delete_pod(namespace, &name).await;
        }
        futures::future::join_all(
            placeholders
                .iter()
                .map(|placeholder| self.start_warm(namespace, function, placeholder)),
        )
        .await;
    }

    async fn retire(&self, namespace: &str, name: &str) {
        let key = (namespace.to_owned(), name.to_owned());
        let idle = {
            let mut functions = self.lock();
            let Some(pods) = functions.get_mut(&key) else { return };
            let mut idle = Vec::new();
            pods.slots.retain(|s| {
                if !s.busy && s.url.is_some() {
                    idle.push(s.name.clone());
                }
                s.busy
            });
            // Busy pods are deleted when released; pods still starting when they are filled
            // in (their placeholders are gone).
            for slot in &mut pods.slots {
                slot.stale = true;
            }
            if pods.slots.is_empty() {
                functions.remove(&key);
            } else {
                pods.function = None;
                pods.min_warm = 0;
            }
            idle
        };
        self.freed.notify_waiters();
        for pod in idle {
            self.delete_pod(namespace, &pod).await;
        }
    }

    fn warm_instances(&self) -> Vec<WarmInstances> {
        self.lock()
            .iter()
            .map(|((namespace, function), pods)| WarmInstances {
                namespace: namespace.clone(),
                function: function.clone(),
                instances: pods.slots.iter().filter(|s| s.url.is_some() && !s.stale).count(),
            })
            .collect()
    }

    async fn invoke(
        &self,
        namespace: &str,
        function: &Arc<ResolvedFunction>,
        request: &Request,
    ) -> Result<Invocation, KubernetesError> {
        let started = Instant::now();
        let body = json!({
            "id": request.id,
            "payload": request.payload,
            "timeoutMs": u64::try_from(request.timeout.as_millis()).unwrap_or(u64::MAX),
        });
        let mut refused = 0;
        let (pod, restarts, cold, answer) = loop {
            let (pod, url, restarts, cold) = self.acquire(namespace, function).await?;
            // The watchdog enforces the timeout; this bound only catches a pod that stops
            // answering.
            let answer = self
                .http
                .post(format!("{url}/invoke"))
                .json(&body)
                .timeout(request.timeout + Duration::from_secs(10))
                .send()
                .await;
            match answer {
                // Nothing was sent: the pod is gone (garbage-collected, restarted elsewhere).
                // Forget it and try another; the invocation has not started.
                Err(error) if error.is_connect() && refused < 3 => {
                    tracing::info!(%namespace, %pod, %error, "runtime pod unreachable; using another");
                    refused += 1;
                    self.release(namespace, &function.spec.name, &pod, true).await;
                }
                answer => break (pod, restarts, cold, answer),
            }
        };
        let answer = match answer {
            Ok(response) if response.status().is_success() => {
                response.json::<InvokeResponse>().await.map_err(|e| e.to_string())
            }
            Ok(response) => Err(format!("the watchdog answered {}", response.status())),
            Err(error) => Err(error.to_string()),
        };
        let mut broken = false;
        let invocation = match answer {
            Ok(response) => {
                let died =
                    response.error.as_ref().is_some_and(|e| e.type_ == error_types::RUNTIME_EXITED);
                let mut outcome = match (response.result, response.error) {
                    (_, Some(error)) => Err(error),
                    (result, None) => Ok(result.unwrap_or(serde_json::Value::Null)),
                };
                if died {
                    broken = true;
                    if self.oom_killed(namespace, &pod, restarts).await {
                        outcome = Err(out_of_memory());
                    }
                }
                let m = response.metrics;
                let ms = |v: Option<i64>| {
                    v.and_then(|v| u64::try_from(v).ok()).map(Duration::from_millis)
                };
                Invocation {
                    outcome,
                    logs: response.logs,
                    logs_truncated: response.logs_truncated,
                    metrics: Metrics {
                        duration: ms(m.duration_ms).unwrap_or_else(|| started.elapsed()),
                        cpu_time: ms(m.cpu_time_ms),
                        memory_peak_bytes: m.memory_peak_bytes.and_then(|b| u64::try_from(b).ok()),
                        cold_start: cold,
                        init_duration: None,
                    },
                }
            }
            Err(why) => {
                broken = true;
                let error = if self.oom_killed(namespace, &pod, restarts).await {
                    out_of_memory()
                } else {
                    platform_error(
                        error_types::RUNTIME_EXITED,
                        format!("the runtime pod {pod} stopped answering: {why}"),
                    )
                };
                Invocation {
                    outcome: Err(error),
                    logs: String::new(),
                    logs_truncated: false,
                    metrics: Metrics {
                        duration: started.elapsed(),
                        cpu_time: None,
                        memory_peak_bytes: None,
                        cold_start: cold,
                        init_duration: None,
                    },
                }
            }
        };
        self.release(namespace, &function.spec.name, &pod, broken).await;
        Ok(invocation)
    }
}

fn out_of_memory() -> kubefaas_core::resources::InvocationError {
    platform_error(
        error_types::OUT_OF_MEMORY,
        "the function went over its memory limit and was killed (OOMKilled)",
    )
}

/// The runtime pod of `function` (pure: unit-tested).
pub fn runtime_pod(
    config: &KubernetesConfig,
    resource: &Function,
    function: &ResolvedFunction,
    runtime: &runtime::Runtime,
) -> Pod {
    let spec = &function.spec;
    let name = resource.name_any();
    let image = if config.image_prefix.is_empty() {
        runtime.image.to_owned()
    } else {
        format!("{}/{}", config.image_prefix.trim_end_matches('/'), runtime.image)
    };
    let memory_mb = (spec.limits.memory_bytes / (1024 * 1024)).max(1);
    let timeout = resource.spec.timeout_seconds.max(1);
    let mut env = vec![
        json!({"name": env::RUNTIME, "value": runtime.name}),
        json!({"name": env::HANDLER, "value": spec.handler}),
        json!({"name": env::CODE_DIR, "value": labels::CODE_DIR}),
        json!({"name": env::WORK_DIR, "value": "/tmp/kubefaas"}),
        json!({"name": env::LISTEN, "value": format!("0.0.0.0:{}", config.port)}),
        json!({"name": env::FUNCTION_NAME, "value": name}),
        json!({"name": env::FUNCTION_VERSION, "value": spec.version}),
        json!({"name": env::MEMORY_MB, "value": memory_mb.to_string()}),
        json!({"name": env::TIMEOUT_SECONDS, "value": timeout.to_string()}),
        // Set here so that no envFrom key can set it (env wins over envFrom).
        json!({"name": env::SANDBOX, "value": "off"}),
    ];
    env.extend(
        spec.env
            .iter()
            .filter(|(k, _)| !k.starts_with("KUBEFAAS_"))
            .map(|(k, v)| json!({"name": k, "value": v})),
    );
    let env_from: Vec<Value> = function
        .env_from
        .iter()
        .map(|source| {
            let reference = json!({"name": source.name});
            let mut entry = match source.kind {
                SourceKind::ConfigMap => json!({"configMapRef": reference}),
                SourceKind::Secret => json!({"secretRef": reference}),
            };
            if !source.prefix.is_empty() {
                entry["prefix"] = json!(source.prefix);
            }
            entry
        })
        .collect();
    let limits = json!({
        "memory": spec.limits.memory_bytes.to_string(),
        "cpu": format!("{}m", spec.limits.cpu_millis),
    });
    let requests = json!({
        "memory": spec.limits.memory_bytes.to_string(),
        "cpu": format!("{}m", cpu_request_millis(spec.limits.cpu_millis, config.cpu_request_percent)),
    });
    let base: String = name.chars().take(50).collect();
    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": format!("{base}-"),
            "namespace": resource.namespace(),
            "labels": {
                labels::FUNCTION: label_value(&name),
                labels::EXECUTOR: config.executor,
                "app.kubernetes.io/managed-by": labels::MANAGED_BY,
                "app.kubernetes.io/component": "runtime",
            },
            "ownerReferences": [{
                "apiVersion": format!("{GROUP}/{VERSION}"),
                "kind": "Function",
                "name": name,
                "uid": resource.uid().unwrap_or_default(),
                "controller": true,
                "blockOwnerDeletion": true,
            }],
        },
        "spec": {
            "restartPolicy": "Always",
            "automountServiceAccountToken": false,
            "enableServiceLinks": false,
            "terminationGracePeriodSeconds": 5,
            "securityContext": {
                "runAsNonRoot": true,
                "runAsUser": 65532,
                "runAsGroup": 65532,
                "fsGroup": 65532,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [{
                "name": labels::CONTAINER,
                "image": image,
                "ports": [{"name": "http", "containerPort": config.port, "protocol": "TCP"}],
                "env": env,
                "envFrom": env_from,
                "resources": {"limits": limits, "requests": requests},
                "readinessProbe": {
                    "httpGet": {"path": "/healthz", "port": config.port},
                    "periodSeconds": 2,
                },
                "securityContext": {
                    "runAsNonRoot": true,
                    "allowPrivilegeEscalation": false,
                    "readOnlyRootFilesystem": true,
                    "capabilities": {"drop": ["ALL"]},
                    "seccompProfile": {"type": "RuntimeDefault"},
                },
                "volumeMounts": [
                    {"name": "code", "mountPath": labels::CODE_DIR, "readOnly": true},
                    {"name": "tmp", "mountPath": "/tmp"},
                ],
            }],
            "volumes": [
                {"name": "code", "configMap": {"name": code::config_map_name(&name)}},
                {"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}},
            ],
        },
    });
    // The literal above has the shape of a Pod; the fallback is unreachable in practice.
    serde_json::from_value(pod).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use kubefaas_core::env_from::EnvSource;

    use crate::{Code, FunctionSpec, Scaling};

    fn fixture() -> (Function, ResolvedFunction) {
        let mut resource: Function = serde_json::from_value(json!({
            "apiVersion": "kubefaas.io/v1alpha1", "kind": "Function",
            "metadata": {"name": "hello", "namespace": "team", "uid": "u-1"},
            "spec": {"runtime": "python", "handler": "main.handler", "code": {"inline": "x"}},
        }))
        .unwrap();
        resource.spec.timeout_seconds = 30;
        let code = Code::File { name: "main.py".into(), contents: b"x".to_vec() };
        let mut spec =
            FunctionSpec::new("hello", runtime::Language::Python, "main.handler", code).unwrap();
        spec.env.insert("GREETING".into(), "hi".into());
        let resolved = ResolvedFunction {
            id: uuid::Uuid::nil(),
            spec: Arc::new(spec),
            env_from: vec![EnvSource {
                kind: SourceKind::Secret,
                name: "db".into(),
                prefix: "DB_".into(),
                optional: false,
            }],
            env_from_error: None,
            scaling: Scaling::default(),
            max_concurrency: 1,
        };
        (resource, resolved)
    }

    #[test]
    fn runtime_pods_request_a_share_of_their_cpu_limit_and_all_their_memory() {
        let (resource, resolved) = fixture();
        let mut config = KubernetesConfig::new("executor-1");
        config.cpu_request_percent = 25;
        let runtime = runtime::lookup("python").unwrap();
        let pod =
            serde_json::to_value(runtime_pod(&config, &resource, &resolved, runtime)).unwrap();
        let resources = &pod["spec"]["containers"][0]["resources"];
        assert_eq!(resources["limits"]["cpu"], "100m");
        assert_eq!(resources["requests"]["cpu"], "25m");
        assert_eq!(resources["requests"]["memory"], resources["limits"]["memory"]);
        assert_eq!((cpu_request_millis(1, 10), cpu_request_millis(333, 10)), (1, 34));
        assert_eq!((cpu_request_millis(500, 0), cpu_request_millis(500, 250)), (5, 500));
    }

    #[test]
    fn runtime_pods_are_restricted_owned_and_mount_the_code() {
        let (resource, resolved) = fixture();
        let mut config = KubernetesConfig::new("executor-1");
        config.image_prefix = "registry.example/kf/".into();
        let runtime = runtime::lookup("python").unwrap();
        let pod =
            serde_json::to_value(runtime_pod(&config, &resource, &resolved, runtime)).unwrap();
        let spec = &pod["spec"];
        assert_eq!(spec["automountServiceAccountToken"], false);
        assert_eq!(spec["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
        let container = &spec["containers"][0];
        assert_eq!(container["image"], "registry.example/kf/kubefaas/runtime-python:3.13");
        let security = &container["securityContext"];
        assert_eq!(security["runAsNonRoot"], true);
        assert_eq!(security["allowPrivilegeEscalation"], false);
        assert_eq!(security["readOnlyRootFilesystem"], true);
        assert_eq!(security["capabilities"]["drop"], json!(["ALL"]));
        assert_eq!(container["resources"]["limits"]["memory"], (128u64 << 20).to_string());
        assert_eq!(container["resources"]["limits"]["cpu"], "100m");
        assert_eq!(container["resources"]["requests"], container["resources"]["limits"]);
        assert_eq!(spec["volumes"][0]["configMap"]["name"], "hello-code");
        let owner = &pod["metadata"]["ownerReferences"][0];
        assert_eq!(
            (owner["kind"].as_str(), owner["uid"].as_str()),
            (Some("Function"), Some("u-1"))
        );
        assert_eq!(owner["controller"], true);
        assert_eq!(pod["metadata"]["labels"][labels::EXECUTOR], "executor-1");
        let env = container["env"].as_array().unwrap();
        assert!(env.contains(&json!({"name": "GREETING", "value": "hi"})));
        assert!(env.contains(&json!({"name": "KUBEFAAS_HANDLER", "value": "main.handler"})));
        assert!(env.contains(&json!({"name": "KUBEFAAS_SANDBOX", "value": "off"})));
        assert_eq!(container["envFrom"], json!([{"secretRef": {"name": "db"}, "prefix": "DB_"}]));
    }

    #[test]
    fn a_change_of_code_limits_or_env_sources_changes_the_fingerprint() {
        let (_, resolved) = fixture();
        let before = fingerprint(&resolved);
        let mut spec = (*resolved.spec).clone();
        spec.limits.memory_bytes *= 2;
        let changed = ResolvedFunction { spec: Arc::new(spec), ..resolved.clone() };
        assert_ne!(before, fingerprint(&changed));
        assert_eq!(before, fingerprint(&resolved));
        let mut moved = resolved.clone();
        moved.env_from[0].name = "other-db".into();
        assert_ne!(before, fingerprint(&moved), "envFrom is part of the fingerprint");
    }

    #[test]
    fn label_values_are_cleaned() {
        assert_eq!(label_value("host/1:2"), "host-1-2");
        assert_eq!(label_value(&"x".repeat(80)).len(), 63);
    }
}
