//! Functions from a watch, against the standalone control plane in-process: the warm path reads
//! no Function from the API server, a Function the watch has not delivered yet (or an older one
//! of the same name) is read from it, a deleted one stops resolving, and `minWarm` instances
//! start when a Function is Ready — on the kubernetes backend (pods of the node agent, with the
//! real `kubefaas-watchdog` and python) and on the local one, where the executor service runs
//! against real PostgreSQL (`DATABASE_URL`) and Redis (`REDIS_URL`) and reports its warm
//! instances on `/metrics`.
//!
//! Every request the executor's client makes is recorded, and watch events can be held back to
//! make the watch lag on purpose.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod support;

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use http_body_util::{BodyExt, StreamBody};
use k8s_openapi::{
    api::core::v1::{ConfigMap, Pod},
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use kubefaas_core::{
    code::{self, Package},
    queue::{Queue, QueueConfig},
    resources::{Function, FunctionCode, FunctionSpec, crds},
    runtime::Language,
    store::{FunctionState, Status, Store},
};
use kubefaas_executor::{
    Code, SandboxMode,
    functions::KubeFunctions,
    kubernetes::{KubernetesBackend, KubernetesConfig, labels},
    service::{ExecutorConfig, run_watching},
    worker::{Backend, Expected, FunctionSource, WarmInstances, WorkerConfig},
};
use kubefaas_standalone::{
    ApiServer,
    node::{NodeAgent, NodeConfig},
};
use serde_json::json;
use tokio::sync::watch;
use uuid::Uuid;

/// Bound on any wait, so a broken executor fails instead of hanging (pods start python).
const PATIENCE: Duration = Duration::from_secs(120);

const HANDLER: &str = "def handler(event, context):\n    return {'hello': event.get('name')}\n";

/// What the executor's client sent, and a switch that holds watch events back.
#[derive(Clone)]
struct Wire {
    requests: Arc<Mutex<Vec<String>>>,
    /// While true, watch responses deliver nothing more.
    hold: watch::Sender<bool>,
}

impl Wire {
    fn new() -> Self {
        Self { requests: Arc::default(), hold: watch::Sender::new(false) }
    }

    /// A client over `inner` that records every request and holds watch events while asked.
    fn client(&self, inner: Client) -> Client {
        let wire = self.clone();
        let service = tower::service_fn(move |request: http::Request<kube::client::Body>| {
            let (inner, wire) = (inner.clone(), wire.clone());
            async move {
                let watching = request.uri().query().is_some_and(|q| q.contains("watch=true"));
                let line = format!("{} {}", request.method(), request.uri().path());
                wire.requests.lock().unwrap().push(line);
                let (parts, body) = inner.send(request).await?.into_parts();
                let hold = wire.hold.subscribe();
                let frames =
                    futures::stream::unfold((body, hold), move |(mut body, mut hold)| async move {
                        let frame = body.frame().await?;
                        if watching {
                            let _ = hold.wait_for(|held| !held).await;
                        }
                        Some((frame, (body, hold)))
                    });
                Ok::<_, kube::Error>(http::Response::from_parts(parts, StreamBody::new(frames)))
            }
        });
        Client::new(service, "default")
    }

    /// How many times the Function `name` was read (not listed or watched).
    fn function_reads(&self, name: &str) -> usize {
        let read = format!("GET /apis/kubefaas.io/v1alpha1/namespaces/default/functions/{name}");
        self.requests.lock().unwrap().iter().filter(|r| **r == read).count()
    }

    fn hold_watch_events(&self, hold: bool) {
        self.hold.send_replace(hold);
    }
}

/// A standalone control plane with the CRDs, and a client of its own for the test's writes.
struct Cluster {
    server: ApiServer,
    client: Client,
}

impl Cluster {
    async fn start() -> Self {
        let server = ApiServer::start(kubefaas_standalone::Config::default()).await.unwrap();
        let client = server.client().unwrap();
        let crd_api: Api<CustomResourceDefinition> = Api::all(client.clone());
        for crd in crds() {
            crd_api.create(&PostParams::default(), &crd).await.unwrap();
        }
        Self { server, client }
    }

    fn functions(&self) -> Api<Function> {
        Api::default_namespaced(self.client.clone())
    }

    /// A python Function as the operator leaves it when ready: its code ConfigMap, then its
    /// status. Returns its row id (its uid).
    async fn ready_function(&self, name: &str, min_warm: i32) -> Uuid {
        let mut spec = FunctionSpec::new("python", "main.handler", FunctionCode::inline(HANDLER));
        spec.scaling.min_warm = min_warm;
        let created = self
            .functions()
            .create(&PostParams::default(), &Function::new(name, spec))
            .await
            .unwrap();
        let id = Uuid::parse_str(&created.uid().unwrap()).unwrap();
        let package = Package::from_bytes(Language::Python, "main.handler", HANDLER.into());
        let (data, binary_data) = package.config_map_data();
        let config_map: ConfigMap = serde_json::from_value(json!({
            "metadata": {
                "name": code::config_map_name(name),
                "annotations": {code::CHECKSUM_ANNOTATION: package.checksum()},
            },
        }))
        .unwrap();
        let config_map = ConfigMap {
            data: Some(data).filter(|d| !d.is_empty()),
            binary_data: Some(binary_data).filter(|b| !b.is_empty()),
            ..config_map
        };
        let config_maps: Api<ConfigMap> = Api::default_namespaced(self.client.clone());
        config_maps.create(&PostParams::default(), &config_map).await.unwrap();
        let status = json!({"status": {
            "phase": "Ready",
            "functionId": id,
            "observedGeneration": created.metadata.generation,
            "codeChecksum": package.checksum(),
        }});
        self.functions()
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .unwrap();
        id
    }

    /// Edits the code of `name` as a user and the operator would: a new spec (a new generation),
    /// the code ConfigMap, then the status. Returns the new checksum.
    async fn edit_code(&self, name: &str, source: &str) -> String {
        let patch = json!({"spec": {"code": {"inline": source}}});
        let edited = self
            .functions()
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
        let package = Package::from_bytes(Language::Python, "main.handler", source.into());
        let (data, _) = package.config_map_data();
        let config_map = json!({
            "metadata": {"annotations": {code::CHECKSUM_ANNOTATION: package.checksum()}},
            "data": data,
        });
        let config_maps: Api<ConfigMap> = Api::default_namespaced(self.client.clone());
        config_maps
            .patch(
                &code::config_map_name(name),
                &PatchParams::default(),
                &Patch::Merge(&config_map),
            )
            .await
            .unwrap();
        let status = json!({"status": {
            "observedGeneration": edited.metadata.generation,
            "codeChecksum": package.checksum(),
        }});
        self.functions()
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .unwrap();
        package.checksum()
    }

    /// Sets an environment variable of `name` as a user and the operator would: a new spec (a
    /// new generation), then the status.
    async fn edit_env(&self, name: &str, key: &str, value: &str) {
        let patch = json!({"spec": {"env": {key: value}}});
        let edited = self
            .functions()
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
        let status = json!({"status": {"observedGeneration": edited.metadata.generation}});
        self.functions()
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .unwrap();
    }

    /// How the function's row says it runs, as the operator records it from the Function now.
    async fn row_state(&self, name: &str) -> FunctionState {
        let function = self.functions().get(name).await.unwrap();
        FunctionState {
            runtime: function.spec.runtime.clone(),
            handler: function.spec.handler.clone(),
            code_checksum: function.status.as_ref().unwrap().code_checksum.clone().unwrap(),
            memory_mb: function.spec.memory_mb(),
            cpu_millis: function.spec.cpu_millis(),
            environment: function.spec.env.clone(),
        }
    }

    /// Deletes the Function and its code ConfigMap.
    async fn delete_function(&self, name: &str) {
        self.functions().delete(name, &DeleteParams::default()).await.unwrap();
        let config_maps: Api<ConfigMap> = Api::default_namespaced(self.client.clone());
        config_maps.delete(&code::config_map_name(name), &DeleteParams::default()).await.unwrap();
    }
}

/// A cluster, and a watch of its Functions through a recording client.
async fn watched() -> (Cluster, Wire, Arc<KubeFunctions>) {
    let cluster = Cluster::start().await;
    let wire = Wire::new();
    // The watch task runs on its own: dropping its handle does not stop it.
    let (functions, _) = KubeFunctions::start(wire.client(cluster.client.clone()), true);
    (cluster, wire, functions)
}

/// Polls `condition` every 20 ms until it holds; panics after [`PATIENCE`].
async fn wait_until<F: Future<Output = bool>>(what: &str, mut condition: impl FnMut() -> F) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !condition().await {
        assert!(tokio::time::Instant::now() < deadline, "{what}: not within {PATIENCE:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the watch has delivered `name` ready with row id `id`.
async fn cached(functions: &KubeFunctions, name: &str, id: Uuid) {
    wait_until(&format!("the watch delivers {name}"), || async {
        functions.cache().get("default", name).is_some_and(|f| f.function_id() == Some(id))
    })
    .await;
}

fn warm(backend: &impl Backend, name: &str) -> usize {
    backend.warm_instances().iter().filter(|w| w.function == name).map(|w| w.instances).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_resolve_takes_the_function_from_the_watch_without_reading_it() {
    let (cluster, wire, functions) = watched().await;
    let id = cluster.ready_function("hello", 0).await;
    cached(&functions, "hello", id).await;

    let before = wire.requests.lock().unwrap().len();
    for _ in 0..20 {
        let resolved =
            functions.resolve("default", "hello", &Expected::id(id)).await.unwrap().unwrap();
        assert_eq!(resolved.id, id);
        assert_eq!(resolved.spec.name, "hello");
    }
    let requests = wire.requests.lock().unwrap()[before..].to_vec();
    // The code ConfigMap is read once for its checksum; nothing else.
    assert!(
        requests.iter().all(|r| r.ends_with(&code::config_map_name("hello")))
            && requests.len() <= 1,
        "warm resolves asked the API server: {requests:?}"
    );
    assert_eq!(wire.function_reads("hello"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_created_and_invoked_at_once_resolves_before_the_watch_delivers_it() {
    let (cluster, wire, functions) = watched().await;
    assert!(functions.cache().ready(PATIENCE).await);
    wire.hold_watch_events(true);

    let id = cluster.ready_function("fresh", 0).await;
    assert!(functions.cache().get("default", "fresh").is_none(), "the watch was held back");
    let resolved = functions.resolve("default", "fresh", &Expected::id(id)).await.unwrap();
    assert_eq!(resolved.map(|r| r.id), Some(id));
    assert_eq!(wire.function_reads("fresh"), 1, "read from the API server");

    // Once the watch catches up, the same function is served from it.
    wire.hold_watch_events(false);
    cached(&functions, "fresh", id).await;
    functions.resolve("default", "fresh", &Expected::id(id)).await.unwrap().unwrap();
    assert_eq!(wire.function_reads("fresh"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_created_again_under_its_name_resolves_to_the_new_one_while_the_watch_lags() {
    let (cluster, wire, functions) = watched().await;
    let old = cluster.ready_function("again", 0).await;
    cached(&functions, "again", old).await;
    assert_eq!(
        functions.resolve("default", "again", &Expected::id(old)).await.unwrap().unwrap().id,
        old
    );

    wire.hold_watch_events(true);
    cluster.delete_function("again").await;
    let new = cluster.ready_function("again", 0).await;
    assert_eq!(
        functions.cache().get("default", "again").and_then(|f| f.function_id()),
        Some(old),
        "the watch still has the old function"
    );
    let resolved =
        functions.resolve("default", "again", &Expected::id(new)).await.unwrap().unwrap();
    assert_eq!(resolved.id, new);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn code_edited_a_moment_ago_is_run_even_while_the_watch_still_has_the_old() {
    let (cluster, wire, functions) = watched().await;
    let id = cluster.ready_function("edited", 0).await;
    cached(&functions, "edited", id).await;
    functions.resolve("default", "edited", &Expected::id(id)).await.unwrap().unwrap();

    wire.hold_watch_events(true);
    let new_source = "def handler(event, context):\n    return 'edited'\n";
    let checksum = cluster.edit_code("edited", new_source).await;
    let state = cluster.row_state("edited").await;
    assert_eq!(state.code_checksum, checksum);
    let stale = functions.cache().get("default", "edited").unwrap();
    assert_ne!(
        stale.status.as_ref().unwrap().code_checksum.as_deref(),
        Some(checksum.as_str()),
        "the watch still has the old code"
    );

    // PostgreSQL's checksum (what the claim reports) tells the cached copy is out of date.
    let expected = Expected { id, state: Some(state), generation: None };
    let resolved = functions.resolve("default", "edited", &expected).await.unwrap().unwrap();
    assert!(
        matches!(&resolved.spec.code, Code::File { contents, .. } if contents == new_source.as_bytes()),
        "the new code is run"
    );
    assert_eq!(wire.function_reads("edited"), 1, "read from the API server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_environment_edited_a_moment_ago_applies_even_while_the_watch_still_has_the_old() {
    let (cluster, wire, functions) = watched().await;
    let id = cluster.ready_function("configured", 0).await;
    cached(&functions, "configured", id).await;
    let state = cluster.row_state("configured").await;
    let before = Expected { id, state: Some(state), generation: None };
    functions.resolve("default", "configured", &before).await.unwrap().unwrap();
    assert_eq!(wire.function_reads("configured"), 0, "served from the watch");

    wire.hold_watch_events(true);
    cluster.edit_env("configured", "MODE", "new").await;
    let after =
        Expected { id, state: Some(cluster.row_state("configured").await), generation: None };
    let resolved = functions.resolve("default", "configured", &after).await.unwrap().unwrap();
    assert_eq!(resolved.spec.env.get("MODE").map(String::as_str), Some("new"));
    assert_eq!(wire.function_reads("configured"), 1, "read from the API server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_function_stops_resolving() {
    let (cluster, _, functions) = watched().await;
    let id = cluster.ready_function("doomed", 0).await;
    // A finalizer, as the operator's, keeps it visible while it is being deleted.
    let finalizer = json!({"metadata": {"finalizers": ["kubefaas.io/test"]}});
    cluster
        .functions()
        .patch("doomed", &PatchParams::default(), &Patch::Merge(&finalizer))
        .await
        .unwrap();
    cached(&functions, "doomed", id).await;
    assert!(functions.resolve("default", "doomed", &Expected::id(id)).await.unwrap().is_some());

    cluster.functions().delete("doomed", &DeleteParams::default()).await.unwrap();
    wait_until("the deleted function stops resolving", || async {
        functions.cache().get("default", "doomed").is_none()
            && functions.resolve("default", "doomed", &Expected::id(id)).await.unwrap().is_none()
    })
    .await;
}

fn watchdog() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kubefaas-watchdog"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ready_function_with_min_warm_gets_a_running_pod_before_any_invocation() {
    let cluster = Cluster::start().await;
    let dir =
        std::env::temp_dir().join(format!("kfx-{}", &Uuid::new_v4().simple().to_string()[..8]));
    let mut node = NodeConfig::new(&dir);
    node.watchdog = watchdog();
    let agent = NodeAgent::start(cluster.client.clone(), node).unwrap();
    let executor = format!("executor-{}", &Uuid::new_v4().simple().to_string()[..8]);
    let mut config = KubernetesConfig::new(&executor);
    config.reap_interval = Duration::from_millis(200);
    let backend = KubernetesBackend::start(cluster.client.clone(), config).await;
    let (functions, _watch) = KubeFunctions::start(cluster.client.clone(), false);
    let warmer = tokio::spawn(kubefaas_executor::warm::keep_warm(
        Arc::clone(&functions),
        Arc::clone(&backend),
        Duration::from_secs(60),
    ));

    cluster.ready_function("warm", 1).await;
    let pods: Api<Pod> = Api::default_namespaced(cluster.client.clone());
    let selector = format!("{}=warm,{}={executor}", labels::FUNCTION, labels::EXECUTOR);
    wait_until("a ready runtime pod and one warm instance", || async {
        let ready = pods.list(&ListParams::default().labels(&selector)).await.unwrap().items;
        let ready = ready.iter().filter(|p| {
            p.status
                .iter()
                .flat_map(|s| s.conditions.iter().flatten())
                .any(|c| c.type_ == "Ready" && c.status == "True")
        });
        ready.count() == 1 && warm(&backend, "warm") == 1
    })
    .await;

    // Deleted: its pod is retired.
    cluster.delete_function("warm").await;
    wait_until("the deleted function's pod is retired", || async {
        warm(&backend, "warm") == 0
            && pods.list(&ListParams::default().labels(&selector)).await.unwrap().items.is_empty()
    })
    .await;

    warmer.abort();
    agent.shutdown().await;
    cluster.server.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// PostgreSQL (a schema of its own, as a URL the service can open) and Redis (a key prefix of
/// its own) for one executor service.
struct Services {
    database_url: String,
    store: Store,
    queue: Queue,
    prefix: String,
}

impl Services {
    async fn start() -> Self {
        let (database_url, store) = support::fresh_store().await;
        let prefix = format!("exec-test-{}", Uuid::new_v4().simple());
        let redis = redis::Client::open(support::env("REDIS_URL")).unwrap();
        let queue = Queue::connect(
            redis,
            &QueueConfig { prefix: prefix.clone(), ..QueueConfig::default() },
        )
        .await
        .unwrap();
        Self { database_url, store, queue, prefix }
    }

    /// The row of the Function `name` (row id `id`, code [`HANDLER`]), as the operator records
    /// it.
    async fn record_function(&self, name: &str, id: Uuid) {
        let package = Package::from_bytes(Language::Python, "main.handler", HANDLER.into());
        let record = kubefaas_core::store::FunctionRecord {
            code_checksum: package.checksum(),
            ..support::python_record(id, name)
        };
        self.store.upsert_function(&record).await.unwrap();
    }

    /// Records an invocation and puts it on the queue, as the gateway does.
    async fn invoke(&self, name: &str, function_id: Uuid) -> Uuid {
        let payload = json!({"name": "warm"});
        support::enqueue(&self.store, &self.queue, function_id, name, payload, 30).await
    }
}

/// `GET /metrics` of the service at `addr`, or nothing while it does not answer yet.
async fn metrics(addr: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else { return String::new() };
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer).await;
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_backend_warms_min_warm_ahead_reports_it_and_serves_warm_without_reading_the_function()
 {
    let services = Services::start().await;
    let cluster = Cluster::start().await;
    let wire = Wire::new();
    // A free port for /metrics.
    let http_addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let mut worker = WorkerConfig::new(format!("exec-{}", Uuid::new_v4().simple()));
    worker.block = Duration::from_millis(200);
    let config = ExecutorConfig {
        database_url: services.database_url.clone(),
        redis_url: support::env("REDIS_URL"),
        queue_prefix: services.prefix.clone(),
        work_dir: PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("kube-functions-{}", Uuid::new_v4().simple())),
        sandbox: SandboxMode::Auto,
        worker,
        http_addr,
        grace: Duration::from_secs(5),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let pool = Arc::new(kubefaas_executor::Pool::new(support::driver()));
    let service = tokio::spawn(run_watching(
        config,
        wire.client(cluster.client.clone()),
        Arc::clone(&pool),
        async move {
            let _ = stopped.await;
        },
    ));

    let id = cluster.ready_function("ahead", 1).await;
    services.record_function("ahead", id).await;
    let gauge = r#"kubefaas_executor_warm_instances{namespace="default",function="ahead"} 1"#;
    wait_until("the warm instance started and reported", || async {
        metrics(http_addr).await.contains(gauge)
    })
    .await;
    assert_eq!(
        pool.warm_instances(),
        vec![WarmInstances { namespace: "default".into(), function: "ahead".into(), instances: 1 }]
    );

    let reads = wire.function_reads("ahead");
    let invocation = services.invoke("ahead", id).await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let row = loop {
        let row = services.store.invocation(invocation).await.unwrap();
        if let Some(row) = row.filter(|r| r.status.is_terminal()) {
            break row;
        }
        assert!(tokio::time::Instant::now() < deadline, "the invocation never finished");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(row.status, Status::Succeeded, "{:?}", row.error);
    assert_eq!(row.result, Some(json!({"hello": "warm"})));
    assert_eq!(row.metrics.unwrap().cold_start, Some(false), "ran on the instance started ahead");
    assert_eq!(wire.function_reads("ahead"), reads, "the invocation read the Function");

    let _ = stop.send(());
    service.await.unwrap().unwrap();
    cluster.server.shutdown().await.unwrap();
}
