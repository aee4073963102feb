//! End to end with the real binaries as separate processes: `kubefaas-apiserver` (the standalone
//! control plane), `kubefaas-operator` and `kubefaas-executor` (local backend; or the kubernetes
//! backend with the apiserver's node agent running the pods) against real PostgreSQL and Redis,
//! driven with the real `kubectl`.
//!
//! Needs `DATABASE_URL`, `REDIS_URL` (`make test` provides both) and the workspace's binaries
//! built (`cargo nextest run --workspace` / `cargo test --workspace` build them).

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod support;

use std::time::Duration;

use chrono::{DateTime, Utc};
use kubefaas_core::store::{Status, Store};
use serde_json::Value;
use support::{PATIENCE, Platform, PrivateRedis, env, repo, time};
use uuid::Uuid;

/// When the object was created.
fn created(object: &Value) -> DateTime<Utc> {
    time(object["metadata"]["creationTimestamp"].as_str().unwrap())
}

/// To the second, as Kubernetes timestamps are.
fn whole_seconds(at: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp(at.timestamp(), 0).unwrap()
}

/// `status.lastInvokedAt` of function `slow` follows its invocations: it is the creation time in
/// PostgreSQL of the newest one, from the completion the executor publishes, and an operator
/// restarted after missing a completion finds it in PostgreSQL. `slow-once` has succeeded.
async fn last_invoked_at_follows_invocations_and_survives_an_operator_restart(
    platform: &mut Platform,
    store: &Store,
) {
    let check = async |platform: &Platform, invocation: &str| {
        let object = platform.get(&format!("invocation/{invocation}")).await;
        let shown = platform.wait_last_invoked("function/slow", created(&object)).await;
        let row = platform.wait_row(store, invocation, |_| true).await;
        assert_eq!(
            shown,
            whole_seconds(row.created_at),
            "{invocation}: the row's creation time, not the operator's clock"
        );
    };
    check(platform, "slow-once").await;
    // `kubectl get fn` shows it in its INVOKED column.
    let table = platform.kubectl_ok(&["get", "fn", "slow"]).await;
    let mut lines = table.lines().map(|l| l.split_whitespace().collect::<Vec<_>>());
    let header = lines.next().unwrap_or_default();
    let row = lines.next().unwrap_or_default();
    let column = header.iter().position(|h| *h == "INVOKED").expect("an INVOKED column");
    assert_ne!(row.get(column).copied(), Some("<none>"), "{table}");

    // Nothing but the completion notice tells the operator about this one. Each invocation is
    // made after the one before finished, and each runs for a second or more, so no two are
    // created within one second (the precision of the field): each check tells them apart.
    platform.invoke("slow-twice", "slow", "{sleep: 1}").await;
    platform.wait_phase("invocation/slow-twice", "Succeeded").await;
    check(platform, "slow-twice").await;

    // The operator is down when this one completes: its notice is lost.
    platform.invoke("slow-thrice", "slow", "{sleep: 2}").await;
    platform.wait_row(store, "slow-thrice", |row| row.status == Status::Running).await;
    platform.operator.take().unwrap().kill().await.unwrap();
    platform.wait_row(store, "slow-thrice", |row| row.status.is_terminal()).await;
    platform.start_operator();
    platform.wait_phase("invocation/slow-thrice", "Succeeded").await;
    check(platform, "slow-thrice").await;
}

fn function(name: &str, runtime: &str, handler: &str, code: &str, extra: &str) -> String {
    let code = code.lines().map(|l| format!("      {l}")).collect::<Vec<_>>().join("\n");
    format!(
        "apiVersion: kubefaas.io/v1alpha1\nkind: Function\nmetadata:\n  name: {name}\nspec:\n  runtime: {runtime}\n  handler: {handler}\n  code:\n    inline: |\n{code}\n{extra}"
    )
}

