//! The node agent with the real `kubefaas-watchdog`, python and runc: pods of runtime images
//! become Ready on their own loopback address, answer `/invoke`, are `OOMKilled` over their
//! memory limit, refuse images and security contexts they cannot run, and stop when deleted;
//! hostile functions are contained (host files, read-only root, disk, fork bomb, privileges,
//! other pods' files).
//!
//! Needs the workspace's binaries built (`cargo test --workspace` / `make test` build them) and
//! `python3`.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, DeleteParams, PostParams};
use kubefaas_standalone::node::{NodeAgent, NodeConfig};
use kubefaas_standalone::{ApiServer, Config};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Bound on any wait, so a broken agent fails the test instead of hanging it.
const PATIENCE: Duration = Duration::from_secs(60);

const HANDLER: &str = r#"
import os
def main(event, context):
    if event.get("hog"):
        hog = []
        while True:
            hog.append(bytearray(16 * 1024 * 1024))
    return {"hello": event.get("name"), "greeting": os.environ.get("GREETING")}
"#;

fn watchdog() -> PathBuf {
    let path =
        PathBuf::from(env!("CARGO_BIN_EXE_kubefaas-apiserver")).with_file_name("kubefaas-watchdog");
    assert!(
        path.exists(),
        "{} is not built; build the workspace first (`cargo build --workspace`)",
        path.display()
    );
    path
}

/// A function that tries what untrusted code tries; `event["action"]` says what.
const HOSTILE: &str = r#"
import errno, os, signal, subprocess, sys

def err(e):
    return errno.errorcode.get(e.errno, str(e.errno))

def main(event, context):
    action = event["action"]
    if action == "read":
        out = {}
        for path in event["paths"]:
            try:
                with open(path, "rb") as f:
                    out[path] = f.read(4096).decode("latin-1")
            except OSError as e:
                out[path] = "error " + err(e)
        return out
    if action == "list":
        try:
            return {"entries": sorted(os.listdir(event["path"])), "prefix": sys.base_prefix}
        except OSError as e:
            return {"error": err(e), "prefix": sys.base_prefix}
    if action == "write":
        out = {}
        for path in event["paths"]:
            try:
                with open(path, "w") as f:
                    f.write(event.get("text", "x"))
                out[path] = "written"
            except OSError as e:
                out[path] = err(e)
        return out
    if action == "fill":
        written, chunk = 0, b"\0" * (1 << 20)
        try:
            with open("/tmp/fill", "wb") as f:
                while written < (1 << 30):
                    f.write(chunk)
                    f.flush()
                    written += len(chunk)
            return {"written": written, "error": None}
        except OSError as e:
            return {"written": written, "error": err(e)}
        finally:
            try:
                os.remove("/tmp/fill")
            except OSError:
                pass
    if action == "fork":
        children, error = [], None
        while len(children) < 5000:
            try:
                pid = os.fork()
            except OSError as e:
                error = err(e)
                break
            if pid == 0:
                signal.pause()
                os._exit(0)
            children.append(pid)
        for pid in children:
            os.kill(pid, signal.SIGKILL)
        for pid in children:
            os.waitpid(pid, 0)
        return {"forked": len(children), "error": error}
    if action == "escalate":
        status = dict(l.split(":", 1) for l in open("/proc/self/status").read().splitlines())
        out = {k: status[k].strip() for k in ("CapEff", "CapPrm", "CapBnd", "NoNewPrivs")}
        out["uid"], out["euid"] = os.getuid(), os.geteuid()
        try:
            os.setuid(0)
            out["setuid"] = "worked"
        except OSError as e:
            out["setuid"] = err(e)
        r = subprocess.run(["unshare", "--user", "--map-root-user", "id", "-u"],
                           capture_output=True, text=True)
        out["unshare"] = r.stdout.strip() or "failed"
        out["processes"] = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
        return out
    raise ValueError(action)
"#;

/// An API server and a node agent of one test.
struct Node {
    server: Option<ApiServer>,
    agent: Option<NodeAgent>,
    client: kube::Client,
    dir: PathBuf,
}

