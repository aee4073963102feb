//! One script of `kubectl` commands run against the real cluster and against the standalone API
//! server (`kubefaas-apiserver`), answers compared: what the platform and its users rely on
//! (explain, printer columns, defaulting, validation messages, NotFound/AlreadyExists, apply
//! conflicts, the status subresource, finalizers, watch expiry) must be the same on both.
//! Differences that are known and accepted are listed in `standalone/README.md`; this test
//! names each one it tolerates.
//!
//! `make cluster-test` runs it with `KUBECONFIG` set to the cluster's.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::{path::PathBuf, process::Stdio};

use common::{PATIENCE, repo};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};
use uuid::Uuid;

/// The standalone API server built next to this test (`target/<profile>/kubefaas-apiserver`).
fn apiserver_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe.parent().unwrap().parent().unwrap().join("kubefaas-apiserver");
    assert!(path.exists(), "{} is not built (make cluster-test builds it)", path.display());
    path
}

/// What one `kubectl` run answered.
#[derive(Debug, PartialEq, Eq)]
struct Answer {
    success: bool,
    stdout: String,
    stderr: String,
}

#[derive(Debug)]
struct Server {
    name: &'static str,
    kubeconfig: PathBuf,
    dir: PathBuf,
    _process: Option<Child>,
}

