//! Measures the gateway on this machine: warm synchronous invoke latency (p50/p90/p99) and
//! asynchronous throughput, against the whole platform started as separate processes (the
//! end-to-end harness) with real PostgreSQL and Redis.
//!
//! ```text
//! cargo build --workspace --bins --examples   # the binaries the harness starts
//! DATABASE_URL=... REDIS_URL=... cargo run -p kubefaas-api-gateway --example gateway_latency [-- N]
//! ```
//!
//! Add `--release` to both commands to measure optimised binaries.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use base64::Engine as _;
use common::platform::Platform;
use serde_json::json;

const ECHO: &str = "def handler(event, context):\n    return event\n";

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let samples: usize = std::env::args().nth(1).and_then(|n| n.parse().ok()).unwrap_or(300);
    let p = Platform::start().await;
    let code = base64::engine::general_purpose::STANDARD.encode(ECHO);
    let body =
        json!({"name": "echo", "runtime": "python", "handler": "main.handler", "code": code});
    p.expect(201, "POST", "/functions", Some(&body)).await;
    let payload = json!({"n": 1});

    // Warm up: the first call starts an instance (cold start), later ones reuse it.
    let cold = Instant::now();
    p.expect(200, "POST", "/functions/echo/invoke", Some(&payload)).await;
    println!("cold sync invoke: {:.1} ms", ms(cold.elapsed()));
    for _ in 0..20 {
        p.expect(200, "POST", "/functions/echo/invoke", Some(&payload)).await;
    }

    let mut latencies = Vec::with_capacity(samples);
    let mut ids = Vec::with_capacity(samples);
    for _ in 0..samples {
        let start = Instant::now();
        let reply = p.call("POST", "/functions/echo/invoke", Some(&payload)).await;
        latencies.push(start.elapsed());
        assert_eq!(reply.status, 200);
        ids.push(reply.header("x-kubefaas-invocation-id").unwrap().to_owned());
    }
    let sync = Percentiles::of(latencies);
    println!("warm sync invoke, sequential, {samples} samples: {sync}");

    // The floor: a plain python HTTP echo server on this machine, no platform, through the same
    // client (one connection per request, as above).
    let (_floor_process, floor) = floor_server().await;
    let body = payload.to_string();
    let mut floor_latencies = Vec::with_capacity(samples);
    for _ in 0..samples {
        let start = Instant::now();
        let reply = common::request(floor, "POST", "/", &[], Some(body.as_bytes())).await;
        floor_latencies.push(start.elapsed());
        assert_eq!(reply.status, 200);
    }
    let floor_sync = Percentiles::of(floor_latencies);
    println!("floor (python echo server), sequential: {floor_sync}");
    println!(
        "  ratio: p50 {:.1}x, p99 {:.1}x the floor (targets: p50 <= 1 ms, p99 <= 3 ms)",
        sync.p50 / floor_sync.p50,
        sync.p99 / floor_sync.p99
    );

    // Throughput at 8 connections, the gateway's sync path against the floor.
    let p = std::sync::Arc::new(p);
    let gateway_rate = {
        let p = std::sync::Arc::clone(&p);
        rate(samples, move || {
            let p = std::sync::Arc::clone(&p);
            async move {
                assert_eq!(
                    p.call("POST", "/functions/echo/invoke", Some(&json!({"n": 1}))).await.status,
                    200
                )
            }
        })
        .await
    };
    let floor_rate = rate(samples, move || async move {
        let reply = common::request(floor, "POST", "/", &[], Some(b"{\"n\": 1}")).await;
        assert_eq!(reply.status, 200);
    })
    .await;
    println!(
        "sync throughput at 8 connections: {gateway_rate:.0}/s; floor {floor_rate:.0}/s; {:.0} % of the floor (target >= 50 %)",
        100.0 * gateway_rate / floor_rate
    );

    // Where the time goes, from the rows' timestamps (medians over the samples).
    let (mut queued, mut running, mut handler) = (Vec::new(), Vec::new(), Vec::new());
    for id in ids.iter().take(100) {
        let row = p.expect(200, "GET", &format!("/invocations/{id}"), None).await;
        let at = |field: &str| {
            chrono::DateTime::parse_from_rfc3339(row[field].as_str().unwrap()).unwrap()
        };
        queued.push((at("started_at") - at("created_at")).num_microseconds().unwrap());
        running.push((at("completed_at") - at("started_at")).num_microseconds().unwrap());
        handler.push(row["metrics"]["duration_ms"].as_i64().unwrap_or_default() * 1000);
    }
    for list in [&mut queued, &mut running, &mut handler] {
        list.sort_unstable();
    }
    println!(
        "  median: row created -> claimed by the executor {:.2} ms, claimed -> committed {:.2} ms (handler {:.0} ms)",
        queued[queued.len() / 2] as f64 / 1000.0,
        running[running.len() / 2] as f64 / 1000.0,
        handler[handler.len() / 2] as f64 / 1000.0
    );

    // Asynchronous: submit from 8 clients at once, then wait until every one has succeeded.
    let jobs = samples;
    let start = Instant::now();
    let mut clients = Vec::new();
    for client in 0..8 {
        let p = std::sync::Arc::clone(&p);
        clients.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in (client..jobs).step_by(8) {
                let body = json!({"function": "echo", "payload": {"i": i}});
                let accepted = p.expect(202, "POST", "/invoke", Some(&body)).await;
                ids.push(accepted["invocation_id"].as_str().unwrap().to_owned());
            }
            ids
        }));
    }
    let mut ids = Vec::with_capacity(jobs);
    for client in clients {
        ids.extend(client.await.unwrap());
    }
    let submitted = start.elapsed();
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let done = p.expect(200, "GET", "/invocations?status=succeeded&limit=1000", None).await;
        let finished = done["invocations"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["source"] == "async")
            .count();
        if finished >= jobs || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let total = start.elapsed();
    println!(
        "async: {jobs} invocations accepted in {:.2} s ({:.0}/s), all succeeded after {:.2} s ({:.1}/s end to end; target >= 3000/s)",
        submitted.as_secs_f64(),
        jobs as f64 / submitted.as_secs_f64(),
        total.as_secs_f64(),
        jobs as f64 / total.as_secs_f64()
    );
    assert_eq!(ids.len(), jobs);
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// p50, p90, p99 and max of a sample, in ms.
struct Percentiles {
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
}

