//! Test harness: an in-memory API server per test, `kubectl` pointed at it, and a `kube` client.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use kubefaas_standalone::{ApiServer, Config};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// How long a test waits for a condition before failing (only to avoid hangs).
pub(crate) const PATIENCE: Duration = Duration::from_secs(20);

/// A running server with its own scratch directory (kubeconfig, kubectl cache).
pub(crate) struct Harness {
    server: Option<ApiServer>,
    pub(crate) dir: PathBuf,
    pub(crate) kubeconfig: PathBuf,
}

/// The project's top-level directory.
pub(crate) fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub(crate) fn scratch_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kubefaas-standalone-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl Harness {
    pub(crate) async fn start() -> Self {
        Self::start_with(Config::default()).await
    }

    pub(crate) async fn start_with(config: Config) -> Self {
        let dir = scratch_dir();
        let kubeconfig = dir.join("kubeconfig");
        let server = ApiServer::start(Config { kubeconfig: Some(kubeconfig.clone()), ..config })
            .await
            .expect("server starts");
        Self { server: Some(server), dir, kubeconfig }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("kubectl");
        cmd.env("KUBECONFIG", &self.kubeconfig)
            .env("HOME", &self.dir)
            .arg("--cache-dir")
            .arg(self.dir.join("cache"))
            .args(args)
            .kill_on_drop(true);
        cmd
    }

    /// Runs kubectl to completion.
    pub(crate) async fn kubectl(&self, args: &[&str]) -> Output {
        tokio::time::timeout(PATIENCE, self.command(args).output())
            .await
            .unwrap_or_else(|_| panic!("kubectl {args:?} did not finish"))
            .expect("running kubectl (it must be on the PATH)")
    }

    /// Runs kubectl, which must succeed; returns its stdout.
    pub(crate) async fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args).await;
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs kubectl, which must fail; returns its stderr.
    pub(crate) async fn kubectl_err(&self, args: &[&str]) -> String {
        let out = self.kubectl(args).await;
        assert!(
            !out.status.success(),
            "kubectl {args:?} succeeded: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// `kubectl get OBJECT -o jsonpath=PATH`.
    pub(crate) async fn jsonpath(&self, object: &str, path: &str) -> String {
        self.kubectl_ok(&["get", object, "-o", &format!("jsonpath={path}")]).await
    }

    /// `kubectl patch OBJECT --type KIND -p PATCH [EXTRA...]`.
    pub(crate) async fn patch(
        &self,
        object: &str,
        kind: &str,
        patch: &str,
        extra: &[&str],
    ) -> Output {
        let mut args = vec!["patch", object, "--type", kind, "-p", patch];
        args.extend_from_slice(extra);
        self.kubectl(&args).await
    }

    /// A patch that must succeed.
    pub(crate) async fn patch_ok(&self, object: &str, kind: &str, patch: &str) {
        let out = self.patch(object, kind, patch, &[]).await;
        assert!(
            out.status.success(),
            "patch {patch} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A patch that must fail; returns stderr.
    pub(crate) async fn patch_err(&self, object: &str, kind: &str, patch: &str) -> String {
        let out = self.patch(object, kind, patch, &[]).await;
        assert!(!out.status.success(), "patch {patch} succeeded");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// A merge patch of the status subresource that must succeed.
    pub(crate) async fn patch_status(&self, object: &str, patch: &str) {
        let out = self.patch(object, "merge", patch, &["--subresource", "status"]).await;
        assert!(
            out.status.success(),
            "status patch failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs kubectl with `input` on stdin, which must succeed; returns its stdout.
    pub(crate) async fn kubectl_stdin(&self, args: &[&str], input: &str) -> String {
        let mut cmd = self.command(args);
        cmd.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().expect("running kubectl (it must be on the PATH)");
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(input.as_bytes()).await.unwrap();
        drop(stdin);
        let out = tokio::time::timeout(PATIENCE, child.wait_with_output()).await.unwrap().unwrap();
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A kubectl process left running (for `get -w`), with stdout piped.
    pub(crate) fn kubectl_spawn(&self, args: &[&str]) -> tokio::process::Child {
        let mut cmd = self.command(args);
        cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
        cmd.spawn().expect("running kubectl (it must be on the PATH)")
    }

    /// Applies the project's CRDs.
    pub(crate) async fn install_crds(&self) {
        let crds = repo().join("crds");
        self.kubectl_ok(&["apply", "-f", crds.to_str().unwrap()]).await;
    }

    /// The server's address.
    pub(crate) fn addr(&self) -> std::net::SocketAddr {
        self.server.as_ref().unwrap().addr()
    }

    /// A `kube` client for this server, default namespace `default`.
    pub(crate) fn client(&self) -> kube::Client {
        let mut config = kube::Config::new(format!("http://{}", self.addr()).parse().unwrap());
        config.default_namespace = "default".into();
        kube::Client::try_from(config).unwrap()
    }
}

impl Harness {
    /// Stops the server, keeping the scratch directory until the harness is dropped.
    pub(crate) async fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await.unwrap();
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Polls `check` until it holds, failing the test after [`PATIENCE`].
pub(crate) async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
