//! The `kubefaas-apiserver` binary: starts, says when it is ready, serves kubectl, keeps its
//! data across restarts and stops cleanly on SIGTERM.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Stdio;

use common::{PATIENCE, scratch_dir};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Starts the binary and waits for its ready line.
async fn start(dir: &Path) -> Child {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kubefaas-apiserver"))
        .args(["--listen", "127.0.0.1:0", "--kubeconfig"])
        .arg(dir.join("kubeconfig"))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = tokio::time::timeout(PATIENCE, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("kubefaas-apiserver ready") {
                return line;
            }
        }
        panic!("the server exited before it was ready");
    });
    let line = ready.await.expect("a ready line");
    assert!(line.contains("addr=127.0.0.1:"), "{line}");
    // Keep reading, so the server's later log lines have somewhere to go.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    child
}

async fn kubectl(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("kubectl")
        .env("KUBECONFIG", dir.join("kubeconfig"))
        .arg("--cache-dir")
        .arg(dir.join("cache"))
        .args(args)
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "kubectl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn terminate(mut child: Child) {
    let pid = child.id().unwrap().to_string();
    let sent = Command::new("kill").args(["-TERM", &pid]).status().await.unwrap();
    assert!(sent.success());
    let status = tokio::time::timeout(PATIENCE, child.wait()).await.expect("exits").unwrap();
    assert!(status.success(), "exit status {status}");
}

#[tokio::test]
async fn binary_serves_kubectl_keeps_data_and_stops_on_sigterm() {
    let dir = scratch_dir();
    let server = start(&dir).await;
    kubectl(&dir, &["create", "configmap", "kept", "--from-literal=a=1"]).await;
    // An open watch must not keep the server from stopping.
    let mut watch = Command::new("kubectl")
        .env("KUBECONFIG", dir.join("kubeconfig"))
        .arg("--cache-dir")
        .arg(dir.join("cache"))
        .args(["get", "configmaps", "-w", "-o", "name"])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut watched = BufReader::new(watch.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(PATIENCE, watched.next_line()).await.unwrap().unwrap();
    assert_eq!(first.as_deref(), Some("configmap/kept"), "the watch is open");
    terminate(server).await;

    let server = start(&dir).await;
    let out = kubectl(&dir, &["get", "configmap", "kept", "-o", "jsonpath={.data.a}"]).await;
    assert_eq!(out, "1");
    terminate(server).await;
    std::fs::remove_dir_all(dir).unwrap();
}
