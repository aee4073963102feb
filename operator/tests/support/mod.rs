//! The platform of the end-to-end and fault tests: the real binaries as separate processes
//! (`kubefaas-apiserver`, `kubefaas-operator`, `kubefaas-executor`, `kubefaas-api-gateway`)
//! against real PostgreSQL and Redis, driven with the real `kubectl`; and servers of a test's
//! own that it may stop, wipe and restart.

#![allow(dead_code)]

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use chrono::{DateTime, Utc};
use kubefaas_core::store::{InvocationQuery, InvocationRow, Store};
use serde_json::Value;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};
use uuid::Uuid;

/// Bound on any wait, so a broken pipeline fails instead of hanging.
pub(crate) const PATIENCE: Duration = Duration::from_secs(360);

pub(crate) fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: these tests need real PostgreSQL and Redis (run `make test`)")
    })
}

pub(crate) fn binary(name: &str) -> PathBuf {
    let operator = PathBuf::from(env!("CARGO_BIN_EXE_kubefaas-operator"));
    let path = operator.with_file_name(name);
    assert!(
        path.exists(),
        "{} is not built; build the workspace first (`cargo build --workspace` or `make test`)",
        path.display()
    );
    path
}

/// A Kubernetes timestamp.
pub(crate) fn time(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text).unwrap().to_utc()
}

pub(crate) fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The control plane, operator and executor of one test, each in its own process, sharing a
/// scratch directory, a PostgreSQL schema and a Redis key prefix of their own.
pub(crate) struct Platform {
    pub(crate) dir: PathBuf,
    pub(crate) apiserver: Option<Child>,
    pub(crate) operator: Option<Child>,
    pub(crate) executors: Vec<Child>,
    pub(crate) gateways: Vec<Child>,
    pub(crate) database_url: String,
    pub(crate) redis_url: String,
    pub(crate) prefix: String,
    /// With the node agent and the executor's kubernetes backend: where pods live (short, for
    /// the unix socket paths below it).
    pub(crate) node_dir: Option<PathBuf>,
    /// Extra flags of `kubefaas-apiserver` (its history and watch limits).
    pub(crate) apiserver_args: Vec<String>,
}

impl Platform {
    pub(crate) async fn start() -> Self {
        Self::start_with(env("REDIS_URL"), false).await
    }

    /// `kubernetes`: the apiserver runs its node agent and the executor runs invocations in pods.
    pub(crate) async fn start_with(redis_url: String, kubernetes: bool) -> Self {
        Self::start_on(&env("DATABASE_URL"), redis_url, kubernetes).await
    }

    /// On the PostgreSQL server of `database_url` (in a schema of its own) and `redis_url`.
    pub(crate) async fn start_on(database_url: &str, redis_url: String, kubernetes: bool) -> Self {
        Self::start_configured(database_url, redis_url, kubernetes, &[]).await
    }

    /// As [`Platform::start_on`], with extra `kubefaas-apiserver` flags.
    pub(crate) async fn start_configured(
        database_url: &str,
        redis_url: String,
        kubernetes: bool,
        apiserver_args: &[&str],
    ) -> Self {
        let dir = std::env::temp_dir().join(format!("kubefaas-e2e-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let schema = format!("e2e_{}", Uuid::new_v4().simple());
        let database_url =
            kubefaas_core::store::create_schema(database_url, &schema).await.unwrap();

        let mut platform = Self {
            dir,
            apiserver: None,
            operator: None,
            executors: Vec::new(),
            gateways: Vec::new(),
            database_url,
            redis_url,
            prefix: format!("e2e-{}", Uuid::new_v4().simple()),
            node_dir: kubernetes.then(|| {
                std::env::temp_dir()
                    .join(format!("kfe-{}", &Uuid::new_v4().simple().to_string()[..8]))
            }),
            apiserver_args: apiserver_args.iter().map(|a| (*a).to_owned()).collect(),
        };
        platform.apiserver = Some(platform.start_apiserver().await);
        platform.kubectl_ok(&["apply", "-f", repo().join("crds").to_str().unwrap()]).await;
        platform.start_operator();
        platform.start_executor().await;
        platform
    }

    pub(crate) fn start_operator(&mut self) {
        let log = format!("operator-{}", Uuid::new_v4().simple());
        self.operator = Some(self.spawn(
            &log,
            binary("kubefaas-operator"),
            // The tests' code server listens on loopback.
            &["--http-addr", "127.0.0.1:0", "--code-allow-private-addresses"],
        ));
    }

    pub(crate) async fn start_apiserver(&self) -> Child {
        let mut command = Command::new(binary("kubefaas-apiserver"));
        command.args(["--listen", "127.0.0.1:0", "--kubeconfig"]).arg(self.kubeconfig());
        if let Some(node_dir) = &self.node_dir {
            command.args(["--node-agent", "--node-dir"]).arg(node_dir);
        }
        command.args(&self.apiserver_args);
        let mut child = command
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        tokio::time::timeout(PATIENCE, async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if line.contains("kubefaas-apiserver ready") {
                    return;
                }
            }
            panic!("kubefaas-apiserver exited before it was ready");
        })
        .await
        .expect("kubefaas-apiserver ready");
        // Keep draining its output so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        child
    }

