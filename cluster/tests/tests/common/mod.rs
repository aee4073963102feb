//! What every cluster test needs: `kubectl` against the cluster of `KUBECONFIG`, the platform
//! the chart installed (its namespace and release name), and the REST gateway reached through
//! `kubectl port-forward` to its Service, with a token made by the gateway's own binary.

#![allow(dead_code, unreachable_pub)]

use std::{path::PathBuf, process::Stdio, time::Duration};

use serde_json::Value;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};
use uuid::Uuid;

/// Bound on any wait, so a broken cluster fails a test instead of hanging it. Generous: a cold
/// runtime pod on a busy two-core machine, or a go function's first build, takes tens of seconds.
pub const PATIENCE: Duration = Duration::from_secs(240);

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: these tests run against a real cluster (run `make cluster-test`)"
        )
    })
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The cluster and the platform installed on it.
#[derive(Debug)]
pub struct Cluster {
    pub kubeconfig: PathBuf,
    /// Namespace of the Helm release (operator, executor, gateway, PostgreSQL, Redis).
    pub system: String,
    /// Full name of the chart's objects (`<fullname>-operator`, …).
    pub fullname: String,
    /// Namespace the tests create their Functions in (one of the chart's `runtime.namespaces`).
    pub namespace: String,
    dir: PathBuf,
}

impl Cluster {
    /// The cluster of `KUBECONFIG`; `KUBEFAAS_RELEASE_NAMESPACE` (default `kubefaas-system`),
    /// `KUBEFAAS_FULLNAME` (default `kubefaas`) and `KUBEFAAS_FUNCTION_NAMESPACE` (default
    /// `kubefaas-e2e`) say where the chart put things.
    pub fn from_env() -> Self {
        let dir =
            std::env::temp_dir().join(format!("kubefaas-cluster-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        Self {
            kubeconfig: PathBuf::from(env("KUBECONFIG")),
            system: env_or("KUBEFAAS_RELEASE_NAMESPACE", "kubefaas-system"),
            fullname: env_or("KUBEFAAS_FULLNAME", "kubefaas"),
            namespace: env_or("KUBEFAAS_FUNCTION_NAMESPACE", "kubefaas-e2e"),
            dir,
        }
    }

    /// `kubectl` in the functions' namespace unless `args` name another.
    pub async fn kubectl(&self, args: &[&str]) -> std::process::Output {
        let run = Command::new("kubectl")
            .env("KUBECONFIG", &self.kubeconfig)
            .env("HOME", &self.dir)
            .arg("--cache-dir")
            .arg(self.dir.join("cache"))
            .args(["--namespace", &self.namespace])
            .args(args)
            .kill_on_drop(true)
            .output();
        tokio::time::timeout(PATIENCE + Duration::from_secs(10), run)
            .await
            .unwrap_or_else(|_| panic!("kubectl {args:?} did not finish"))
            .unwrap()
    }

    pub async fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args).await;
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.diagnostics().await
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `kubectl` in the release's namespace.
    pub async fn system_ok(&self, args: &[&str]) -> String {
        let mut all = vec!["--namespace", &self.system];
        all.extend_from_slice(args);
        self.kubectl_ok(&all).await
    }

    pub async fn apply(&self, manifest: &str) {
        let path = self.dir.join(format!("{}.yaml", Uuid::new_v4().simple()));
        std::fs::write(&path, manifest).unwrap();
        self.kubectl_ok(&["apply", "-f", path.to_str().unwrap()]).await;
    }

    pub async fn get(&self, object: &str) -> Value {
        serde_json::from_str(&self.kubectl_ok(&["get", object, "-o", "json"]).await).unwrap()
    }

    /// `kubectl wait` for a phase, then the object as JSON.
    pub async fn wait_phase(&self, object: &str, phase: &str) -> Value {
        let timeout = format!("--timeout={}s", PATIENCE.as_secs());
        let condition = format!("--for=jsonpath={{.status.phase}}={phase}");
        let out = self.kubectl(&["wait", object, &condition, &timeout]).await;
        let json = self.get(object).await;
        assert!(
            out.status.success(),
            "{object} never reached {phase}: {}\nstatus: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            json["status"],
            self.diagnostics().await
        );
        json
    }

