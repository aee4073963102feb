//! End to end with the real binaries as separate processes: `kubefaas-apiserver`,
//! `kubefaas-operator`, `kubefaas-executor` (local backend) and `kubefaas-api-gateway` (token
//! authentication on) against real PostgreSQL and Redis, driven only through the REST API with
//! the earlier design's JSON.
//!
//! Needs `DATABASE_URL`, `REDIS_URL` (`make test` provides both) and the workspace's binaries
//! built (`cargo nextest run --workspace` / `cargo test --workspace` build them).

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use base64::Engine as _;
use common::platform::Platform;
use serde_json::json;

fn b64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

const PYTHON: &str = "def handler(event, context):\n    name = (event or {}).get('name', 'world')\n    print(f'greeting {name}')\n    return {'message': 'Hello, ' + name + '!'}\n";
const NODE: &str = "exports.handler = async (event) => ({ message: `Hello, ${(event && event.name) || 'world'}!` });\n";
const GO: &str = "package main\n\nimport (\n\t\"context\"\n\t\"encoding/json\"\n)\n\nfunc Handle(ctx context.Context, event json.RawMessage) (any, error) {\n\tvar in struct{ Name string `json:\"name\"` }\n\t_ = json.Unmarshal(event, &in)\n\treturn map[string]string{\"message\": \"Hello, \" + in.Name + \"!\"}, nil\n}\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn functions_in_every_runtime_are_managed_and_invoked_through_the_rest_api() {
    let p = Platform::start().await;

    // Create one function per runtime, with the earlier design's fields.
    let hello = p
        .expect(
            201,
            "POST",
            "/functions",
            Some(&json!({
                "name": "hello", "version": "1.2.0", "runtime": "python", "handler": "main.handler",
                "code": b64(PYTHON), "timeout": 20, "memory_mb": 128,
                "environment": {"GREETING": "hi"}, "max_concurrency": 4, "metadata": {"team": "a"},
            })),
        )
        .await;
    assert_eq!(hello["name"], "hello");
    assert_eq!(hello["version"], "1.2.0");
    assert_eq!(hello["status"], "ready");
    assert_eq!(hello["code"]["source_type"], "inline");
    assert_eq!(hello["code"]["checksum"].as_str().unwrap().len(), 64);
    assert_eq!(hello["code"]["size"], PYTHON.len());
    assert_eq!(
        hello["config"],
        json!({"timeout": 20, "memory_mb": 128, "environment": {"GREETING": "hi"}, "max_concurrency": 4})
    );
    assert_eq!(hello["metadata"], json!({"team": "a"}));
    assert!(hello["created_at"].is_string() && hello["updated_at"].is_string());
    let hello_id = hello["id"].as_str().unwrap().to_owned();
    let again = json!({"name": "hello", "runtime": "python", "handler": "main.handler", "code": b64(PYTHON)});
    p.expect(409, "POST", "/functions", Some(&again)).await;
    let node = p
        .expect(201, "POST", "/functions", Some(&json!({
            "name": "hello-node", "runtime": "nodejs", "handler": "index.handler", "code": b64(NODE),
        })))
        .await;
    p.expect(201, "POST", "/functions", Some(&json!({
        "name": "hello-go", "runtime": "go", "handler": "Handle", "code": b64(GO), "memory_mb": 256, "timeout": 60,
    })))
    .await;

    // Synchronous: the result is the body, the invocation id a header, the row readable.
    for (function, name) in [("hello", "py"), ("hello-node", "node"), ("hello-go", "gopher")] {
        let reply = p
            .call("POST", &format!("/functions/{function}/invoke"), Some(&json!({"name": name})))
            .await;
        let id = reply.header("x-kubefaas-invocation-id").unwrap().to_owned();
        if function == "hello-go" && reply.status == 504 {
            // The first go call builds its code; on a cold build cache that can outlast the
            // gateway's deadline, which then answers 504 with the id, and the call goes on.
            assert_eq!(reply.json()["error"]["code"], "timeout");
            let done = p.finished(&id).await;
            assert_eq!(done["result"], json!({"message": format!("Hello, {name}!")}), "{done}");
        } else {
            assert_eq!(
                reply.status,
                200,
                "{function}: {:?}\n{}",
                String::from_utf8_lossy(&reply.body),
                p.logs()
            );
            assert_eq!(reply.json(), json!({"message": format!("Hello, {name}!")}));
        }
        let row = p.expect(200, "GET", &format!("/invocations/{id}"), None).await;
        assert_eq!(
            (row["status"].as_str(), row["source"].as_str()),
            (Some("succeeded"), Some("sync"))
        );
        assert_eq!(row["function"], function);
    }

    // Asynchronous, by name and by id: 202, then the result appears; logs come back.
    let accepted = p
        .expect(
            202,
            "POST",
            "/invoke",
            Some(&json!({"function": "hello", "payload": {"name": "async"}})),
        )
        .await;
    assert_eq!(accepted["status"], "pending");
    let id = accepted["invocation_id"].as_str().unwrap().to_owned();
    let done = p.finished(&id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["result"], json!({"message": "Hello, async!"}));
    assert_eq!(done["source"], "async");
    assert!(done["metrics"]["duration_ms"].is_number(), "{done}");
    let logs = p.expect(200, "GET", &format!("/invocations/{id}/logs"), None).await;
    assert!(logs["logs"].as_str().unwrap().contains("greeting async"), "{logs}");
    let by_id = p
        .expect(
            202,
            "POST",
            "/invoke",
            Some(&json!({"function_id": node["id"], "payload": {"name": "n"}})),
        )
        .await;
    let done = p.finished(by_id["invocation_id"].as_str().unwrap()).await;
    assert_eq!(done["result"], json!({"message": "Hello, n!"}), "{done}");

    // A raising function and a slow one map to their documented statuses.
    let raiser = "def handler(event, context):\n    raise ValueError('bad value')\n";
    p.expect(
        201,
        "POST",
        "/functions",
        Some(&json!({
            "name": "raiser", "runtime": "python", "handler": "main.handler", "code": b64(raiser),
        })),
    )
    .await;
    let failed = p.call("POST", "/functions/raiser/invoke", Some(&json!({}))).await;
    let error = failed.error(500, "function_error");
    assert_eq!(error["type"], "ValueError");
    assert!(error["stack"].as_str().unwrap().contains("main.py"), "{error}");
    assert!(failed.header("x-kubefaas-invocation-id").is_some());
    let sleeper = "import time\ndef handler(event, context):\n    time.sleep(30)\n";
    p.expect(201, "POST", "/functions", Some(&json!({
        "name": "sleeper", "runtime": "python", "handler": "main.handler", "code": b64(sleeper), "timeout": 1,
    })))
    .await;
    let slow = p.call("POST", "/functions/sleeper/invoke", None).await;
    assert_eq!(slow.error(504, "function_timeout")["type"], "TimedOut");

    // Lists: filters and pagination.
    let all = p.expect(200, "GET", "/functions", None).await;
    assert_eq!(all["functions"].as_array().unwrap().len(), 5);
    let nodes = p.expect(200, "GET", "/functions?runtime=nodejs", None).await;
    assert_eq!(nodes["functions"].as_array().unwrap().len(), 1);
    let first = p.expect(200, "GET", "/functions?limit=2&offset=0", None).await;
    let rest = p.expect(200, "GET", "/functions?limit=10&offset=2", None).await;
    assert_eq!(first["functions"].as_array().unwrap().len(), 2);
    assert_eq!(rest["functions"].as_array().unwrap().len(), 3);
    assert_ne!(first["functions"][0]["id"], rest["functions"][0]["id"]);
    let mine = p
        .expect(200, "GET", &format!("/invocations?function_id={hello_id}&status=succeeded"), None)
        .await;
    assert_eq!(mine["invocations"].as_array().unwrap().len(), 2, "{mine}");
    let one = p.expect(200, "GET", "/invocations?limit=1", None).await;
    assert_eq!(one["invocations"].as_array().unwrap().len(), 1);
    let failures = p.expect(200, "GET", "/invocations?status=failed", None).await;
    assert_eq!(failures["invocations"][0]["function"], "raiser");
    assert_eq!(
        p.expect(200, "GET", &format!("/functions/{hello_id}"), None).await["name"],
        "hello",
        "found by id as by name"
    );

    // Updating the code changes behaviour.
    let bonjour =
        "def handler(event, context):\n    return {'message': 'Bonjour, ' + event['name'] + '!'}\n";
    let updated =
        p.expect(200, "PUT", "/functions/hello", Some(&json!({"code": b64(bonjour)}))).await;
    assert_eq!(updated["id"], hello_id.as_str());
    assert_eq!(updated["config"]["timeout"], 20, "absent fields keep their values");
    let reply = p.call("POST", "/functions/hello/invoke", Some(&json!({"name": "vous"}))).await;
    assert_eq!(reply.json(), json!({"message": "Bonjour, vous!"}));

    // Deleting: reads and invokes get 404; the history stays.
    p.expect(204, "DELETE", "/functions/hello", None).await;
    p.call("GET", "/functions/hello", None).await.error(404, "not_found");
    p.call("POST", "/functions/hello/invoke", Some(&json!({}))).await.error(404, "not_found");
    p.call("POST", "/invoke", Some(&json!({"function": "hello"}))).await.error(404, "not_found");
    p.expect(200, "GET", &format!("/invocations/{id}"), None).await;
}
