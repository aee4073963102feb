//! Test harness: real PostgreSQL (a schema per test) and Redis (a key prefix per test) from
//! `DATABASE_URL`/`REDIS_URL`, and a minimal HTTP/1.1 client so the tests need no HTTP client
//! dependency.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub(crate) mod platform;

use std::{net::SocketAddr, time::Duration};

use serde_json::Value;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use uuid::Uuid;

/// Bound on any wait, so a broken pipeline fails instead of hanging.
pub(crate) const PATIENCE: Duration = Duration::from_secs(90);

/// A required environment variable; these tests never skip.
pub(crate) fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: these tests need real PostgreSQL and Redis (run `make test`)")
    })
}

/// A fresh schema; returns the database URL that selects it.
pub(crate) async fn fresh_database() -> String {
    let schema = format!("gw_{}", Uuid::new_v4().simple());
    kubefaas_core::store::create_schema(&env("DATABASE_URL"), &schema).await.unwrap()
}

/// A response: status, headers (lower-case names) and body.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

impl Reply {
    /// The body as JSON (panics with the body when it is not).
    pub(crate) fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!("{e}: status {} body {:?}", self.status, String::from_utf8_lossy(&self.body))
        })
    }

    /// A header's value.
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// Asserts the API's error shape with this status and code; returns the error object.
    pub(crate) fn error(&self, status: u16, code: &str) -> Value {
        let body = self.json();
        assert_eq!(self.status, status, "{body}");
        assert_eq!(body["error"]["code"], code, "{body}");
        assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
        body["error"].clone()
    }
}

/// One request with `Connection: close`; `headers` are extra `(name, value)` pairs.
pub(crate) async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Reply {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(body) = body {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(head.as_bytes()).await.unwrap();
        if let Some(body) = body {
            // The server may answer (413) and close before reading everything.
            let _ = stream.write_all(body).await;
        }
        let mut raw = Vec::new();
        let _ = stream.read_to_end(&mut raw).await;
        raw
    };
    let raw = tokio::time::timeout(PATIENCE, exchange).await.expect("the gateway answers");
    parse(&raw)
}

fn parse(raw: &[u8]) -> Reply {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a complete response head");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let body = raw[split + 4..].to_vec();
    Reply { status, headers, body }
}

/// A JSON request.
pub(crate) async fn json(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &Value,
) -> Reply {
    let mut all = vec![("Content-Type", "application/json")];
    all.extend_from_slice(headers);
    request(addr, method, path, &all, Some(body.to_string().as_bytes())).await
}