    /// Waits until the operator has looked at `object`'s current generation, then the object.
    pub async fn wait_observed(&self, object: &str) -> Value {
        let generation = self.get(object).await["metadata"]["generation"].clone();
        let timeout = format!("--timeout={}s", PATIENCE.as_secs());
        let condition = format!("--for=jsonpath={{.status.observedGeneration}}={generation}");
        self.kubectl_ok(&["wait", object, &condition, &timeout]).await;
        self.get(object).await
    }

    pub async fn invoke(&self, name: &str, function: &str, payload: &str) {
        self.apply(&format!(
            "apiVersion: kubefaas.io/v1alpha1\nkind: Invocation\nmetadata:\n  name: {name}\nspec:\n  functionRef:\n    name: {function}\n  payload: {payload}\n"
        ))
        .await;
    }

    /// Calls `check` until it returns `Ok`; after `PATIENCE` fails with what the last `Err` said.
    pub async fn eventually<T>(&self, mut check: impl AsyncFnMut() -> Result<T, String>) -> T {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            match check().await {
                Ok(done) => return done,
                Err(seen) => {
                    if tokio::time::Instant::now() >= deadline {
                        panic!("{seen}\n{}", self.diagnostics().await);
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Deletes functions (their pods and code go with them) so a two-core node has room for the
    /// next scenario's pods; waits until their pods are gone.
    pub async fn delete_functions(&self, names: &[&str]) {
        let mut args = vec!["delete", "function", "--ignore-not-found", "--wait=true"];
        args.extend_from_slice(names);
        self.kubectl_ok(&args).await;
        for name in names {
            self.eventually(async || {
                let left = self.pods_of(name).await.len();
                if left == 0 { Ok(()) } else { Err(format!("{name} still has {left} pods")) }
            })
            .await;
        }
    }

    /// The runtime pods of `function` (in the functions' namespace).
    pub async fn pods_of(&self, function: &str) -> Vec<Value> {
        let selector = format!("kubefaas.io/function={function}");
        let pods: Value = serde_json::from_str(
            &self.kubectl_ok(&["get", "pods", "-l", &selector, "-o", "json"]).await,
        )
        .unwrap();
        pods["items"].as_array().cloned().unwrap_or_default()
    }

    /// Waits until `function` has exactly `count` pods that are Ready.
    pub async fn wait_ready_pods(&self, function: &str, count: usize) {
        self.eventually(async || {
            let ready = self.pods_of(function).await.iter().filter(|pod| is_ready(pod)).count();
            if ready == count {
                Ok(())
            } else {
                Err(format!("{function} has {ready} ready pods, not {count}"))
            }
        })
        .await
    }

    /// Pods of the release and of the functions, and the platform's recent logs: what a failed
    /// assertion shows.
    pub async fn diagnostics(&self) -> String {
        let mut text = String::new();
        let run = |args: Vec<String>| {
            let kubeconfig = self.kubeconfig.clone();
            async move {
                let out = Command::new("kubectl")
                    .env("KUBECONFIG", kubeconfig)
                    .args(args)
                    .kill_on_drop(true)
                    .output();
                match tokio::time::timeout(Duration::from_secs(20), out).await {
                    Ok(Ok(out)) => format!(
                        "{}{}",
                        String::from_utf8_lossy(&out.stdout),
                        String::from_utf8_lossy(&out.stderr)
                    ),
                    _ => "(kubectl did not answer)\n".to_owned(),
                }
            }
        };
        let owned = |args: &[&str]| args.iter().map(|a| (*a).to_owned()).collect::<Vec<_>>();
        text.push_str("--- pods\n");
        text.push_str(&run(owned(&["get", "pods", "-A", "-o", "wide"])).await);
        for component in ["operator", "executor", "api-gateway"] {
            text.push_str(&format!("--- {component} logs\n"));
            let selector = format!("app.kubernetes.io/component={component}");
            text.push_str(
                &run(owned(&[
                    "logs",
                    "-n",
                    &self.system,
                    "-l",
                    &selector,
                    "--tail=25",
                    "--prefix",
                    "--all-containers",
                ]))
                .await,
            );
        }
        text
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn is_ready(pod: &Value) -> bool {
    pod["metadata"]["deletionTimestamp"].is_null()
        && pod["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

/// `text` in base64, as the REST API takes code.
pub fn b64(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// A Function manifest with inline code.
pub fn function(name: &str, runtime: &str, handler: &str, code: &str, extra: &str) -> String {
    let code = code.lines().map(|l| format!("      {l}")).collect::<Vec<_>>().join("\n");
    format!(
        "apiVersion: kubefaas.io/v1alpha1\nkind: Function\nmetadata:\n  name: {name}\nspec:\n  runtime: {runtime}\n  handler: {handler}\n  code:\n    inline: |\n{code}\n{extra}"
    )
}

/// The REST gateway of the release, reached through `kubectl port-forward` to its Service, as
/// the chart's notes tell users to.
#[derive(Debug)]
pub struct Gateway {
    pub base: String,
    /// Sent with every request (`x-kubefaas-namespace`): the tests' functions live there.
    pub namespace: String,
    pub token: String,
    client: reqwest::Client,
    _forward: Child,
}

impl Gateway {
    /// Forwards a free local port to the gateway's Service and makes an all-namespace token
    /// with `kubefaas-api-gateway token create` in the gateway's pod.
    pub async fn connect(cluster: &Cluster) -> Self {
        let token_name = format!("e2e-{}", &Uuid::new_v4().simple().to_string()[..8]);
        let deployment = format!("deploy/{}-api-gateway", cluster.fullname);
        let printed = cluster
            .system_ok(&[
                "exec",
                &deployment,
                "--",
                "kubefaas-api-gateway",
                "token",
                "create",
                "--name",
                &token_name,
                "--namespace",
                "*",
            ])
            .await;
        let token = printed.lines().next().unwrap_or_default().trim().to_owned();
        assert!(!token.is_empty(), "token create printed nothing");

        let service = format!("svc/{}-api-gateway", cluster.fullname);
        let mut forward = Command::new("kubectl")
            .env("KUBECONFIG", &cluster.kubeconfig)
            .args(["port-forward", "--namespace", &cluster.system, &service, ":80"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(forward.stdout.take().unwrap()).lines();
        let port = tokio::time::timeout(PATIENCE, async {
            while let Some(line) = lines.next_line().await.unwrap() {
                // "Forwarding from 127.0.0.1:40123 -> 8080"
                if let Some(rest) = line.strip_prefix("Forwarding from 127.0.0.1:") {
                    return rest.split_whitespace().next().unwrap().parse::<u16>().unwrap();
                }
            }
            panic!("kubectl port-forward exited before forwarding");
        })
        .await
        .expect("kubectl port-forward forwards");
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self {
            base: format!("http://127.0.0.1:{port}"),
            namespace: cluster.namespace.clone(),
            token,
            client: kubefaas_core::http::client_builder().build().unwrap(),
            _forward: forward,
        }
    }

    /// One request with the token; the status and the JSON body (`Null` when empty).
    pub async fn call(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        self.call_as(Some(&self.token), method, path, body).await
    }

    pub async fn call_as(
        &self,
        token: Option<&str>,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.base))
            .header("x-kubefaas-namespace", &self.namespace);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let reply = tokio::time::timeout(PATIENCE, request.send())
            .await
            .unwrap_or_else(|_| panic!("{path} did not answer"))
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        let status = reply.status().as_u16();
        let bytes = reply.bytes().await.unwrap();
        let json = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        (status, json)
    }

    /// A request that must answer `status`; its JSON body.
    pub async fn expect(
        &self,
        status: u16,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Value {
        let (got, json) = self.call(method, path, body).await;
        assert_eq!(got, status, "{method} {path}: {json}");
        json
    }

    /// Polls `GET /invocations/{id}` until the invocation is final; its JSON.
    pub async fn finished(&self, cluster: &Cluster, id: &str) -> Value {
        cluster
            .eventually(async || {
                let row = self.expect(200, "GET", &format!("/invocations/{id}"), None).await;
                match row["status"].as_str() {
                    Some("pending" | "queued" | "running") | None => {
                        Err(format!("invocation {id} is not final: {row}"))
                    }
                    Some(_) => Ok(row),
                }
            })
            .await
    }
}
