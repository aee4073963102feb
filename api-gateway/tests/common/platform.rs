//! The whole platform as separate processes (apiserver, operator, executor, gateway), for the
//! end-to-end test and the latency example.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use serde_json::Value;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};
use uuid::Uuid;

use super::{PATIENCE, Reply, env, fresh_database, request};

/// A workspace binary, next to the running test or example (`target/<profile>/deps/` and
/// `target/<profile>/examples/` sit below the binaries).
fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap();
    let dir = if dir.ends_with("deps") || dir.ends_with("examples") {
        dir.parent().unwrap()
    } else {
        dir
    };
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built; build the workspace first (`cargo build --workspace --bins` or `make test`)",
        path.display()
    );
    path
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The whole platform, each component in its own process, sharing a scratch directory, a
/// PostgreSQL schema and a Redis key prefix of their own.
pub(crate) struct Platform {
    dir: PathBuf,
    children: Vec<Child>,
    pub(crate) gateway: SocketAddr,
    pub(crate) token: String,
    /// The platform's database (its own schema).
    pub(crate) database_url: String,
}

impl Platform {
    pub(crate) async fn start() -> Self {
        let dir = std::env::temp_dir().join(format!("kubefaas-gw-e2e-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let database_url = fresh_database().await;
        let prefix = format!("gw-e2e-{}", Uuid::new_v4().simple());
        let kubeconfig = dir.join("kubeconfig");
        let command = |name: &str, program: PathBuf, args: &[&str]| {
            let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
            let mut command = Command::new(program);
            command
                .args(args)
                .env("DATABASE_URL", &database_url)
                .env("REDIS_URL", env("REDIS_URL"))
                .env("KUBEFAAS_QUEUE_PREFIX", &prefix)
                .env("KUBECONFIG", &kubeconfig)
                .env("RUST_LOG", "info")
                .env("NO_COLOR", "1")
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .kill_on_drop(true);
            command
        };
        let mut children = Vec::new();

        let mut apiserver = command("apiserver", binary("kubefaas-apiserver"), &[]);
        apiserver
            .args(["--listen", "127.0.0.1:0", "--kubeconfig"])
            .arg(&kubeconfig)
            .stdout(Stdio::piped());
        let (child, _) = spawn_until(apiserver, "kubefaas-apiserver ready").await;
        children.push(child);
        let crds = Command::new("kubectl")
            .env("KUBECONFIG", &kubeconfig)
            .env("HOME", &dir)
            .args(["apply", "-f"])
            .arg(repo().join("crds"))
            .output()
            .await
            .unwrap();
        assert!(crds.status.success(), "{}", String::from_utf8_lossy(&crds.stderr));

        children.push(
            command("operator", binary("kubefaas-operator"), &["--http-addr", "127.0.0.1:0"])
                .spawn()
                .unwrap(),
        );
        let work = dir.join("executor");
        children.push(
            command(
                "executor",
                binary("kubefaas-executor"),
                &[
                    "--http-addr",
                    "127.0.0.1:0",
                    "--work-dir",
                    work.to_str().unwrap(),
                    "--backend",
                    "local-unsafe",
                ],
            )
            .spawn()
            .unwrap(),
        );

        let created = command("token", binary("kubefaas-api-gateway"), &[])
            .args(["token", "create", "--name", "e2e", "--namespace", "*"])
            .stdout(Stdio::piped())
            .output()
            .await
            .unwrap();
        assert!(created.status.success());
        let token = String::from_utf8(created.stdout).unwrap().trim().to_owned();

        let mut gateway = command(
            "gateway",
            binary("kubefaas-api-gateway"),
            &["--addr", "127.0.0.1:0", "--auth", "token", "--rate-limit", "0"],
        );
        gateway.stdout(Stdio::piped());
        let (child, line) = spawn_until(gateway, "kubefaas-api-gateway ready on http://").await;
        children.push(child);
        let gateway = line.rsplit("http://").next().unwrap().parse().unwrap();
        Self { dir, children, gateway, token, database_url }
    }

    pub(crate) async fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Reply {
        let bearer = format!("Bearer {}", self.token);
        let mut headers = vec![("Authorization", bearer.as_str())];
        let text = body.map(Value::to_string);
        if text.is_some() {
            headers.push(("Content-Type", "application/json"));
        }
        request(self.gateway, method, path, &headers, text.as_deref().map(str::as_bytes)).await
    }

    /// A call that must answer `status`; returns the JSON body.
    pub(crate) async fn expect(
        &self,
        status: u16,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Value {
        let reply = self.call(method, path, body).await;
        if reply.status != status {
            panic!(
                "{method} {path}: expected {status}, got {}: {}\n{}",
                reply.status,
                String::from_utf8_lossy(&reply.body),
                self.logs()
            );
        }
        if reply.body.is_empty() { Value::Null } else { reply.json() }
    }

    /// Polls an invocation until it finishes.
    pub(crate) async fn finished(&self, id: &str) -> Value {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let invocation = self.expect(200, "GET", &format!("/invocations/{id}"), None).await;
            if ["succeeded", "failed", "timed_out"]
                .contains(&invocation["status"].as_str().unwrap())
            {
                return invocation;
            }
            assert!(tokio::time::Instant::now() < deadline, "{invocation}\n{}", self.logs());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub(crate) fn logs(&self) -> String {
        let mut text = String::new();
        for entry in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "log") {
                let body = std::fs::read_to_string(&path).unwrap_or_default();
                let lines: Vec<&str> = body.lines().collect();
                let tail = lines[lines.len().saturating_sub(20)..].join("\n");
                text.push_str(&format!("--- {}\n{tail}\n", path.display()));
            }
        }
        text
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        self.children.clear();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Spawns `command` (stdout piped) and waits for a line containing `ready`; returns the line.
async fn spawn_until(mut command: Command, ready: &str) -> (Child, String) {
    let mut child = command.spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(PATIENCE, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains(ready) {
                return line;
            }
        }
        panic!("the process exited before printing {ready:?}");
    })
    .await
    .unwrap_or_else(|_| panic!("no {ready:?} line"));
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, line)
}