impl Percentiles {
    fn of(mut sample: Vec<Duration>) -> Self {
        sample.sort();
        let at = |q: f64| ms(sample[((sample.len() as f64 * q) as usize).min(sample.len() - 1)]);
        Self { p50: at(0.50), p90: at(0.90), p99: at(0.99), max: ms(sample[sample.len() - 1]) }
    }
}

impl std::fmt::Display for Percentiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            self.p50, self.p90, self.p99, self.max
        )
    }
}

/// Requests per second of `total` calls of `call` from 8 concurrent clients.
async fn rate<F, Fut>(total: usize, call: F) -> f64
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let start = Instant::now();
    let mut clients = Vec::new();
    for client in 0..8 {
        let call = call.clone();
        clients.push(tokio::spawn(async move {
            for _ in (client..total).step_by(8) {
                call().await;
            }
        }));
    }
    for client in clients {
        client.await.unwrap();
    }
    total as f64 / start.elapsed().as_secs_f64()
}

/// A plain python HTTP echo server (the standard library's, one process, a thread per
/// connection): the floor the gateway is measured against.
async fn floor_server() -> (tokio::process::Child, std::net::SocketAddr) {
    use tokio::io::AsyncBufReadExt;
    const SERVER: &str = "import http.server\n\
class Echo(http.server.BaseHTTPRequestHandler):\n\
\x20   def do_POST(self):\n\
\x20       body = self.rfile.read(int(self.headers.get('Content-Length', 0)))\n\
\x20       self.send_response(200)\n\
\x20       self.send_header('Content-Type', 'application/json')\n\
\x20       self.send_header('Content-Length', str(len(body)))\n\
\x20       self.end_headers()\n\
\x20       self.wfile.write(body)\n\
\x20   def log_message(self, *args):\n\
\x20       pass\n\
server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Echo)\n\
print(server.server_address[1], flush=True)\n\
server.serve_forever()\n";
    let mut child = tokio::process::Command::new("python3")
        .args(["-c", SERVER])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 runs");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let port: u16 =
        lines.next_line().await.unwrap().expect("the floor server's port").parse().unwrap();
    (child, std::net::SocketAddr::from(([127, 0, 0, 1], port)))
}
