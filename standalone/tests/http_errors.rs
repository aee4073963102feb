//! Malformed and refused requests over plain HTTP: every failure is a `Status` object with the
//! code and reason a real API server gives, and nothing a client sends takes the server down.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::Harness;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const FUNCTIONS: &str = "/apis/kubefaas.io/v1alpha1/namespaces/default/functions";

/// Sends one HTTP/1.1 request and returns the status code and the JSON body.
async fn request(
    h: &Harness,
    method: &str,
    path: &str,
    content_type: &str,
    body: &[u8],
) -> (u16, Value) {
    let mut stream = TcpStream::connect(h.addr()).await.unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let text = String::from_utf8_lossy(&response);
    let code = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
    (code, serde_json::from_str(body).unwrap_or(Value::Null))
}

async fn json_request(h: &Harness, method: &str, path: &str, body: Value) -> (u16, Value) {
    request(h, method, path, "application/json", body.to_string().as_bytes()).await
}

fn assert_status(got: &(u16, Value), code: u16, reason: &str) {
    let (status, body) = got;
    assert_eq!(*status, code, "{body}");
    assert_eq!(body["kind"], "Status", "{body}");
    assert_eq!(body["status"], "Failure", "{body}");
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["reason"], reason, "{body}");
}

fn hello() -> Value {
    json!({"apiVersion": "kubefaas.io/v1alpha1", "kind": "Function", "metadata": {"name": "hello"},
        "spec": {"runtime": "python", "handler": "main.handler", "code": {"inline": "x"}}})
}

#[tokio::test]
async fn malformed_requests_get_status_errors_and_the_server_keeps_serving() {
    let h = Harness::start().await;
    h.install_crds().await;
    let not_json = request(&h, "POST", FUNCTIONS, "application/json", b"{nope").await;
    assert_status(&not_json, 400, "BadRequest");
    for body in [json!([1, 2]), json!("text"), json!({"metadata": "x"}), json!({"metadata": [1]})] {
        assert_status(&json_request(&h, "POST", FUNCTIONS, body).await, 400, "BadRequest");
    }
    let wrong_kind = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}});
    assert_status(&json_request(&h, "POST", FUNCTIONS, wrong_kind).await, 400, "BadRequest");
    let binary =
        request(&h, "POST", FUNCTIONS, "application/vnd.kubernetes.protobuf", b"\x00\xff").await;
    assert_status(&binary, 415, "UnsupportedMediaType");
    let nameless =
        json!({"apiVersion": "kubefaas.io/v1alpha1", "kind": "Function", "metadata": {}});
    let invalid = json_request(&h, "POST", FUNCTIONS, nameless).await;
    assert_status(&invalid, 422, "Invalid");
    assert_eq!(invalid.1["details"]["causes"][0]["field"], "metadata.name");

    assert_status(
        &json_request(&h, "GET", "/apis/nope/v1/things", json!({})).await,
        404,
        "NotFound",
    );
    assert_status(&json_request(&h, "PUT", FUNCTIONS, json!({})).await, 405, "MethodNotAllowed");
    let bad_selector = format!("{FUNCTIONS}?labelSelector=a%20in%20b");
    assert_status(&json_request(&h, "GET", &bad_selector, json!({})).await, 400, "BadRequest");
    let bad_continue = format!("{FUNCTIONS}?limit=1&continue=zz");
    assert_status(&json_request(&h, "GET", &bad_continue, json!({})).await, 400, "BadRequest");

    // Patches that would break the object's shape are refused, not stored.
    json_request(&h, "POST", FUNCTIONS, hello()).await;
    let item = format!("{FUNCTIONS}/hello");
    let merge = "application/merge-patch+json";
    let shapes = [r#"{"metadata":"x"}"#, r#"{"metadata":{"name":"other"}}"#, r#"{"spec":"x"}"#];
    for patch in shapes {
        let (code, body) = request(&h, "PATCH", &item, merge, patch.as_bytes()).await;
        assert!(code == 400 || code == 422, "{patch}: {code} {body}");
    }
    let json_patch = r#"[{"op":"replace","path":"","value":"gone"}]"#;
    let (code, _) =
        request(&h, "PATCH", &item, "application/json-patch+json", json_patch.as_bytes()).await;
    assert_eq!(code, 400);
    let apply = request(&h, "PATCH", &item, "application/apply-patch+yaml", b"kind: [").await;
    assert_status(&apply, 400, "BadRequest");
    let (code, body) = json_request(&h, "GET", &item, json!({})).await;
    assert_eq!((code, &body["spec"]["runtime"]), (200, &json!("python")));
}

#[tokio::test]
async fn conflicts_and_preconditions_are_409_with_details() {
    let h = Harness::start().await;
    h.install_crds().await;
    assert_eq!(json_request(&h, "POST", FUNCTIONS, hello()).await.0, 201);
    let exists = json_request(&h, "POST", FUNCTIONS, hello()).await;
    assert_status(&exists, 409, "AlreadyExists");
    assert_eq!(
        exists.1["details"],
        json!({"name": "hello", "group": "kubefaas.io", "kind": "functions"})
    );

    let item = format!("{FUNCTIONS}/hello");
    let mut stale = hello();
    stale["metadata"]["resourceVersion"] = json!("1");
    assert_status(&json_request(&h, "PUT", &item, stale.clone()).await, 409, "Conflict");
    let mut other_uid = hello();
    other_uid["metadata"]["uid"] = json!("someone-else");
    assert_status(&json_request(&h, "PUT", &item, other_uid).await, 409, "Conflict");
    let (apply_path, stale_config) = (format!("{item}?fieldManager=t"), stale.to_string());
    let yaml = "application/apply-patch+yaml";
    let stale_apply = request(&h, "PATCH", &apply_path, yaml, stale_config.as_bytes()).await;
    assert_status(&stale_apply, 409, "Conflict");
    let precondition = json!({"preconditions": {"uid": "not-the-uid"}});
    assert_status(&json_request(&h, "DELETE", &item, precondition).await, 409, "Conflict");
    let mismatch = json_request(&h, "PUT", &format!("{FUNCTIONS}/other"), hello()).await;
    assert_status(&mismatch, 400, "BadRequest");
    let apply = request(&h, "PATCH", &item, "application/apply-patch+yaml", b"{}").await;
    assert_status(&apply, 400, "BadRequest");
}