/// A function that allocates until it is killed at its 64 MiB limit ends `Failed` with
/// `OutOfMemory`.
async fn memory_hog_fails_out_of_memory(platform: &Platform) {
    platform
        .apply(&function(
            "hog",
            "python",
            "main.handler",
            "def handler(event, context):\n    blocks = []\n    while True:\n        blocks.append(bytearray(16 * 1024 * 1024))",
            "  resources:\n    memory: 64Mi\n    cpu: 500m\n",
        ))
        .await;
    platform.wait_phase("function/hog", "Ready").await;
    platform.invoke("hog-once", "hog", "{}").await;
    let oom = platform.wait_phase("invocation/hog-once", "Failed").await;
    assert_eq!(oom["status"]["error"]["type"], "OutOfMemory", "{}", oom["status"]);
}

/// A node function whose module requires a file that is not in its package fails its
/// invocation with `Runtime.ImportModuleError` naming the file and with what the module printed,
/// rather than waiting (on the kubernetes backend: for a pod whose handler never loads to become
/// Ready, until the pod start timeout of 300 s here).
async fn code_that_does_not_load_fails_at_once_saying_why(platform: &Platform) {
    platform
        .apply(&function(
            "unloadable",
            "nodejs",
            "index.handler",
            "console.log('loading helpers');\nconst helpers = require('./helpers');\nexports.handler = async () => helpers.answer;",
            "",
        ))
        .await;
    platform.wait_phase("function/unloadable", "Ready").await;
    platform.invoke("unloadable-once", "unloadable", "{}").await;
    let failed = platform.wait_phase("invocation/unloadable-once", "Failed").await;
    let status = &failed["status"];
    assert_eq!(status["error"]["type"], "Runtime.ImportModuleError", "{status}");
    let message = status["error"]["message"].as_str().unwrap();
    assert!(message.contains("Cannot find module './helpers'"), "{status}");
    assert!(status["logs"].as_str().unwrap().contains("loading helpers"), "{status}");
    assert_eq!(status["attempts"], 1, "a load failure is not retried: {status}");
}