impl Node {
    async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    async fn start_with(configure: impl FnOnce(&mut NodeConfig)) -> Self {
        let server = ApiServer::start(Config::default()).await.unwrap();
        let client = server.client().unwrap();
        let dir = std::env::temp_dir()
            .join(format!("kfn-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]));
        let mut config = NodeConfig::new(&dir);
        config.watchdog = watchdog();
        configure(&mut config);
        let agent = NodeAgent::start(client.clone(), config).unwrap();
        create_code(&client).await;
        Self { server: Some(server), agent: Some(agent), client, dir }
    }

    fn pods(&self) -> Api<Pod> {
        Api::default_namespaced(self.client.clone())
    }

    async fn create(&self, pod: Value) -> Pod {
        self.pods()
            .create(&PostParams::default(), &serde_json::from_value(pod).unwrap())
            .await
            .unwrap()
    }

    async fn wait(&self, name: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        wait(&self.client, name, what, check).await
    }

    async fn ready(&self, name: &str) -> Value {
        self.wait(name, "Ready", |p| condition(p, "Ready") == "True").await
    }

    async fn stop(mut self) {
        if let Some(agent) = self.agent.take() {
            agent.shutdown().await;
        }
        if let Some(server) = self.server.take() {
            server.shutdown().await.unwrap();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The ConfigMaps `hello-code` with [`HANDLER`] and `hostile-code` with [`HOSTILE`], each as
/// `handler.py`.
async fn create_code(client: &kube::Client) {
    let configs: Api<ConfigMap> = Api::default_namespaced(client.clone());
    for (name, handler) in [("hello-code", HANDLER), ("hostile-code", HOSTILE)] {
        let code = serde_json::from_value(json!({
            "metadata": {"name": name}, "data": {"handler.py": handler},
        }))
        .unwrap();
        configs.create(&PostParams::default(), &code).await.unwrap();
    }
}

/// Waits until `check` holds for the pod's JSON, and returns it.
async fn wait(
    client: &kube::Client,
    name: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let mut last = Value::Null;
    let found = tokio::time::timeout(PATIENCE, async {
        loop {
            if let Some(pod) = pods.get_opt(name).await.unwrap() {
                last = serde_json::to_value(pod).unwrap();
                if check(&last) {
                    return last.clone();
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("pod {name} never got {what}; last seen: {last:#}"))
}

fn condition(pod: &Value, type_: &str) -> String {
    pod["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == type_))
        .and_then(|c| c["status"].as_str())
        .unwrap_or("")
        .to_owned()
}

fn function_pod(name: &str, memory: &str) -> Value {
    json!({
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Always",
            "containers": [{
                "name": "function",
                "image": "kubefaas/runtime-python:3.13",
                "ports": [{"containerPort": 8080}],
                "env": [
                    {"name": "KUBEFAAS_HANDLER", "value": "handler.main"},
                    {"name": "KUBEFAAS_CODE_DIR", "value": "/var/task"},
                    {"name": "KUBEFAAS_WORK_DIR", "value": "/tmp/kubefaas"},
                    {"name": "KUBEFAAS_LISTEN", "value": "0.0.0.0:8080"},
                    {"name": "GREETING", "value": "hi"},
                ],
                "resources": {"limits": {"memory": memory, "cpu": "500m"}},
                "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}},
                "volumeMounts": [
                    {"name": "code", "mountPath": "/var/task", "readOnly": true},
                    {"name": "tmp", "mountPath": "/tmp"},
                ],
            }],
            "volumes": [
                {"name": "code", "configMap": {"name": "hello-code"}},
                {"name": "tmp", "emptyDir": {}},
            ],
        },
    })
}

/// A pod of [`HOSTILE`] with the restricted profile the executor's runtime pods ask for, and a
/// `/tmp` of 16 MiB.
fn hostile_pod(name: &str) -> Value {
    let mut pod = function_pod(name, "128Mi");
    pod["spec"]["volumes"] = json!([
        {"name": "code", "configMap": {"name": "hostile-code"}},
        {"name": "tmp", "emptyDir": {"sizeLimit": "16Mi"}},
    ]);
    pod["spec"]["securityContext"] = json!({
        "runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532, "fsGroup": 65532,
        "seccompProfile": {"type": "RuntimeDefault"},
    });
    pod["spec"]["containers"][0]["securityContext"] = json!({
        "allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
        "capabilities": {"drop": ["ALL"]},
    });
    pod
}

/// `POST /invoke` on the pod's address; `None` when the connection broke.
async fn invoke(pod: &Value, payload: Value) -> Option<Value> {
    let ip = pod["status"]["podIP"].as_str().unwrap();
    let addr: SocketAddr = format!("{ip}:8080").parse().unwrap();
    let body = json!({"payload": payload, "timeoutMs": 20_000}).to_string();
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!(
        "POST /invoke HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.ok()?;
    let (_, body) = answer.split_once("\r\n\r\n")?;
    serde_json::from_str(body).ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_pods_get_their_own_address_answer_invoke_and_stop_when_deleted() {
    let node = Node::start().await;
    node.create(function_pod("one", "128Mi")).await;
    node.create(function_pod("two", "128Mi")).await;
    let one = node.ready("one").await;
    let two = node.ready("two").await;
    assert_eq!(one["status"]["phase"], "Running");
    let (ip1, ip2) =
        (one["status"]["podIP"].as_str().unwrap(), two["status"]["podIP"].as_str().unwrap());
    assert!(ip1.starts_with("127.") && ip2.starts_with("127."), "{ip1} {ip2}");
    assert_ne!(ip1, ip2, "each pod has its own address, so both listen on 8080");
    let status = &one["status"]["containerStatuses"][0];
    assert_eq!(status["ready"], true);
    assert!(status["state"]["running"]["startedAt"].is_string(), "{status}");
    assert_eq!(status["restartCount"], 0);

    let answer = invoke(&one, json!({"name": "kubefaas"})).await.expect("an answer");
    assert_eq!(answer["result"], json!({"hello": "kubefaas", "greeting": "hi"}), "{answer}");
    let answer = invoke(&two, json!({"name": "two"})).await.expect("an answer");
    assert_eq!(answer["result"]["hello"], "two");

    node.pods().delete("one", &DeleteParams::default()).await.unwrap();
    let addr: SocketAddr = format!("{ip1}:8080").parse().unwrap();
    tokio::time::timeout(PATIENCE, async {
        while tokio::net::TcpStream::connect(addr).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the deleted pod's watchdog stops");
    assert!(invoke(&two, json!({"name": "still"})).await.is_some(), "the other pod keeps running");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_over_its_memory_limit_is_oom_killed_and_restarted() {
    let node = Node::start().await;
    node.create(function_pod("hog", "96Mi")).await;
    let pod = node.ready("hog").await;
    // The answer is an error or a broken connection, depending on which the kill reaches first.
    let answer = invoke(&pod, json!({"hog": true})).await;
    assert!(answer.as_ref().is_none_or(|a| a["result"].is_null()), "{answer:?}");
    let killed = node
        .wait("hog", "an OOMKilled termination", |p| {
            p["status"]["containerStatuses"][0]["lastState"]["terminated"]["reason"] == "OOMKilled"
        })
        .await;
    let status = &killed["status"]["containerStatuses"][0];
    assert_eq!(status["lastState"]["terminated"]["exitCode"], 137, "{status}");
    assert!(status["restartCount"].as_u64().unwrap() >= 1, "{status}");
    // Restarted by restartPolicy Always, and serving again.
    let again = node
        .wait("hog", "Ready after the restart", |p| {
            condition(p, "Ready") == "True"
                && p["status"]["containerStatuses"][0]["restartCount"] != 0
        })
        .await;
    let answer = invoke(&again, json!({"name": "back"})).await.expect("an answer");
    assert_eq!(answer["result"]["hello"], "back");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_whose_image_cannot_run_waits_with_err_image_pull() {
    let node = Node::start().await;
    node.create(json!({
        "metadata": {"name": "web"},
        "spec": {"containers": [{"name": "nginx", "image": "nginx:1.27"}]},
    }))
    .await;
    let pod = node
        .wait("web", "a waiting reason", |p| {
            p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"] == "ErrImagePull"
        })
        .await;
    assert_eq!(pod["status"]["phase"], "Pending");
    let message =
        pod["status"]["containerStatuses"][0]["state"]["waiting"]["message"].as_str().unwrap();
    assert!(message.contains("nginx:1.27"), "{message}");
    assert_eq!(condition(&pod, "Ready"), "False");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binarys_node_agent_runs_pods_and_a_killed_agent_leaves_no_watchdog_behind() {
    use tokio::io::AsyncBufReadExt;
    let dir = std::env::temp_dir()
        .join(format!("kfb-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]));
    let mut server = tokio::process::Command::new(env!("CARGO_BIN_EXE_kubefaas-apiserver"))
        .args(["--listen", "127.0.0.1:0", "--node-agent", "--node-dir"])
        .arg(&dir)
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(server.stdout.take().unwrap()).lines();
    let addr: SocketAddr = tokio::time::timeout(PATIENCE, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("kubefaas-apiserver ready") {
                let addr = line.split("addr=").nth(1).unwrap().split_whitespace().next().unwrap();
                return addr.parse().unwrap();
            }
        }
        panic!("kubefaas-apiserver exited before it was ready");
    })
    .await
    .expect("kubefaas-apiserver ready");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let client = kubefaas_standalone::node::client_for(addr).unwrap();
    create_code(&client).await;
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    pods.create(
        &PostParams::default(),
        &serde_json::from_value(function_pod("one", "128Mi")).unwrap(),
    )
    .await
    .unwrap();
    let pod = wait(&client, "one", "Ready", |p| condition(p, "Ready") == "True").await;
    let answer = invoke(&pod, json!({"name": "binary"})).await.expect("an answer");
    assert_eq!(answer["result"]["hello"], "binary");

    // SIGKILL: no chance to stop the pods, yet the watchdog must not outlive the agent.
    server.kill().await.unwrap();
    let pod_addr: SocketAddr =
        format!("{}:8080", pod["status"]["podIP"].as_str().unwrap()).parse().unwrap();
    tokio::time::timeout(PATIENCE, async {
        while tokio::net::TcpStream::connect(pod_addr).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the watchdog dies with its agent");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The result of a [`HOSTILE`] action.
async fn attempt(pod: &Value, event: Value) -> Value {
    let answer = invoke(pod, event.clone()).await.expect("an answer");
    assert!(answer["error"].is_null(), "{event}: {answer}");
    answer["result"].clone()
}

/// The host directory of a ConfigMap volume of a pod of `node`.
fn volume_on_host(node: &Node, pod: &Value, volume: &str) -> PathBuf {
    node.dir.join(pod["status"]["podIP"].as_str().unwrap()).join("volumes").join(volume)
}

/// `path` inside the container of `pod`, as the host sees it: below `/proc/<pid>/root` of the
/// pod's watchdog (found by the listen address in its environment).
fn in_container_on_host(pod: &Value, path: &str) -> PathBuf {
    let listen = format!("KUBEFAAS_LISTEN={}:8080", pod["status"]["podIP"].as_str().unwrap());
    let pid = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .find(|p| {
            let environ = std::fs::read(p.path().join("environ")).unwrap_or_default();
            environ.split(|b| *b == 0).any(|v| v == listen.as_bytes())
        })
        .expect("the pod's watchdog on the host");
    pid.path().join("root").join(path.trim_start_matches('/'))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_functions_see_no_host_file_write_only_their_volumes_and_gain_nothing() {
    let node = Node::start().await;
    node.create(hostile_pod("nosy")).await;
    let pod = node.ready("nosy").await;

    // Host files the test (root) can read are not there for the function.
    let host_home = std::env::var("HOME").expect("HOME");
    assert!(std::fs::read("/etc/shadow").is_ok(), "the host has an /etc/shadow to protect");
    let read =
        attempt(&pod, json!({"action": "read", "paths": ["/etc/shadow", "/etc/passwd"]})).await;
    assert_eq!(read["/etc/shadow"], "error ENOENT", "{read}");
    let passwd = read["/etc/passwd"].as_str().unwrap();
    assert!(passwd.contains(":65532:65532:"), "{passwd}");
    let host_users = std::fs::read_to_string("/etc/passwd").unwrap();
    let hidden = host_users.lines().filter_map(|l| l.split(':').next());
    for user in hidden.filter(|u| !["root", "nobody"].contains(u)) {
        assert!(!passwd.contains(&format!("\n{user}:")), "host user {user} in {passwd}");
    }
    // The home directory shows at most the way to the interpreter's install prefix.
    let listed = attempt(&pod, json!({"action": "list", "path": host_home})).await;
    let host_entries = std::fs::read_dir(&host_home).unwrap().count();
    let visible = listed["entries"].as_array().map_or(0, Vec::len);
    let prefix = listed["prefix"].as_str().unwrap();
    let allowed = prefix.strip_prefix(&format!("{host_home}/")).and_then(|r| r.split('/').next());
    assert!(host_entries > 1, "the host's home has entries to hide");
    for entry in listed["entries"].as_array().into_iter().flatten() {
        assert_eq!(entry.as_str(), allowed, "{listed}");
    }
    assert!(visible <= 1, "{listed}");

    // Only the volumes are writable, and the code volume not even that.
    let paths = ["/usr/lib/kubefaas-hostile", "/kubefaas-hostile", "/etc/passwd", "/var/task/x"];
    let mut all = paths.to_vec();
    all.push("/tmp/ok");
    let wrote = attempt(&pod, json!({"action": "write", "paths": all})).await;
    for path in paths {
        assert!(matches!(wrote[path].as_str(), Some("EROFS" | "EACCES")), "{path}: {wrote}");
    }
    assert_eq!(wrote["/tmp/ok"], "written", "{wrote}");
    assert!(!std::path::Path::new("/kubefaas-hostile").exists());

    // /tmp is a 16 MiB emptyDir: filling it stops there.
    let filled = attempt(&pod, json!({"action": "fill"})).await;
    assert_eq!(filled["error"], "ENOSPC", "{filled}");
    assert!(filled["written"].as_u64().unwrap() <= 16 << 20, "{filled}");

    // Not root, no capabilities, no new privileges, no user namespace to become root in, and
    // alone in its process namespace.
    let gained = attempt(&pod, json!({"action": "escalate"})).await;
    assert_eq!((gained["uid"].as_u64(), gained["euid"].as_u64()), (Some(65532), Some(65532)));
    for set in ["CapEff", "CapPrm", "CapBnd"] {
        assert_eq!(gained[set], "0000000000000000", "{set}: {gained}");
    }
    assert_eq!(gained["NoNewPrivs"], "1", "{gained}");
    assert_eq!(gained["setuid"], "EPERM", "{gained}");
    assert_eq!(gained["unshare"], "failed", "{gained}");
    let processes = gained["processes"].as_array().unwrap();
    assert!(processes.len() < 10 && processes.contains(&json!(1)), "{gained}");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_bomb_stops_at_the_pids_limit_and_the_pod_keeps_serving() {
    let node = Node::start_with(|config| config.pids_limit = 64).await;
    node.create(hostile_pod("bomb")).await;
    let pod = node.ready("bomb").await;
    let bomb = attempt(&pod, json!({"action": "fork"})).await;
    assert_eq!(bomb["error"], "EAGAIN", "{bomb}");
    let forked = bomb["forked"].as_u64().unwrap();
    assert!((1..64).contains(&forked), "{bomb}");
    let again = attempt(&pod, json!({"action": "list", "path": "/tmp"})).await;
    assert!(again["entries"].is_array(), "{again}");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_cannot_read_another_functions_code_or_temporary_files() {
    let node = Node::start().await;
    node.create(hostile_pod("victim")).await;
    node.create(hostile_pod("thief")).await;
    let victim = node.ready("victim").await;
    let thief = node.ready("thief").await;
    let wrote = attempt(
        &victim,
        json!({"action": "write", "paths": ["/tmp/secret"], "text": "the victim's secret"}),
    )
    .await;
    assert_eq!(wrote["/tmp/secret"], "written");
    // Where the victim's files are on the host: the test can read them there.
    let secret = in_container_on_host(&victim, "/tmp/secret");
    let code = volume_on_host(&node, &victim, "code").join("handler.py");
    assert_eq!(std::fs::read_to_string(&secret).unwrap(), "the victim's secret");
    assert!(std::fs::read_to_string(&code).unwrap().contains("def main"));
    let paths = [secret.display().to_string(), code.display().to_string(), "/tmp/secret".into()];
    let read = attempt(&thief, json!({"action": "read", "paths": paths})).await;
    for path in &paths {
        assert_eq!(read[path], "error ENOENT", "{path}: {read}");
    }
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_asking_for_what_the_agent_cannot_enforce_is_refused() {
    let node = Node::start().await;
    let mut pod = hostile_pod("root");
    pod["spec"]["securityContext"]["runAsUser"] = json!(0);
    node.create(pod).await;
    let mut pod = hostile_pod("admin");
    pod["spec"]["containers"][0]["securityContext"]["capabilities"] = json!({"add": ["SYS_ADMIN"]});
    node.create(pod).await;
    for (name, field) in [("root", "runAsNonRoot"), ("admin", "capabilities.add")] {
        let refused = node
            .wait(name, "a refusal", |p| {
                p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"]
                    == "CreateContainerConfigError"
            })
            .await;
        let waiting = &refused["status"]["containerStatuses"][0]["state"]["waiting"];
        assert!(waiting["message"].as_str().unwrap().contains(field), "{waiting}");
        assert_eq!(refused["status"]["phase"], "Pending");
    }
    node.stop().await;
}
