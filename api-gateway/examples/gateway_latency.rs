//! Measures the gateway on this machine: warm synchronous invoke latency (p50/p90/p99) at one
//! connection, sync throughput at 8, and sustained asynchronous throughput end to end, against
//! the whole platform started as separate processes (the end-to-end harness) with real
//! PostgreSQL and Redis. Each figure is printed beside a plain python HTTP echo server's on the
//! same machine in the same run. `BENCH_ASYNC_SECONDS` (30) sets how long async load lasts.
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
use kubefaas_core::store::{InvocationQuery, InvocationRow, Source, Status, Store, StoreConfig};
use serde_json::json;
use uuid::Uuid;

const ECHO: &str = "def handler(event, context):\n    return event\n";

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let samples: usize = std::env::args().nth(1).and_then(|n| n.parse().ok()).unwrap_or(300);
    let async_seconds: u64 =
        std::env::var("BENCH_ASYNC_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(30);
    let p = Platform::start().await;
    let code = base64::engine::general_purpose::STANDARD.encode(ECHO);
    let body =
        json!({"name": "echo", "runtime": "python", "handler": "main.handler", "code": code});
    let created = p.expect(201, "POST", "/functions", Some(&body)).await;
    let function_id: Uuid = created["id"].as_str().unwrap().parse().unwrap();
    let gateway = Client::new(p.gateway, &p.token);
    let payload = br#"{"n": 1}"#;

    // Warm up: the first call starts an instance (cold start), later ones reuse it.
    let cold = Instant::now();
    assert_eq!(gateway.post("/functions/echo/invoke", payload).await.0, 200);
    println!("cold sync invoke: {:.1} ms", ms(cold.elapsed()));
    for _ in 0..50 {
        assert_eq!(gateway.post("/functions/echo/invoke", payload).await.0, 200);
    }

    // One client, one kept-alive connection, one request at a time: latency.
    let mut latencies = Vec::with_capacity(samples);
    let mut ids = Vec::with_capacity(samples);
    for _ in 0..samples {
        let start = Instant::now();
        let (status, id) = gateway.post("/functions/echo/invoke", payload).await;
        latencies.push(start.elapsed());
        assert_eq!(status, 200);
        ids.push(id.unwrap());
    }
    let sync = Percentiles::of(latencies);
    println!("warm sync invoke, one connection, {samples} samples: {sync}");

    // The floor: a plain python HTTP echo server on this machine, no platform, through the same
    // client in the same way.
    let (_floor_process, floor_addr) = floor_server().await;
    let floor = Client::new(floor_addr, "");
    let mut floor_latencies = Vec::with_capacity(samples);
    for _ in 0..samples {
        let start = Instant::now();
        assert_eq!(floor.post("/", payload).await.0, 200);
        floor_latencies.push(start.elapsed());
    }
    let floor_sync = Percentiles::of(floor_latencies);
    println!("floor (python echo server), one connection: {floor_sync}");
    println!(
        "  ratio: p50 {:.1}x, p99 {:.1}x the floor (targets: p50 <= 1 ms, p99 <= 3 ms)",
        sync.p50 / floor_sync.p50,
        sync.p99 / floor_sync.p99
    );

    // Throughput at 8 connections, the gateway's sync path against the floor. A first round
    // starts the instances 8 concurrent calls need (cold starts, reported above), so the
    // measured round sees the warm platform.
    rate(samples, gateway.clone(), "/functions/echo/invoke").await;
    let gateway_rate = rate(samples, gateway.clone(), "/functions/echo/invoke").await;
    let floor_rate = rate(samples, floor.clone(), "/").await;
    println!(
        "sync throughput at 8 connections: {gateway_rate:.0}/s; floor {floor_rate:.0}/s; {:.0} % of the floor (target >= 50 %)",
        100.0 * gateway_rate / floor_rate
    );

    // Where the time goes, from the rows' timestamps (medians over the samples). Synchronous
    // calls' rows are written behind their answers: wait for each, within a bound.
    let store = Store::connect(&StoreConfig::new(p.database_url.clone())).await.unwrap();
    let (mut queued, mut running, mut handler) = (Vec::new(), Vec::new(), Vec::new());
    for id in ids.iter().take(200) {
        let id: Uuid = id.parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let row = loop {
            if let Some(row) = store.invocation(id).await.unwrap() {
                break row;
            }
            assert!(Instant::now() < deadline, "the row of {id} was never written");
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let (created, started, completed) =
            (row.created_at, row.started_at.unwrap(), row.completed_at.unwrap());
        queued.push((started - created).num_microseconds().unwrap());
        running.push((completed - started).num_microseconds().unwrap());
        handler.push(row.metrics.and_then(|m| m.duration_ms).unwrap_or_default());
    }
    println!(
        "  median: row created -> claimed by the executor {:.2} ms, claimed -> committed {:.2} ms (handler {} ms)",
        median(&mut queued) as f64 / 1000.0,
        median(&mut running) as f64 / 1000.0,
        median(&mut handler)
    );

    // Asynchronous, sustained: 8 clients submit for `async_seconds` (a 429 for a full backlog
    // is waited out as its Retry-After says), then every accepted invocation must succeed.
    let cpu_before = cpu_by_process();
    let start = Instant::now();
    let until = start + Duration::from_secs(async_seconds);
    let mut clients = Vec::new();
    for client in 0..8 {
        let gateway = gateway.clone();
        clients.push(tokio::spawn(async move {
            let (mut accepted, mut refused) = (Vec::new(), 0_usize);
            let mut i = client;
            while Instant::now() < until {
                let body = format!(r#"{{"function": "echo", "payload": {{"i": {i}}}}}"#);
                let sent = Instant::now();
                match gateway.post("/invoke", body.as_bytes()).await.0 {
                    202 => accepted.push(sent.elapsed()),
                    429 | 503 => {
                        refused += 1;
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    other => panic!("POST /invoke answered {other}"),
                }
                i += 8;
            }
            (accepted, refused)
        }));
    }
    let (mut answers, mut refused) = (Vec::new(), 0);
    for client in clients {
        let (a, r) = client.await.unwrap();
        answers.extend(a);
        refused += r;
    }
    let accepted = answers.len();
    let submitted = start.elapsed();
    let deadline = Instant::now() + Duration::from_secs(900);
    while store.backlog(function_id).await.unwrap() > 0 {
        assert!(Instant::now() < deadline, "the async invocations did not finish");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let total = start.elapsed();
    let cpu = cpu_by_process().into_iter().map(|(name, ticks)| {
        (name.clone(), ticks.saturating_sub(cpu_before.get(&name).copied().unwrap_or(0)))
    });
    let succeeded = rows(&store, function_id, Status::Succeeded).await;
    let sync_rows = samples * 3 + 51;
    println!(
        "async, sustained {async_seconds} s from 8 clients: {accepted} accepted ({:.0}/s, {refused} times 429/503), all finished after {:.1} s: {:.0}/s end to end; floor {floor_rate:.0}/s, {:.2}x (target >= 3000/s)",
        accepted as f64 / submitted.as_secs_f64(),
        total.as_secs_f64(),
        accepted as f64 / total.as_secs_f64(),
        accepted as f64 / total.as_secs_f64() / floor_rate,
    );
    println!("  POST /invoke answered 202 in {}", Percentiles::of(answers));
    let (mut to_claim, mut to_commit) = (Vec::new(), Vec::new());
    for row in succeeded.iter().filter(|row| row.source == Source::Async) {
        let (Some(started), Some(completed)) = (row.started_at, row.completed_at) else { continue };
        to_claim.push((started - row.created_at).to_std().unwrap_or_default());
        to_commit.push((completed - started).to_std().unwrap_or_default());
    }
    println!("  row created -> claimed by the executor: {}", Percentiles::of(to_claim));
    println!("  claimed -> committed: {}", Percentiles::of(to_commit));
    // CPU time spent during the async phase, by process name, per accepted invocation.
    let ticks_per_second = 100.0; // USER_HZ on Linux
    let mut spent: Vec<(String, u64)> = cpu.filter(|(_, ticks)| *ticks > 0).collect();
    spent.sort_by_key(|(_, ticks)| std::cmp::Reverse(*ticks));
    let per_call = |ticks: u64| ticks as f64 / ticks_per_second * 1e6 / accepted as f64;
    let spent: Vec<String> =
        spent.iter().take(8).map(|(name, t)| format!("{name} {:.0} µs", per_call(*t))).collect();
    println!("  CPU per accepted invocation by process: {}", spent.join(", "));
    assert_eq!(
        succeeded.len(),
        accepted + sync_rows,
        "every accepted invocation succeeded, none lost"
    );
}

/// CPU time (user and system, in clock ticks) of every process on the machine, summed by
/// process name.
fn cpu_by_process() -> std::collections::HashMap<String, u64> {
    let mut by_name = std::collections::HashMap::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // `pid (name) state ppid ...`: the name may hold spaces, so split at its parentheses.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { continue };
        let name = stat[open + 1..close].to_owned();
        let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
        // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
        let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
        *by_name.entry(name).or_insert(0) += ticks(11) + ticks(12);
    }
    by_name
}

/// A client of one address with a pool of kept-alive connections.
#[derive(Clone)]
struct Client {
    http: reqwest::Client,
    base: String,
    bearer: String,
}

impl Client {
    fn new(addr: std::net::SocketAddr, token: &str) -> Self {
        let http =
            kubefaas_core::http::client_builder().pool_max_idle_per_host(64).build().unwrap();
        Self { http, base: format!("http://{addr}"), bearer: format!("Bearer {token}") }
    }

    /// POSTs a JSON body; the status and the invocation id header.
    async fn post(&self, path: &str, body: &[u8]) -> (u16, Option<String>) {
        let reply = self
            .http
            .post(format!("{}{path}", self.base))
            .header("authorization", &self.bearer)
            .header("content-type", "application/json")
            .body(body.to_vec())
            .send()
            .await
            .unwrap();
        let status = reply.status().as_u16();
        let id = reply
            .headers()
            .get("x-kubefaas-invocation-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let _ = reply.bytes().await.unwrap();
        (status, id)
    }
}

/// The function's invocations that ended with `status`.
async fn rows(store: &Store, function_id: Uuid, status: Status) -> Vec<InvocationRow> {
    let (mut all, page) = (Vec::new(), 1000);
    loop {
        let query = InvocationQuery {
            function_id: Some(function_id),
            status: Some(status),
            limit: Some(page),
            offset: Some(i64::try_from(all.len()).unwrap()),
            ..InvocationQuery::default()
        };
        let rows = store.list_invocations(&query).await.unwrap();
        let last = rows.len() < usize::try_from(page).unwrap();
        all.extend(rows);
        if last {
            return all;
        }
    }
}

fn median(values: &mut [i64]) -> i64 {
    values.sort_unstable();
    values[values.len() / 2]
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

/// Requests per second of `total` POSTs of `path` from 8 concurrent clients.
async fn rate(total: usize, client: Client, path: &'static str) -> f64 {
    let start = Instant::now();
    let mut clients = Vec::new();
    for first in 0..8 {
        let client = client.clone();
        clients.push(tokio::spawn(async move {
            for _ in (first..total).step_by(8) {
                assert_eq!(client.post(path, br#"{"n": 1}"#).await.0, 200);
            }
        }));
    }
    for client in clients {
        client.await.unwrap();
    }
    total as f64 / start.elapsed().as_secs_f64()
}

/// A plain python HTTP echo server (the standard library's, one process, a thread per
/// connection, HTTP/1.1 keep-alive, each response written in one piece with Nagle off so no
/// delayed ACK stalls it): the floor the gateway is measured against.
async fn floor_server() -> (tokio::process::Child, std::net::SocketAddr) {
    use tokio::io::AsyncBufReadExt;
    const SERVER: &str = "import http.server\n\
class Echo(http.server.BaseHTTPRequestHandler):\n\
\x20   protocol_version = 'HTTP/1.1'\n\
\x20   disable_nagle_algorithm = True\n\
\x20   wbufsize = 65536\n\
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