    pub(crate) async fn start_executor(&mut self) {
        let name = format!("executor-{}", &Uuid::new_v4().simple().to_string()[..8]);
        let work = self.dir.join(&name);
        let child = self.spawn(
            &name,
            binary("kubefaas-executor"),
            &[
                "--http-addr",
                "127.0.0.1:0",
                "--work-dir",
                work.to_str().unwrap(),
                "--name",
                &name,
                "--lease-seconds",
                "3",
                "--backend",
                if self.node_dir.is_some() { "kubernetes" } else { "local-unsafe" },
                // Two go pods may build their code at once, each compiling the standard library
                // with a cold cache, on a two-core machine busy with other tests.
                "--pod-start-timeout-seconds",
                "300",
            ],
        );
        self.executors.push(child);
    }

    /// Starts a gateway (no tokens, no rate limit) and returns its address.
    pub(crate) async fn start_gateway(&mut self) -> std::net::SocketAddr {
        let name = format!("gateway-{}", &Uuid::new_v4().simple().to_string()[..8]);
        let args = ["--addr", "127.0.0.1:0", "--auth", "none", "--rate-limit", "0"];
        let child = self.spawn(&name, binary("kubefaas-api-gateway"), &args);
        self.gateways.push(child);
        let log = self.dir.join(format!("{name}.log"));
        let line = self
            .eventually(async || {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                text.lines()
                    .find(|line| line.contains("ready on http://"))
                    .map(str::to_owned)
                    .ok_or_else(|| format!("{name} is not ready"))
            })
            .await;
        let addr = line.rsplit("http://").next().unwrap().trim();
        addr.trim_end_matches('/').parse().unwrap_or_else(|e| panic!("{addr:?}: {e}"))
    }

    pub(crate) fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    /// Starts a component with the shared settings; its output goes to `<name>.log`.
    pub(crate) fn spawn(&self, name: &str, program: PathBuf, args: &[&str]) -> Child {
        let log = std::fs::File::create(self.dir.join(format!("{name}.log"))).unwrap();
        Command::new(program)
            .args(args)
            .env("DATABASE_URL", &self.database_url)
            .env("REDIS_URL", &self.redis_url)
            .env("KUBEFAAS_QUEUE_PREFIX", &self.prefix)
            .env("KUBECONFIG", self.kubeconfig())
            .env("KUBEFAAS_FUNCTION_WAIT_SECONDS", "10")
            // A second write of one function's lastInvokedAt need not wait the default 15 s.
            .env("KUBEFAAS_LAST_INVOKED_FLUSH_SECONDS", "1")
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    }

    pub(crate) async fn kubectl(&self, args: &[&str]) -> std::process::Output {
        let run = Command::new("kubectl")
            .env("KUBECONFIG", self.kubeconfig())
            .env("HOME", &self.dir)
            .arg("--cache-dir")
            .arg(self.dir.join("cache"))
            .args(args)
            .kill_on_drop(true)
            .output();
        tokio::time::timeout(PATIENCE + Duration::from_secs(10), run)
            .await
            .unwrap_or_else(|_| panic!("kubectl {args:?} did not finish"))
            .unwrap()
    }