/// A Function's `envFrom` reaches its handler as a pod's does: the keys of a ConfigMap and of a
/// Secret (written with `stringData`, prefixed), `env` winning over both, names that are not
/// variables skipped. One whose Secret is missing fails saying so, and runs once it exists.
async fn env_from_secrets_and_config_maps_reach_the_function(platform: &Platform) {
    platform
        .apply(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  MODE: from-configmap\n  LEVEL: \"3\"\n  app.conf: ignored\n",
        )
        .await;
    platform
        .apply(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: db\nstringData:\n  PASSWORD: s3cret\n  USER: admin\n",
        )
        .await;
    let handler = "import os\ndef handler(event, context):\n    return {k: os.environ.get(k) for k in event['keys']}";
    let keys = "{keys: [MODE, LEVEL, DB_PASSWORD, DB_USER, PASSWORD, app.conf]}";
    let sources = "  env: {MODE: from-env}\n  envFrom:\n  - configMapRef: {name: settings}\n  - secretRef: {name: db}\n    prefix: DB_\n";
    platform.apply(&function("configured", "python", "main.handler", handler, sources)).await;
    platform.wait_phase("function/configured", "Ready").await;
    platform.invoke("configured-1", "configured", keys).await;
    let done = platform.wait_phase("invocation/configured-1", "Succeeded").await;
    assert_eq!(
        done["status"]["result"],
        serde_json::json!({
            "MODE": "from-env", "LEVEL": "3", "DB_PASSWORD": "s3cret", "DB_USER": "admin",
            "PASSWORD": null, "app.conf": null,
        })
    );

    let missing = "  retry: {maxAttempts: 1}\n  envFrom:\n  - secretRef: {name: absent}\n";
    platform.apply(&function("unconfigured", "python", "main.handler", handler, missing)).await;
    platform.wait_phase("function/unconfigured", "Ready").await;
    platform.invoke("unconfigured-1", "unconfigured", "{keys: [TOKEN]}").await;
    let failed = platform.wait_phase("invocation/unconfigured-1", "Failed").await;
    let message = failed["status"]["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("secret \"absent\" not found"), "{}", failed["status"]);
    platform
        .apply("apiVersion: v1\nkind: Secret\nmetadata:\n  name: absent\nstringData:\n  TOKEN: here-now\n")
        .await;
    platform.invoke("unconfigured-2", "unconfigured", "{keys: [TOKEN]}").await;
    let done = platform.wait_phase("invocation/unconfigured-2", "Succeeded").await;
    assert_eq!(done["status"]["result"]["TOKEN"], "here-now");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_from_and_load_failures_work_on_the_local_backend() {
    let platform = Platform::start().await;
    env_from_secrets_and_config_maps_reach_the_function(&platform).await;
    code_that_does_not_load_fails_at_once_saying_why(&platform).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn functions_in_every_runtime_run_through_resources_with_their_limits() {
    let platform = Platform::start_with(env("REDIS_URL"), true).await;
    let examples = repo().join("examples");

    // The examples as a user applies them: python, nodejs, go.
    for (file, function) in [
        ("function.yaml", "hello"),
        ("function-nodejs.yaml", "hello-node"),
        ("function-go.yaml", "hello-go"),
    ] {
        platform.kubectl_ok(&["apply", "-f", examples.join(file).to_str().unwrap()]).await;
        let ready = platform.wait_phase(&format!("function/{function}"), "Ready").await;
        assert!(ready["status"]["functionId"].is_string(), "{}", ready["status"]);
        assert_eq!(ready["status"]["codeChecksum"].as_str().unwrap().len(), 64);
    }
    platform.kubectl_ok(&["apply", "-f", examples.join("invocation.yaml").to_str().unwrap()]).await;
    let done = platform.wait_phase("invocation/hello-once", "Succeeded").await;
    assert_eq!(done["status"]["result"]["message"], "Hello, kubefaas!");
    assert_eq!(
        done["status"]["result"]["invocation"], done["metadata"]["uid"],
        "the request id is the invocation id"
    );
    assert!(
        done["status"]["logs"].as_str().unwrap().contains("greeting kubefaas"),
        "{}",
        done["status"]
    );
    assert_eq!(done["status"]["attempts"], 1);

    platform.invoke("node-once", "hello-node", "{name: node}").await;
    let node = platform.wait_phase("invocation/node-once", "Succeeded").await;
    assert_eq!(node["status"]["result"]["message"], "Hello, node!");
    platform.invoke("go-once", "hello-go", "{name: gopher}").await;
    let go = platform.wait_phase("invocation/go-once", "Succeeded").await;
    assert_eq!(go["status"]["result"]["message"], "Hello, gopher!");

    // A raising function fails with its error type and stack.
    platform
        .apply(&function(
            "raiser",
            "python",
            "main.handler",
            "def handler(event, context):\n    raise KeyError('missing')",
            "",
        ))
        .await;
    platform.wait_phase("function/raiser", "Ready").await;
    platform.invoke("raise-once", "raiser", "{}").await;
    let failed = platform.wait_phase("invocation/raise-once", "Failed").await;
    assert_eq!(failed["status"]["error"]["type"], "KeyError");
    assert!(
        failed["status"]["error"]["stack"].as_str().unwrap().contains("main.py"),
        "{}",
        failed["status"]
    );

    // A sleeping one is killed at its deadline.
    platform
        .apply(&function(
            "sleeper",
            "python",
            "main.handler",
            "import time\ndef handler(event, context):\n    time.sleep(60)",
            "  timeoutSeconds: 2\n",
        ))
        .await;
    platform.wait_phase("function/sleeper", "Ready").await;
    platform.invoke("sleep-once", "sleeper", "{}").await;
    let timed_out = platform.wait_phase("invocation/sleep-once", "TimedOut").await;
    assert_eq!(timed_out["status"]["error"]["type"], "TimedOut");

    // A memory hog is killed at its memory limit.
    memory_hog_fails_out_of_memory(&platform).await;

    // Editing the code changes the next result.
    platform
        .apply(&function(
            "hello",
            "python",
            "main.handler",
            "def handler(event, context):\n    return {'message': 'Bonjour, ' + event['name'] + '!'}",
            "",
        ))
        .await;
    let edited = platform.wait_observed("function/hello").await;
    assert_eq!(edited["status"]["phase"], "Ready", "{}", edited["status"]);
    platform.invoke("hello-twice", "hello", "{name: kubefaas}").await;
    let edited = platform.wait_phase("invocation/hello-twice", "Succeeded").await;
    assert_eq!(edited["status"]["result"]["message"], "Bonjour, kubefaas!");

    // A finished invocation disappears after its TTL; PostgreSQL keeps the record.
    platform
        .apply("apiVersion: kubefaas.io/v1alpha1\nkind: Invocation\nmetadata:\n  name: short-lived\nspec:\n  functionRef:\n    name: hello\n  payload: {name: ttl}\n  ttlSecondsAfterFinished: 1\n")
        .await;
    platform.kubectl_ok(&["wait", "--for=delete", "invocation/short-lived", "--timeout=60s"]).await;
    let rows = platform
        .store()
        .await
        .list_invocations(&kubefaas_core::store::InvocationQuery::default())
        .await
        .unwrap();
    let kept = rows
        .iter()
        .find(|row| row.resource_name.as_deref() == Some("short-lived"))
        .expect("the row outlives the object");
    assert_eq!(kept.status, kubefaas_core::store::Status::Succeeded);
    assert_eq!(kept.result.as_ref().unwrap()["message"], "Bonjour, ttl!");

    // Deleting the function: later invocations fail with FunctionNotFound.
    platform.kubectl_ok(&["delete", "function", "hello", "--wait=true", "--timeout=60s"]).await;
    let code = platform.kubectl(&["get", "configmap", "hello-code"]).await;
    assert!(!code.status.success(), "the code ConfigMap is garbage-collected with its function");
    platform.invoke("hello-after", "hello", "{name: nobody}").await;
    let missing = platform.wait_phase("invocation/hello-after", "Failed").await;
    assert_eq!(missing["status"]["error"]["type"], "FunctionNotFound");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invocation_survives_the_death_of_its_executor_and_runs_once() {
    let mut platform = Platform::start().await;
    platform
        .apply(&function(
            "slow",
            "python",
            "main.handler",
            "import time\ndef handler(event, context):\n    time.sleep(event['sleep'])\n    return {'slept': event['sleep']}",
            "  timeoutSeconds: 60\n",
        ))
        .await;
    platform.wait_phase("function/slow", "Ready").await;
    platform.invoke("slow-once", "slow", "{sleep: 4}").await;
    // Running: seen in PostgreSQL, which the executor writes before it starts the function.
    let store = platform.store().await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let rows = store
            .list_invocations(&kubefaas_core::store::InvocationQuery::default())
            .await
            .unwrap();
        if rows.iter().any(|row| row.status == kubefaas_core::store::Status::Running) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the invocation never started\n{}",
            platform.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The only executor dies mid-invocation; a new one takes over after the lease expires.
    let mut dead = platform.executors.remove(0);
    dead.kill().await.unwrap();
    platform.start_executor().await;
    let done = platform.wait_phase("invocation/slow-once", "Succeeded").await;
    assert_eq!(done["status"]["result"]["slept"], 4);
    assert_eq!(done["status"]["attempts"], 2, "the takeover is the second attempt, and the last");

    last_invoked_at_follows_invocations_and_survives_an_operator_restart(&mut platform, &store)
        .await;
}

/// Serves files over plain HTTP from a map the test changes; anything else is 404.
#[derive(Clone, Default)]
struct CodeServer {
    files: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, Vec<u8>>>>,
}

impl CodeServer {
    /// Starts serving; the address is `http://127.0.0.1:<port>`.
    async fn start(&self) -> String {
        let files = self.files.clone();
        let site = axum::Router::new().fallback(move |uri: axum::http::Uri| {
            let found = files.lock().unwrap().get(uri.path()).cloned();
            async move { found.ok_or(axum::http::StatusCode::NOT_FOUND) }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, site).await });
        format!("http://{addr}")
    }

    fn put(&self, path: &str, body: &str) -> String {
        use sha2::Digest;
        self.files.lock().unwrap().insert(path.to_owned(), body.as_bytes().to_vec());
        hex::encode(sha2::Sha256::digest(body.as_bytes()))
    }

    fn clear(&self) {
        self.files.lock().unwrap().clear();
    }
}

fn url_function(name: &str, url: &str, sha256: &str, extra: &str) -> String {
    format!(
        "apiVersion: kubefaas.io/v1alpha1\nkind: Function\nmetadata:\n  name: {name}\nspec:\n  runtime: python\n  handler: main.handler\n  code:\n    url: {url}\n    sha256: {sha256:?}\n{extra}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn code_from_a_url_is_downloaded_once_checked_against_its_digest_and_run() {
    let platform = Platform::start().await;
    let server = CodeServer::default();
    let base = server.start().await;

    // The address carries a credential, as signed URLs do.
    let v1 = server.put("/v1/main.py", "def handler(event, context):\n    return {'v': 1}\n");
    let v1_url = format!("{base}/v1/main.py?token=s3cret");
    platform.apply(&url_function("fetched", &v1_url, &v1, "")).await;
    let ready = platform.wait_phase("function/fetched", "Ready").await;
    assert_eq!(ready["status"]["codeChecksum"], v1.as_str());
    platform.invoke("fetched-1", "fetched", "{}").await;
    let done = platform.wait_phase("invocation/fetched-1", "Succeeded").await;
    assert_eq!(done["status"]["result"]["v"], 1);

    // With the server gone, a change that is not the code keeps the stored code: no download.
    server.clear();
    platform.apply(&url_function("fetched", &v1_url, &v1, "  timeoutSeconds: 20\n")).await;
    let kept = platform.wait_observed("function/fetched").await;
    assert_eq!(kept["status"]["phase"], "Ready", "{}", kept["status"]);
    assert_eq!(kept["status"]["codeChecksum"], v1.as_str());

    // A download that is not what the digest says is refused; the credential stays hidden.
    server.put("/v1/main.py", "def handler(event, context):\n    return {'v': 'tampered'}\n");
    platform.apply(&url_function("tampered", &v1_url, &v1, "")).await;
    let refused = platform.wait_phase("function/tampered", "Failed").await;
    let message = refused["status"]["message"].as_str().unwrap();
    assert!(message.contains("SHA-256") && message.contains(&v1), "{message}");
    assert!(!message.contains("s3cret"), "the credential leaked: {message}");
    assert_eq!(refused["status"]["conditions"][0]["reason"], "CodeUnavailable");

    // New code at a new address with its digest replaces the old.
    let v2 = server.put("/v2/main.py", "def handler(event, context):\n    return {'v': 2}\n");
    platform.apply(&url_function("fetched", &format!("{base}/v2/main.py"), &v2, "")).await;
    let updated = platform.wait_observed("function/fetched").await;
    assert_eq!(updated["status"]["phase"], "Ready", "{}", updated["status"]);
    assert_eq!(updated["status"]["codeChecksum"], v2.as_str());
    platform.invoke("fetched-2", "fetched", "{}").await;
    let done = platform.wait_phase("invocation/fetched-2", "Succeeded").await;
    assert_eq!(done["status"]["result"]["v"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kubernetes_backend_runs_invocations_in_restricted_owned_pods_of_the_node_agent() {
    let platform = Platform::start_with(env("REDIS_URL"), true).await;
    let examples = repo().join("examples");
    platform.kubectl_ok(&["apply", "-f", examples.join("function.yaml").to_str().unwrap()]).await;
    let ready = platform.wait_phase("function/hello", "Ready").await;
    platform.kubectl_ok(&["apply", "-f", examples.join("invocation.yaml").to_str().unwrap()]).await;
    let done = platform.wait_phase("invocation/hello-once", "Succeeded").await;
    assert_eq!(done["status"]["result"]["message"], "Hello, kubefaas!");
    assert!(
        done["status"]["logs"].as_str().unwrap().contains("greeting kubefaas"),
        "{}",
        done["status"]
    );
    assert_eq!(done["status"]["metrics"]["coldStart"], true, "the first invocation made the pod");
    platform.invoke("hello-twice", "hello", "{name: again}").await;
    let warm = platform.wait_phase("invocation/hello-twice", "Succeeded").await;
    assert_eq!(warm["status"]["result"]["message"], "Hello, again!");
    // The Function reports its running runtime pods.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let function = platform.get("function/hello").await;
        if function["status"]["warmInstances"].as_i64().unwrap_or(0) >= 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "warmInstances never counted the pod: {}",
            function["status"]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(warm["status"]["metrics"]["coldStart"], false, "the warm pod was reused");

    // The pods as kubectl shows them: restricted, owned by the Function, on their own address.
    let pods: Value = serde_json::from_str(
        &platform
            .kubectl_ok(&["get", "pods", "-l", "kubefaas.io/function=hello", "-o", "json"])
            .await,
    )
    .unwrap();
    let pods = pods["items"].as_array().unwrap();
    assert_eq!(pods.len(), 1, "one pod serves invocations one after another");
    let pod = &pods[0];
    assert!(pod["status"]["podIP"].as_str().unwrap().starts_with("127."), "{}", pod["status"]);
    let owner = &pod["metadata"]["ownerReferences"][0];
    assert_eq!(owner["kind"], "Function");
    assert_eq!(owner["uid"], ready["metadata"]["uid"]);
    assert_eq!(pod["spec"]["automountServiceAccountToken"], false);
    assert_eq!(pod["spec"]["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
    let security = &pod["spec"]["containers"][0]["securityContext"];
    assert_eq!(security["runAsNonRoot"], true);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["capabilities"]["drop"], serde_json::json!(["ALL"]));
    let limits = &pod["spec"]["containers"][0]["resources"]["limits"];
    assert_eq!(limits["memory"], (128u64 << 20).to_string());
    assert_eq!(limits["cpu"], "100m");

    // Scaling: an idle pod is reaped after idleTimeoutSeconds, minWarm pods are kept (and
    // started), maxInstances caps the pods however many invocations wait.
    let sleepy = "import time\ndef handler(event, context):\n    time.sleep(event.get('sleep', 0))\n    return 'ok'";
    for (name, scaling) in [
        ("idle", "minWarm: 0, maxInstances: 3, idleTimeoutSeconds: 1"),
        ("warm", "minWarm: 2, maxInstances: 2, idleTimeoutSeconds: 1"),
        ("single", "minWarm: 0, maxInstances: 1, idleTimeoutSeconds: 600"),
    ] {
        let extra = format!("  maxConcurrency: 3\n  scaling: {{{scaling}}}\n");
        platform.apply(&function(name, "python", "main.handler", sleepy, &extra)).await;
        platform.wait_phase(&format!("function/{name}"), "Ready").await;
    }
    for (invocation, function) in [
        ("idle-1", "idle"),
        ("warm-1", "warm"),
        ("single-1", "single"),
        ("single-2", "single"),
        ("single-3", "single"),
    ] {
        platform.invoke(invocation, function, "{sleep: 1}").await;
    }
    for invocation in ["idle-1", "warm-1", "single-1", "single-2", "single-3"] {
        platform.wait_phase(&format!("invocation/{invocation}"), "Succeeded").await;
    }
    let ready_pods = |function: &'static str| {
        let platform = &platform;
        async move {
            let pods: Value = serde_json::from_str(
                &platform
                    .kubectl_ok(&[
                        "get",
                        "pods",
                        "-l",
                        &format!("kubefaas.io/function={function}"),
                        "-o",
                        "json",
                    ])
                    .await,
            )
            .unwrap();
            pods["items"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|p| p["status"]["podIP"].is_string())
                .count()
        }
    };
    let eventually = |function: &'static str, count: usize| {
        let ready_pods = &ready_pods;
        async move {
            tokio::time::timeout(PATIENCE, async {
                while ready_pods(function).await != count {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            })
            .await
            .unwrap_or_else(|_| panic!("{function} never had {count} pods"));
        }
    };
    eventually("idle", 0).await;
    eventually("warm", 2).await;
    assert_eq!(
        ready_pods("single").await,
        1,
        "maxInstances 1: three invocations took turns on one pod"
    );
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(ready_pods("warm").await, 2, "minWarm pods outlive the idle timeout");
    // warmInstances follows the pods both ways: the reaped function's drops to 0.
    for (function, count) in [("idle", 0), ("warm", 2), ("single", 1)] {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let status = platform.get(&format!("function/{function}")).await["status"].clone();
            if status["warmInstances"].as_i64() == Some(count) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{function}'s warmInstances never became {count}: {status}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // A memory hog: the pod's container is OOMKilled, the invocation fails with OutOfMemory.
    memory_hog_fails_out_of_memory(&platform).await;
    code_that_does_not_load_fails_at_once_saying_why(&platform).await;

    // envFrom: the pod carries it, and the node agent reads it as a kubelet does.
    env_from_secrets_and_config_maps_reach_the_function(&platform).await;
    let pods = platform
        .kubectl_ok(&["get", "pods", "-l", "kubefaas.io/function=configured", "-o", "json"])
        .await;
    assert!(!pods.contains("s3cret"), "a Secret's value is written into the pod spec: {pods}");

    // Deleting the Function garbage-collects its pods, and the node agent stops them.
    platform.kubectl_ok(&["delete", "function", "hello", "--wait=true"]).await;
    tokio::time::timeout(PATIENCE, async {
        loop {
            let left = platform
                .kubectl_ok(&["get", "pods", "-l", "kubefaas.io/function=hello", "-o", "name"])
                .await;
            if left.trim().is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the deleted function's pods stay\n{}", platform.logs()));
}

/// How many invocations of this platform have finished, by status.
async fn finished(store: &kubefaas_core::store::Store) -> (usize, usize) {
    let rows = store
        .list_invocations(&kubefaas_core::store::InvocationQuery {
            limit: Some(1000),
            ..Default::default()
        })
        .await
        .unwrap();
    let done = rows.iter().filter(|row| row.status.is_terminal()).count();
    let succeeded =
        rows.iter().filter(|row| row.status == kubefaas_core::store::Status::Succeeded).count();
    (done, succeeded)
}

async fn wait_finished(
    platform: &Platform,
    store: &kubefaas_core::store::Store,
    at_least: usize,
    within: Duration,
) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let (done, _) = finished(store).await;
        if done >= at_least {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {done} of {at_least} finished\n{}",
            platform.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// 200 invocations, run in runtime pods of the node agent (the kubernetes backend, as `kubefaas
/// up` runs them), through an executor SIGKILL, an operator kill and a Redis restart with its
/// data wiped. Each function run sends its invocation id to a listener of the test (the pods
/// share the host's network; their file system is their own), so executions are counted, not
/// inferred.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_lost_when_executor_operator_and_redis_fail_mid_stream() {
    const COUNT: usize = 200;
    let scratch = std::env::temp_dir().join(format!("kubefaas-faults-{}", Uuid::new_v4().simple()));
    let mut redis = PrivateRedis::start(scratch.join("redis")).await;
    let mut platform = Platform::start_with(redis.url(), true).await;
    let executions = Executions::listen();
    platform
        .apply(&function(
            "counter",
            "python",
            "main.handler",
            "import os, socket, time\ndef handler(event, context):\n    with socket.create_connection(('127.0.0.1', int(os.environ['EXECUTIONS_PORT']))) as s:\n        s.sendall((context.aws_request_id + '\\n').encode())\n    time.sleep(0.2)\n    return {'num': event['num']}",
            &format!("  env:\n    EXECUTIONS_PORT: \"{}\"\n  maxConcurrency: 8\n  scaling:\n    maxInstances: 8\n", executions.port),
        ))
        .await;
    platform.wait_phase("function/counter", "Ready").await;

    let manifests: String = (0..COUNT)
        .map(|n| format!("---\napiVersion: kubefaas.io/v1alpha1\nkind: Invocation\nmetadata:\n  name: count-{n}\nspec:\n  functionRef:\n    name: counter\n  payload: {{num: {n}}}\n"))
        .collect();
    platform.apply(&manifests).await;
    let store = platform.store().await;

    // SIGKILL the executor with invocations in flight; a new one takes over.
    wait_finished(&platform, &store, 20, PATIENCE).await;
    let mut executor = platform.executors.remove(0);
    executor.kill().await.unwrap();
    platform.start_executor().await;

    // Kill and restart the operator mid-stream.
    wait_finished(&platform, &store, 80, PATIENCE).await;
    platform.operator.take().unwrap().kill().await.unwrap();
    platform.start_operator();

    // Restart Redis with its data wiped mid-stream: the sweeper re-enqueues what was lost.
    wait_finished(&platform, &store, 130, PATIENCE).await;
    redis.restart().await;

    wait_finished(&platform, &store, COUNT, Duration::from_secs(240)).await;
    let (done, succeeded) = finished(&store).await;
    if succeeded != COUNT {
        let query = kubefaas_core::store::InvocationQuery {
            limit: Some(5),
            status: Some(kubefaas_core::store::Status::Failed),
            ..Default::default()
        };
        let rows = store.list_invocations(&query).await.unwrap();
        let errors: Vec<_> = rows.iter().map(|row| (&row.error, &row.logs)).collect();
        panic!("{succeeded} of {done} succeeded; failures: {errors:?}\n{}", platform.logs());
    }

    // Every Invocation object shows its outcome.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let listed: Value =
            serde_json::from_str(&platform.kubectl_ok(&["get", "invocations", "-o", "json"]).await)
                .unwrap();
        let items = listed["items"].as_array().unwrap();
        let mirrored = items.iter().filter(|i| i["status"]["phase"] == "Succeeded").count();
        if mirrored == COUNT {
            for item in items {
                let n = item["spec"]["payload"]["num"].clone();
                assert_eq!(
                    item["status"]["result"]["num"], n,
                    "each result belongs to its invocation"
                );
            }
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {mirrored} Invocations show Succeeded\n{}",
            platform.logs()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // Executions: at least one per invocation; more only for attempts cut short by a failure.
    let runs = executions.at_least(COUNT).await;
    let distinct: std::collections::BTreeSet<&str> = runs.iter().map(String::as_str).collect();
    assert_eq!(distinct.len(), COUNT, "every invocation ran");
    eprintln!(
        "{COUNT} invocations, {} executions ({} repeated after failures)",
        runs.len(),
        runs.len() - COUNT
    );
    assert!(
        runs.len() - COUNT <= 32,
        "repeats are bounded by what was in flight at each failure: {}",
        runs.len() - COUNT
    );
    let _ = std::fs::remove_dir_all(&scratch);
}

/// A listener that collects the invocation ids functions send it, one a line per connection.
struct Executions {
    port: u16,
    ids: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Executions {
    fn listen() -> Self {
        use std::io::Read;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let ids = std::sync::Arc::<std::sync::Mutex<Vec<String>>>::default();
        let collected = std::sync::Arc::clone(&ids);
        std::thread::spawn(move || {
            for mut stream in listener.incoming().flatten() {
                let mut text = String::new();
                let _ = stream.read_to_string(&mut text);
                let mut ids = collected.lock().unwrap();
                ids.extend(text.lines().map(str::to_owned));
            }
        });
        Self { port, ids }
    }

    /// Every id received once `count` distinct ones have arrived (a sender's bytes may still
    /// be on their way when its invocation shows as finished).
    async fn at_least(&self, count: usize) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let ids = self.ids.lock().unwrap().clone();
            let distinct: std::collections::BTreeSet<&String> = ids.iter().collect();
            if distinct.len() >= count || tokio::time::Instant::now() >= deadline {
                return ids;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
