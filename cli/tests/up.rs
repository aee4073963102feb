//! `kubefaas up` as a user runs it: one process brings the platform up, kubectl works against
//! it, an Invocation runs, every CLI command works against its gateway, and SIGTERM stops
//! everything cleanly.
//!
//! Needs `DATABASE_URL` and `REDIS_URL` (`make test` provides both).

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::{path::PathBuf, process::Stdio, time::Duration};

use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::Command,
};
use uuid::Uuid;

const PATIENCE: Duration = Duration::from_secs(90);

fn env(name: &str) -> String {
    std::env::var(name)
        .unwrap_or_else(|_| panic!("{name} is not set: run the tests with `make test`"))
}

async fn kubectl(kubeconfig: &PathBuf, args: &[&str]) -> String {
    let out = tokio::time::timeout(
        PATIENCE,
        Command::new("kubectl").env("KUBECONFIG", kubeconfig).args(args).output(),
    )
    .await
    .expect("kubectl finishes")
    .unwrap();
    assert!(out.status.success(), "kubectl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_runs_the_platform_until_sigterm() {
    let dir = std::env::temp_dir().join(format!("kubefaas-up-{}", Uuid::new_v4().simple()));
    let kubeconfig = dir.join("kubeconfig");
    let database_url = kubefaas_core::store::create_schema(
        &env("DATABASE_URL"),
        &format!("up_{}", Uuid::new_v4().simple()),
    )
    .await
    .unwrap();

    let mut up = Command::new(env!("CARGO_BIN_EXE_kubefaas"))
        .args(["up", "--api-addr", "127.0.0.1:0", "--gateway-addr", "127.0.0.1:0", "--data-dir"])
        .arg(&dir)
        .env("DATABASE_URL", &database_url)
        .env("REDIS_URL", env("REDIS_URL"))
        .env("KUBEFAAS_QUEUE_PREFIX", format!("up-{}", Uuid::new_v4().simple()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    // The gateway's address is on stdout; keep the rest of stdout for the end.
    let mut lines = BufReader::new(up.stdout.take().unwrap()).lines();
    let gateway = tokio::time::timeout(PATIENCE, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(url) = line.trim().strip_prefix("gateway:") {
                return url.trim().to_owned();
            }
        }
        panic!("kubefaas up exited before printing the gateway address");
    })
    .await
    .expect("the gateway address is printed");
    let stdout = tokio::spawn(async move {
        let mut rest = String::new();
        while let Ok(Some(line)) = lines.next_line().await {
            rest.push_str(&line);
            rest.push('\n');
        }
        rest
    });

    // Up when the CRDs are served.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let ready = kubeconfig.exists()
            && Command::new("kubectl")
                .env("KUBECONFIG", &kubeconfig)
                .args(["get", "crd", "invocations.kubefaas.io"])
                .output()
                .await
                .is_ok_and(|out| out.status.success());
        if ready {
            break;
        }
        assert!(up.try_wait().unwrap().is_none(), "kubefaas up exited early");
        assert!(tokio::time::Instant::now() < deadline, "kubefaas up never came up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let examples = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples");
    kubectl(&kubeconfig, &["apply", "-f", examples.join("function.yaml").to_str().unwrap()]).await;
    kubectl(
        &kubeconfig,
        &["wait", "--for=jsonpath={.status.phase}=Ready", "function/hello", "--timeout=90s"],
    )
    .await;
    kubectl(&kubeconfig, &["apply", "-f", examples.join("invocation.yaml").to_str().unwrap()])
        .await;
    kubectl(
        &kubeconfig,
        &[
            "wait",
            "--for=jsonpath={.status.phase}=Succeeded",
            "invocation/hello-once",
            "--timeout=90s",
        ],
    )
    .await;
    let result = kubectl(
        &kubeconfig,
        &["get", "invocation", "hello-once", "-o", "jsonpath={.status.result.message}"],
    )
    .await;
    assert_eq!(result, "Hello, kubefaas!");
    // It ran in a runtime pod of the node agent (the default kubernetes backend).
    let pods = kubectl(
        &kubeconfig,
        &[
            "get",
            "pods",
            "-l",
            "kubefaas.io/function=hello",
            "-o",
            "jsonpath={.items[*].status.phase}",
        ],
    )
    .await;
    assert!(pods.contains("Running"), "a running pod serves the function: {pods:?}");

    // Every CLI command once, against the gateway of this platform.
    let cli = |args: &[&str]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_kubefaas"));
        command
            .args(args)
            .env("KUBEFAAS_GATEWAY", &gateway)
            .env("DATABASE_URL", env("DATABASE_URL"));
        async move {
            let out = tokio::time::timeout(PATIENCE, command.output())
                .await
                .expect("kubefaas finishes")
                .unwrap();
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        }
    };
    let ok = |(success, stdout, stderr): (bool, String, String), what: &str| {
        assert!(success, "kubefaas {what} failed: {stdout}{stderr}");
        stdout
    };
    let node = examples.join("function-nodejs.yaml");
    let created =
        ok(cli(&["fn", "create", "-f", node.to_str().unwrap(), "-o", "json"]).await, "fn create");
    let created: serde_json::Value = serde_json::from_str(&created).unwrap();
    assert_eq!(created["name"], "hello-node");
    assert_eq!(created["runtime"], "nodejs");
    let listed = ok(cli(&["fn", "list"]).await, "fn list");
    assert!(listed.contains("hello-node") && listed.contains("hello "), "{listed}");
    let got = ok(cli(&["fn", "get", "hello-node"]).await, "fn get");
    assert!(got.contains(created["id"].as_str().unwrap()), "{got}");
    let sync = ok(cli(&["invoke", "hello-node", "-d", r#"{"name": "cli"}"#]).await, "invoke");
    assert_eq!(serde_json::from_str::<serde_json::Value>(&sync).unwrap()["message"], "Hello, cli!");
    let waited = ok(
        cli(&["invoke", "hello", "--async", "--wait", "-d", r#"{"name": "later"}"#]).await,
        "invoke --async --wait",
    );
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&waited).unwrap()["message"],
        "Hello, later!"
    );
    let id = ok(
        cli(&["invoke", "hello", "--async", "-d", r#"{"name": "logged"}"#]).await,
        "invoke --async",
    );
    let id = id.trim().to_owned();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let (success, logs, _) = cli(&["logs", &id]).await;
        if success && logs.contains("greeting logged") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the logs of {id} never showed up: {logs}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ok(cli(&["fn", "delete", "hello-node"]).await, "fn delete");
    let (success, _, stderr) = cli(&["invoke", "hello-node"]).await;
    assert!(!success && stderr.contains("404"), "a deleted function is not found: {stderr}");
    let crds = ok(cli(&["crds"]).await, "crds");
    assert!(
        crds.contains("name: functions.kubefaas.io")
            && crds.contains("name: invocations.kubefaas.io")
    );
    let completions = ok(cli(&["completions", "bash"]).await, "completions");
    assert!(completions.contains("kubefaas"), "{completions}");
    let token = ok(
        cli(&["token", "create", "--name", "ci", "--namespace-scope", "default"]).await,
        "token create",
    );
    assert!(token.trim().len() >= 32, "a token is printed: {token}");
    let created: serde_json::Value = serde_json::from_str(&ok(
        cli(&["token", "create", "--name", "doomed", "--namespace-scope", "default", "-o", "json"])
            .await,
        "token create -o json",
    ))
    .unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    let state = |listed: &str| -> serde_json::Value {
        let listed: serde_json::Value = serde_json::from_str(listed).unwrap();
        let tokens = listed["tokens"].as_array().unwrap();
        let token = tokens.iter().find(|t| t["id"] == id.as_str()).expect("the token is listed");
        assert!(token.get("token").is_none() && token.get("token_hash").is_none(), "{token}");
        token["active"].clone()
    };
    assert_eq!(state(&ok(cli(&["token", "list", "-o", "json"]).await, "token list")), true);
    let table = ok(cli(&["token", "list"]).await, "token list");
    assert!(table.contains(&id) && table.contains("doomed"), "{table}");
    ok(cli(&["token", "revoke", &id]).await, "token revoke");
    assert_eq!(state(&ok(cli(&["token", "list", "-o", "json"]).await, "token list")), false);
    let (success, _, stderr) = cli(&["token", "revoke", &id]).await;
    assert!(!success && stderr.contains("no active token"), "revoked twice: {stderr}");

    let pid = up.id().unwrap().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().await.unwrap().success());
    let out = tokio::time::timeout(PATIENCE, up.wait_with_output())
        .await
        .expect("kubefaas up stops")
        .unwrap();
    let stdout = stdout.await.unwrap();
    assert!(
        out.status.success(),
        "exit {:?}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("kubefaas stopped"), "{stdout}");
    let _ = std::fs::remove_dir_all(&dir);
}