    pub(crate) async fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args).await;
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.logs()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub(crate) async fn apply(&self, manifest: &str) {
        let path = self.dir.join(format!("{}.yaml", Uuid::new_v4().simple()));
        std::fs::write(&path, manifest).unwrap();
        self.kubectl_ok(&["apply", "-f", path.to_str().unwrap()]).await;
    }

    /// `kubectl wait` for a phase, then the object as JSON.
    pub(crate) async fn wait_phase(&self, object: &str, phase: &str) -> Value {
        let timeout = format!("--timeout={}s", PATIENCE.as_secs());
        let condition = format!("--for=jsonpath={{.status.phase}}={phase}");
        let out = self.kubectl(&["wait", object, &condition, &timeout]).await;
        let json = self.get(object).await;
        assert!(
            out.status.success(),
            "{object} never reached {phase}: {}\nstatus: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            json["status"],
            self.logs()
        );
        json
    }

    /// Waits until the operator has looked at `object`'s current generation, then the object.
    pub(crate) async fn wait_observed(&self, object: &str) -> Value {
        let generation = self.get(object).await["metadata"]["generation"].clone();
        let timeout = format!("--timeout={}s", PATIENCE.as_secs());
        let condition = format!("--for=jsonpath={{.status.observedGeneration}}={generation}");
        self.kubectl_ok(&["wait", object, &condition, &timeout]).await;
        self.get(object).await
    }

    pub(crate) async fn get(&self, object: &str) -> Value {
        serde_json::from_str(&self.kubectl_ok(&["get", object, "-o", "json"]).await).unwrap()
    }

    pub(crate) async fn invoke(&self, name: &str, function: &str, payload: &str) {
        self.apply(&format!(
            "apiVersion: kubefaas.io/v1alpha1\nkind: Invocation\nmetadata:\n  name: {name}\nspec:\n  functionRef:\n    name: {function}\n  payload: {payload}\n"
        ))
        .await;
    }

    /// Calls `check` until it returns `Ok`; after `PATIENCE` fails with what the last `Err` said.
    pub(crate) async fn eventually<T>(
        &self,
        mut check: impl AsyncFnMut() -> Result<T, String>,
    ) -> T {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            match check().await {
                Ok(done) => return done,
                Err(seen) => {
                    assert!(tokio::time::Instant::now() < deadline, "{seen}\n{}", self.logs());
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until `function`'s `status.lastInvokedAt` is `at_least` or later; returns it.
    pub(crate) async fn wait_last_invoked(
        &self,
        function: &str,
        at_least: DateTime<Utc>,
    ) -> DateTime<Utc> {
        self.eventually(async || {
            let status = self.get(function).await["status"].clone();
            match status["lastInvokedAt"].as_str().map(time) {
                Some(shown) if shown >= at_least => Ok(shown),
                _ => Err(format!(
                    "{function} never showed lastInvokedAt at or after {at_least}: {status}"
                )),
            }
        })
        .await
    }

    /// Waits until the row of Invocation `name` satisfies `done`; returns it.
    pub(crate) async fn wait_row(
        &self,
        store: &Store,
        name: &str,
        done: impl Fn(&InvocationRow) -> bool,
    ) -> InvocationRow {
        self.eventually(async || {
            let rows = store.list_invocations(&InvocationQuery::default()).await.unwrap();
            match rows.into_iter().find(|row| row.resource_name.as_deref() == Some(name)) {
                Some(row) if done(&row) => Ok(row),
                row => Err(format!(
                    "the row of {name} never got there; it is {:?}",
                    row.map(|row| row.status)
                )),
            }
        })
        .await
    }

    /// A store on this platform's schema, to look at what PostgreSQL recorded.
    pub(crate) async fn store(&self) -> kubefaas_core::store::Store {
        kubefaas_core::store::Store::connect(&kubefaas_core::store::StoreConfig::new(
            &self.database_url,
        ))
        .await
        .unwrap()
    }

    /// The components' logs, for failure messages.
    pub(crate) fn logs(&self) -> String {
        let mut text = String::new();
        for entry in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "log") {
                let body = std::fs::read_to_string(&path).unwrap_or_default();
                let tail: String = body
                    .lines()
                    .rev()
                    .take(30)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join("\n");
                text.push_str(&format!("--- {}\n{tail}\n", path.display()));
            }
        }
        text
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
            if let Some(node_dir) = &self.node_dir {
                let _ = std::fs::remove_dir_all(node_dir);
            }
        }
    }
}

