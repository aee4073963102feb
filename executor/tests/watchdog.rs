//! `kubefaas-watchdog` over real HTTP, with a python function from a code directory.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod support;

use std::time::Duration;

use kubefaas_executor::watchdog::{InvokeResponse, WatchdogConfig, run};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const FUNCTION: &str = r#"
import os
calls = 0
def handler(event, context):
    global calls
    calls += 1
    print("called", calls)
    if event.get("touch"):
        open(event["touch"], "w").close()
    if event.get("sleep"):
        import time
        time.sleep(event["sleep"])
    return {"echo": event, "calls": calls, "fn": context.function_name, "color": os.environ.get("COLOR")}
"#;

/// Sends one HTTP/1.1 request and returns the status code and body.
async fn http(addr: std::net::SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: watchdog\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response.split(' ').nth(1).unwrap().parse().unwrap();
    let (_, body) = response.split_once("\r\n\r\n").unwrap();
    (status, body.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchdog_serves_invocations_from_a_code_directory_and_shuts_down_gracefully() {
    let root = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("kubefaas-watchdog-{}", std::process::id()));
    let code_dir = root.join("code");
    let work_dir = root.join("work");
    std::fs::create_dir_all(&code_dir).unwrap();
    std::fs::write(code_dir.join("main.py"), FUNCTION).unwrap();
    let vars = [
        ("KUBEFAAS_RUNTIME", "python"),
        ("KUBEFAAS_HANDLER", "main.handler"),
        ("KUBEFAAS_FUNCTION_NAME", "wd-fn"),
        ("KUBEFAAS_CODE_DIR", code_dir.to_str().unwrap()),
        ("KUBEFAAS_WORK_DIR", work_dir.to_str().unwrap()),
        ("COLOR", "blue"),
    ];
    let config =
        WatchdogConfig::from_vars(vars.map(|(k, v)| (k.to_owned(), v.to_owned()))).unwrap();
    assert_eq!(config.env.keys().collect::<Vec<_>>(), ["COLOR"], "only non-KUBEFAAS_ vars pass");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(run(config, listener, async move {
        let _ = stopped.await;
    }));

    // The server listens only once the instance is warm.
    let mut healthy = false;
    for _ in 0..500 {
        if let Ok(stream) = TcpStream::connect(addr).await {
            drop(stream);
            healthy = http(addr, "GET", "/healthz", "").await.0 == 200;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(healthy, "healthz answers 200 once warm");

    let (status, body) =
        http(addr, "POST", "/invoke", r#"{"id": "inv-1", "payload": {"x": 1}}"#).await;
    assert_eq!(status, 200, "{body}");
    let response: InvokeResponse = serde_json::from_str(&body).unwrap();
    assert_eq!(response.id, "inv-1");
    assert_eq!(
        response.result.unwrap(),
        json!({"echo": {"x": 1}, "calls": 1, "fn": "wd-fn", "color": "blue"})
    );
    assert_eq!(response.logs, "called 1\n");
    assert_eq!(response.metrics.cold_start, Some(false), "started ahead of the first call");

    let (status, body) =
        http(addr, "POST", "/invoke", r#"{"payload": {"sleep": 5}, "timeoutMs": 300}"#).await;
    assert_eq!(status, 200);
    let response: InvokeResponse = serde_json::from_str(&body).unwrap();
    assert_eq!(response.error.unwrap().type_, "TimedOut");
    assert_eq!(http(addr, "GET", "/healthz", "").await.0, 200, "the killed instance is replaced");

    let (status, body) = http(addr, "POST", "/invoke", "{not json").await;
    assert_eq!(status, 400);
    let error: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(error["error"]["code"], json!("BadRequest"));

    // A call in flight when shutdown starts still gets its answer.
    let started = root.join("started");
    let body = json!({"payload": {"sleep": 0.5, "touch": started}}).to_string();
    let in_flight = tokio::spawn(async move { http(addr, "POST", "/invoke", &body).await });
    let running = support::eventually(Duration::from_secs(10), || started.exists()).await;
    assert!(running, "the invocation started");
    stop.send(()).unwrap();
    let (status, body) = in_flight.await.unwrap();
    assert_eq!(status, 200, "{body}");
    let response: InvokeResponse = serde_json::from_str(&body).unwrap();
    assert_eq!(response.metrics.cold_start, Some(false), "warmed again by the health check");
    assert_eq!(response.result.unwrap()["calls"], json!(1), "a new instance after the timeout");
    tokio::time::timeout(Duration::from_secs(10), server).await.unwrap().unwrap().unwrap();
    assert!(TcpStream::connect(addr).await.is_err(), "no longer listening");
}
