//! `kubefaas up` as a user runs it: one process brings the platform up, kubectl works against
//! it, an Invocation runs, and SIGTERM stops everything cleanly.
//!
//! Needs `DATABASE_URL` and `REDIS_URL` (`make test` provides both).

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::{path::PathBuf, process::Stdio, time::Duration};

use tokio::process::Command;
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
    let schema = format!("up_{}", Uuid::new_v4().simple());
    let admin = kubefaas_core::store::Store::connect(&kubefaas_core::store::StoreConfig::new(env(
        "DATABASE_URL",
    )))
    .await
    .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(admin.pool())
        .await
        .unwrap();
    let separator = if env("DATABASE_URL").contains('?') { '&' } else { '?' };

    let mut up = Command::new(env!("CARGO_BIN_EXE_kubefaas"))
        .args(["up", "--api-addr", "127.0.0.1:0", "--gateway-addr", "127.0.0.1:0", "--data-dir"])
        .arg(&dir)
        .env(
            "DATABASE_URL",
            format!("{}{separator}options=-c%20search_path%3D{schema}", env("DATABASE_URL")),
        )
        .env("REDIS_URL", env("REDIS_URL"))
        .env("KUBEFAAS_QUEUE_PREFIX", format!("up-{}", Uuid::new_v4().simple()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

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

    let pid = up.id().unwrap().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().await.unwrap().success());
    let out = tokio::time::timeout(PATIENCE, up.wait_with_output())
        .await
        .expect("kubefaas up stops")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "exit {:?}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("kubefaas is up") && stdout.contains("kubefaas stopped"), "{stdout}");
    let _ = std::fs::remove_dir_all(&dir);
}