/// A Redis server of this test's own, so it can be wiped and restarted without disturbing others.
pub(crate) struct PrivateRedis {
    pub(crate) port: u16,
    pub(crate) dir: PathBuf,
    pub(crate) child: Option<Child>,
}

impl PrivateRedis {
    pub(crate) async fn start(dir: PathBuf) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut redis = Self { port, dir, child: None };
        redis.restart().await;
        redis
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// (Re)starts the server empty: no persistence, so a restart wipes every key.
    pub(crate) async fn restart(&mut self) {
        if let Some(mut old) = self.child.take() {
            old.kill().await.unwrap();
        }
        std::fs::create_dir_all(&self.dir).unwrap();
        let child = Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &self.port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server runs (make deps installs it)");
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(tokio::time::Instant::now() < deadline, "redis-server did not come up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A PostgreSQL server of this test's own, so it can be stopped and started again without
/// disturbing others. Its data survives a stop (the fault is an outage, not data loss).
pub(crate) struct PrivatePostgres {
    pub(crate) port: u16,
    dir: PathBuf,
    bin: PathBuf,
}

impl PrivatePostgres {
    pub(crate) async fn start(dir: PathBuf) -> Self {
        let bin = ["/usr/lib/postgresql"]
            .iter()
            .filter_map(|root| std::fs::read_dir(root).ok())
            .flatten()
            .flatten()
            .map(|version| version.path().join("bin"))
            .filter(|bin| bin.join("initdb").exists())
            .max()
            .expect(
                "PostgreSQL server binaries under /usr/lib/postgresql (make deps installs them)",
            );
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        std::fs::create_dir_all(dir.join("sock")).unwrap();
        let postgres = Self { port, dir, bin };
        // initdb refuses to run as root; the Debian package makes the postgres user.
        postgres.chown().await;
        postgres
            .run("initdb", &["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .await;
        postgres.start_again().await;
        postgres
    }

    async fn chown(&self) {
        if is_root() {
            let status = Command::new("chown")
                .args(["-R", "postgres"])
                .arg(&self.dir)
                .status()
                .await
                .unwrap();
            assert!(status.success());
        }
    }

    async fn run(&self, program: &str, args: &[&str]) {
        let data = self.dir.join("data");
        let mut command = if is_root() {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(self.bin.join(program));
            command
        } else {
            Command::new(self.bin.join(program))
        };
        command.arg("-D").arg(&data).args(args).kill_on_drop(true);
        let out = tokio::time::timeout(PATIENCE, command.output())
            .await
            .unwrap_or_else(|_| panic!("{program} did not finish"))
            .unwrap();
        assert!(
            out.status.success(),
            "{program} {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub(crate) fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Starts the server (after [`Self::stop`]), waiting until it accepts connections.
    pub(crate) async fn start_again(&self) {
        let options = format!(
            "-p {} -h 127.0.0.1 -k {} -c fsync=off -c max_connections=200",
            self.port,
            self.dir.join("sock").display()
        );
        let log = self.dir.join("server.log");
        let log = log.to_str().unwrap();
        self.run("pg_ctl", &["-l", log, "-w", "-t", "60", "-o", &options, "start"]).await;
    }

    /// Stops the server at once, as a crash would (`immediate`: no checkpoint, clients cut off).
    pub(crate) async fn stop(&self) {
        self.run("pg_ctl", &["-m", "immediate", "-w", "stop"]).await;
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        let pg_ctl = self.bin.join("pg_ctl");
        let mut command = if is_root() {
            let mut command = std::process::Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(pg_ctl);
            command
        } else {
            std::process::Command::new(pg_ctl)
        };
        let _ = command.arg("-D").arg(&data).args(["-m", "immediate", "stop"]).output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether this process runs as root (the uid of /proc/self).
fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false)
}