impl Server {
    fn real() -> Self {
        let dir = std::env::temp_dir().join(format!("kubefaas-diff-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let kubeconfig = PathBuf::from(std::env::var("KUBECONFIG").unwrap_or_else(|_| {
            panic!(
                "KUBECONFIG is not set: this test runs against a real cluster (make cluster-test)"
            )
        }));
        Self { name: "kube-apiserver", kubeconfig, dir, _process: None }
    }

    async fn standalone() -> Self {
        let dir = std::env::temp_dir().join(format!("kubefaas-diff-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let kubeconfig = dir.join("kubeconfig");
        let mut child = Command::new(apiserver_binary())
            .args(["--listen", "127.0.0.1:0", "--kubeconfig"])
            .arg(&kubeconfig)
            .args(["--data-dir"])
            .arg(dir.join("data"))
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
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self { name: "kubefaas-apiserver", kubeconfig, dir, _process: Some(child) }
    }

    async fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Answer {
        let mut command = Command::new("kubectl");
        command
            .env("KUBECONFIG", &self.kubeconfig)
            .env("HOME", &self.dir)
            .arg("--cache-dir")
            .arg(self.dir.join("cache"))
            .args(args)
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().unwrap();
        if let Some(text) = stdin {
            use tokio::io::AsyncWriteExt as _;
            let mut pipe = child.stdin.take().unwrap();
            pipe.write_all(text.as_bytes()).await.unwrap();
        }
        let out = tokio::time::timeout(PATIENCE, child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("{}: kubectl {args:?} did not finish", self.name))
            .unwrap();
        Answer {
            success: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const NS: &str = "kubefaas-diff";

/// A step of the script: a kubectl command, what of its answer is compared, and how.
struct Step {
    what: &'static str,
    args: Vec<String>,
    stdin: Option<String>,
    compare: Compare,
}

#[derive(Clone, Copy)]
enum Compare {
    /// Success, stdout and stderr alike.
    All,
    /// Success and the column names of the first line of stdout (a table's header).
    Header,
    /// Success only (what is printed differs for a documented reason).
    Outcome,
    /// Success and stderr with digits blanked (messages that carry resource versions).
    ErrorShape,
}

fn step(what: &'static str, args: &[&str], compare: Compare) -> Step {
    Step { what, args: args.iter().map(|a| (*a).to_owned()).collect(), stdin: None, compare }
}

fn apply(what: &'static str, extra: &[&str], manifest: &str, compare: Compare) -> Step {
    let mut args = vec!["apply".to_owned(), "-n".to_owned(), NS.to_owned()];
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    args.extend(["-f".to_owned(), "-".to_owned()]);
    Step { what, args, stdin: Some(manifest.to_owned()), compare }
}

fn blank_digits(text: &str) -> String {
    text.chars().map(|c| if c.is_ascii_digit() { '#' } else { c }).collect()
}

fn compared(answer: &Answer, compare: Compare) -> (bool, String) {
    let text = match compare {
        Compare::All => format!("{}\n--\n{}", answer.stdout, answer.stderr),
        // Column widths follow the values, which the operator fills in on the real cluster.
        Compare::Header => answer
            .stdout
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" "),
        Compare::Outcome => String::new(),
        Compare::ErrorShape => blank_digits(&answer.stderr),
    };
    (answer.success, text)
}

const FUNCTION: &str = "apiVersion: kubefaas.io/v1alpha1\nkind: Function\nmetadata:\n  name: same\nspec:\n  runtime: python\n  handler: main.handler\n  code:\n    inline: \"def handler(event, context):\\n    return 1\\n\"\n";

fn script() -> Vec<Step> {
    use Compare::*;
    let bad_runtime = FUNCTION
        .replace("name: same", "name: bad-runtime")
        .replace("runtime: python", "runtime: ruby");
    let no_handler =
        FUNCTION.replace("name: same", "name: no-handler").replace("  handler: main.handler\n", "");
    let negative = FUNCTION.replace("name: same", "name: negative") + "  timeoutSeconds: -1\n";
    let config = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: shared\ndata:\n  key: one\n";
    let config_other = config.replace("key: one", "key: two");
    let label_carol =
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: shared\n  labels: {owner: carol}\n";
    let label_dave =
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: shared\n  labels: {owner: dave}\n";
    let finalized = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: kept\n  finalizers: [kubefaas.io/test]\ndata: {}\n";
    vec![
        step("explain a Function's code", &["explain", "function.spec.code"], All),
        step("explain an Invocation's status", &["explain", "invocation.status"], All),
        step("explain recursively", &["explain", "function.spec", "--recursive"], All),
        apply("create a Function", &[], FUNCTION, All),
        apply("apply it again unchanged", &[], FUNCTION, All),
        step("printer columns of Functions", &["get", "functions", "-n", NS], Header),
        step("printer columns, wide", &["get", "functions", "-n", NS, "-o", "wide"], Header),
        step(
            "defaulted spec",
            &["get", "function", "same", "-n", NS, "-o", "jsonpath={.spec}"],
            All,
        ),
        apply("an unknown runtime is refused", &[], &bad_runtime, All),
        apply("a missing handler is refused", &[], &no_handler, All),
        apply("a negative timeout is refused", &[], &negative, All),
        step("a missing Function", &["get", "function", "nope", "-n", NS], All),
        step("creating an existing one", &["create", "-n", NS, "-f", "-"], All),
        apply(
            "server-side apply as one manager",
            &["--server-side", "--field-manager=alice"],
            config,
            All,
        ),
        apply(
            "another manager's conflicting apply",
            &["--server-side", "--field-manager=bob"],
            &config_other,
            All,
        ),
        apply(
            "a third manager takes a label",
            &["--server-side", "--field-manager=carol"],
            label_carol,
            All,
        ),
        apply(
            "conflicts with two managers at once",
            &["--server-side", "--field-manager=dave"],
            &format!("{label_dave}data:\n  key: four\n"),
            All,
        ),
        apply(
            "forced conflicting apply",
            &["--server-side", "--field-manager=bob", "--force-conflicts"],
            &config_other,
            All,
        ),
        step(
            "status written through the main resource is ignored",
            &[
                "patch",
                "function",
                "same",
                "-n",
                NS,
                "--type=merge",
                "-p",
                r#"{"status":{"phase":"Failed"}}"#,
            ],
            All,
        ),
        apply("an object with a finalizer", &[], finalized, All),
        step(
            "deleting it waits for the finalizer",
            &["delete", "configmap", "kept", "-n", NS, "--wait=false"],
            All,
        ),
        step(
            "it is still there, being deleted",
            &[
                "get",
                "configmap",
                "kept",
                "-n",
                NS,
                "-o",
                "jsonpath={.metadata.finalizers}{\" \"}{.metadata.deletionTimestamp!=\"\"}",
            ],
            Outcome,
        ),
        step(
            "removing the finalizer lets it go",
            &[
                "patch",
                "configmap",
                "kept",
                "-n",
                NS,
                "--type=merge",
                "-p",
                r#"{"metadata":{"finalizers":null}}"#,
            ],
            Outcome,
        ),
        step("it is gone", &["get", "configmap", "kept", "-n", NS], All),
        step(
            "a watch from a compacted resource version expires",
            &[
                "get",
                "configmaps",
                "-n",
                NS,
                "--watch-only",
                "--resource-version=1",
                "--request-timeout=10s",
            ],
            ErrorShape,
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_sees_the_same_api_on_the_standalone_server_and_the_real_one() {
    let real = Server::real();
    let standalone = Server::standalone().await;
    let crds = repo().join("crds");
    for server in [&real, &standalone] {
        // A clean namespace of this test's own (the real cluster keeps it between runs).
        server
            .kubectl(&["delete", "namespace", NS, "--wait=true", "--ignore-not-found"], None)
            .await;
        let made = server.kubectl(&["create", "namespace", NS], None).await;
        assert!(made.success, "{}: {made:?}", server.name);
        let crds = server.kubectl(&["apply", "-f", crds.to_str().unwrap()], None).await;
        assert!(crds.success, "{}: {crds:?}", server.name);
        let established = server
            .kubectl(
                &["wait", "--for=condition=Established", "crd", "--all", "--timeout=60s"],
                None,
            )
            .await;
        assert!(established.success, "{}: {established:?}", server.name);
    }

    let mut differences = Vec::new();
    for Step { what, args, stdin, compare } in script() {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        // `create` reads the Function made by the step before it.
        let stdin = stdin.or_else(|| (args[0] == "create").then(|| FUNCTION.to_owned()));
        let on_real = real.kubectl(&args, stdin.as_deref()).await;
        let on_standalone = standalone.kubectl(&args, stdin.as_deref()).await;
        if compared(&on_real, compare) != compared(&on_standalone, compare) {
            differences.push(format!(
                "{what} (kubectl {}):\n  real:       {on_real:?}\n  standalone: {on_standalone:?}",
                args.join(" ")
            ));
        }
    }
    real.kubectl(&["delete", "namespace", NS, "--wait=false"], None).await;
    assert!(differences.is_empty(), "the servers differ:\n{}", differences.join("\n\n"));
}
