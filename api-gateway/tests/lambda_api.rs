//! AWS's own SDK against the gateway's Lambda Invoke API: boto3 (from the virtualenv `make deps`
//! makes, `KUBEFAAS_TEST_AWS_PYTHON`) pointed at a gateway of the real binaries, authenticating
//! with a kubefaas token as its session token. `tests/aws/invoke.py` makes the calls a user
//! would and prints what boto3 returned; this test checks it.
//!
//! Needs `DATABASE_URL`, `REDIS_URL` (`make test` provides both), the workspace's binaries built
//! and `KUBEFAAS_TEST_AWS_PYTHON`.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use base64::Engine as _;
use common::{env, platform::Platform};
use serde_json::{Value, json};

const ECHO: &str = "def handler(event, context):\n    print('echoing for', context.function_name)\n    return {'event': event, 'arn': context.invoked_function_arn}\n";
const RAISES: &str = "def handler(event, context):\n    raise ValueError('no good')\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boto3_invokes_functions_through_the_lambda_invoke_api() {
    let p = Platform::start().await;
    for (name, code) in [("echo", ECHO), ("raises", RAISES)] {
        let code = base64::engine::general_purpose::STANDARD.encode(code);
        let function =
            json!({"name": name, "runtime": "python", "handler": "main.handler", "code": code});
        p.expect(201, "POST", "/functions", Some(&function)).await;
    }

    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/aws/invoke.py");
    let run = tokio::process::Command::new(env("KUBEFAAS_TEST_AWS_PYTHON"))
        .arg(&script)
        .arg(format!("http://{}", p.gateway))
        .arg(&p.token)
        .kill_on_drop(true)
        .output();
    let ran = tokio::time::timeout(common::PATIENCE, run).await.expect("boto3 finished").unwrap();
    assert!(ran.status.success(), "{}\n{}", String::from_utf8_lossy(&ran.stderr), p.logs());
    let out: Value = serde_json::from_slice(&ran.stdout).unwrap();

    // RequestResponse: the handler's result, its logs' tail, the invocation's id.
    let ok = &out["ok"];
    assert_eq!(ok["status"], 200, "{out}");
    assert_eq!(ok["payload"]["event"], json!({"name": "boto"}));
    assert_eq!(ok["payload"]["arn"], "arn:aws:lambda:us-east-1:000000000000:function:echo");
    assert_eq!(ok["function_error"], Value::Null);
    assert_eq!(ok["version"], "$LATEST");
    assert!(ok["log"].as_str().unwrap().contains("echoing for echo"), "{out}");
    let id = ok["request_id"].as_str().unwrap();
    let recorded = p.expect(200, "GET", &format!("/invocations/{id}"), None).await;
    assert_eq!(recorded["status"], "succeeded");

    // By ARN and qualifier; no payload is {}.
    assert_eq!(out["by_arn"]["event"], json!({}), "{out}");

    // A function error is a 200 with FunctionError and Lambda's error document.
    let failed = &out["failed"];
    assert_eq!(failed["status"], 200, "{out}");
    assert_eq!(failed["function_error"], "Unhandled");
    assert_eq!(failed["payload"]["errorType"], "ValueError");
    assert_eq!(failed["payload"]["errorMessage"], "no good");
    assert!(failed["payload"]["stackTrace"].as_array().is_some_and(|s| !s.is_empty()), "{out}");

    // Event: accepted, and it runs to the end.
    assert_eq!(out["event"]["status"], 202, "{out}");
    let later = p.finished(out["event"]["request_id"].as_str().unwrap()).await;
    assert_eq!(later["status"], "succeeded");
    assert_eq!(later["result"]["event"], json!({"name": "later"}));

    assert_eq!(out["dry_run"], 204, "{out}");

    // Errors reach boto3 as Lambda's exceptions.
    let error = |key: &str| (out[key]["code"].clone(), out[key]["status"].clone());
    assert_eq!(error("missing"), (json!("ResourceNotFoundException"), json!(404)), "{out}");
    assert_eq!(error("bad_json"), (json!("InvalidRequestContentException"), json!(400)), "{out}");
    assert_eq!(error("bad_token"), (json!("UnrecognizedClientException"), json!(403)), "{out}");
    assert_eq!(error("bad_version"), (json!("ResourceNotFoundException"), json!(404)), "{out}");
}
