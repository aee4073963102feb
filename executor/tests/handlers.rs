//! Handler conventions beyond the conformance table: Lambda-style handlers that run unchanged,
//! handlers that fail to load or build, oversized logs and results.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod support;

use std::sync::Arc;

use kubefaas_executor::{Code, FunctionSpec, Language, TRUNCATION_MARKER, error_types};
use serde_json::json;
use support::{driver, python, request, start, zip_of};

fn node(handler: &str, name: &str, source: &str) -> FunctionSpec {
    let code = Code::File { name: name.to_owned(), contents: source.as_bytes().to_vec() };
    FunctionSpec::new("node-handler", Language::Nodejs, handler, code).unwrap()
}

#[tokio::test]
async fn python_lambda_handler_runs_unchanged() {
    let source = r#"
import json

def lambda_handler(event, context):
    return {
        "statusCode": 200,
        "headers": {"Content-Type": "application/json"},
        "body": json.dumps({"message": "hello " + event["name"], "request": context.aws_request_id}),
    }
"#;
    let code = Code::single_file(Language::Python, "lambda_function.lambda_handler", source.into());
    let spec =
        FunctionSpec::new("lambda-py", Language::Python, "lambda_function.lambda_handler", code)
            .unwrap();
    let mut instance = start(spec).await;
    let req = request(json!({"name": "world"}));
    let value = instance.invoke(&req).await.outcome.unwrap();
    assert_eq!(value["statusCode"], json!(200));
    let body: serde_json::Value = serde_json::from_str(value["body"].as_str().unwrap()).unwrap();
    assert_eq!(body, json!({"message": "hello world", "request": req.id}));
}

#[tokio::test]
async fn node_callback_style_handler_runs_unchanged() {
    let source = r#"
exports.handler = function (event, context, callback) {
  setTimeout(() => callback(null, { greeting: 'hi ' + event.name, fn: context.functionName }), 10);
};
"#;
    let mut instance = start(node("index.handler", "index.js", source)).await;
    let value = instance.invoke(&request(json!({"name": "cb"}))).await.outcome.unwrap();
    assert_eq!(value, json!({"greeting": "hi cb", "fn": "node-handler"}));
}

#[tokio::test]
async fn node_callback_error_is_structured() {
    let source = "exports.handler = (e, c, cb) => cb(new TypeError('bad input'));\n";
    let mut instance = start(node("index.handler", "index.js", source)).await;
    let error = instance.invoke(&request(json!({}))).await.outcome.unwrap_err();
    assert_eq!((error.type_.as_str(), error.message.as_str()), ("TypeError", "bad input"));
}

#[tokio::test]
async fn node_es_module_async_handler_and_rejection() {
    let source = r#"
import { createHash } from 'node:crypto';
export const handler = async (event) => {
  if (event.reject) throw new RangeError('out of range');
  return createHash('sha256').update(event.text).digest('hex').slice(0, 8);
};
"#;
    let code = Code::single_file(Language::Nodejs, "index.handler", source.into());
    assert!(matches!(&code, Code::File { name, .. } if name == "index.mjs"));
    let spec = FunctionSpec::new("esm", Language::Nodejs, "index.handler", code).unwrap();
    let mut instance = start(spec).await;
    let value = instance.invoke(&request(json!({"text": "abc"}))).await.outcome.unwrap();
    assert_eq!(value, json!("ba7816bf"));
    let error = instance.invoke(&request(json!({"reject": true}))).await.outcome.unwrap_err();
    assert_eq!(error.type_, "RangeError");
    assert!(error.stack.unwrap().contains("index.mjs"));
}

#[tokio::test]
async fn handler_that_fails_to_load_is_a_structured_start_failure_with_its_logs() {
    let spec = python("broken", "print('loading...')\nimport does_not_exist\n");
    let failure = driver().start(Arc::new(spec)).await.unwrap().unwrap_err();
    assert_eq!(failure.error.type_, "ModuleNotFoundError");
    assert!(failure.error.message.contains("does_not_exist"), "{:?}", failure.error);
    assert!(failure.error.stack.unwrap().contains("main.py"));
    assert!(failure.logs.text.contains("loading..."));

    let missing = python("no-handler", "def other(event, context):\n    return 1\n");
    let failure = driver().start(Arc::new(missing)).await.unwrap().unwrap_err();
    assert_eq!(failure.error.type_, "AttributeError");

    let node_missing = node("index.handler", "index.js", "exports.other = () => 1;\n");
    let failure = driver().start(Arc::new(node_missing)).await.unwrap().unwrap_err();
    assert_eq!(failure.error.type_, "HandlerNotFound");
}

#[tokio::test]
async fn go_code_that_does_not_compile_is_a_build_failure() {
    let code = Code::File {
        name: "function.go".into(),
        contents: b"package main\n\nfunc Handle() { undefined_call() }\n".to_vec(),
    };
    let spec = FunctionSpec::new("go-broken", Language::Go, "Handle", code).unwrap();
    let failure = driver().start(Arc::new(spec)).await.unwrap().unwrap_err();
    assert_eq!(failure.error.type_, error_types::BUILD_FAILED);
    assert!(failure.error.message.contains("undefined"), "{}", failure.error.message);
}

#[tokio::test]
async fn logs_over_the_limit_are_truncated_and_marked_and_the_next_invocation_is_clean() {
    let source = r#"
import sys
def handler(event, context):
    for i in range(event["lines"]):
        print("line %06d %s" % (i, "x" * 90))
    return event["lines"]
"#;
    let limit = driver().config().log_limit_bytes;
    let mut instance = start(python("noisy", source)).await;
    let noisy = instance.invoke(&request(json!({"lines": 5000}))).await;
    assert_eq!(noisy.outcome.unwrap(), json!(5000));
    assert!(noisy.logs_truncated);
    assert!(noisy.logs.ends_with(TRUNCATION_MARKER));
    assert!(noisy.logs.len() <= limit + TRUNCATION_MARKER.len());
    assert!(noisy.logs.starts_with("line 000000"));
    let quiet = instance.invoke(&request(json!({"lines": 1}))).await;
    assert!(!quiet.logs_truncated);
    assert!(
        quiet.logs.starts_with("line 000000") && quiet.logs.lines().count() == 1,
        "{}",
        quiet.logs
    );
}

#[tokio::test]
async fn result_over_the_size_limit_is_an_error_and_replaces_the_instance() {
    let source = "def handler(event, context):\n    return 'x' * event['size']\n";
    let max = driver().config().max_result_bytes;
    let mut instance = start(python("big-result", source)).await;
    let error =
        instance.invoke(&request(json!({"size": max + 100_000}))).await.outcome.unwrap_err();
    assert_eq!(error.type_, error_types::RESULT_TOO_LARGE);
    assert!(!instance.is_alive());
}

#[tokio::test]
async fn unusable_code_and_handler_names_are_the_functions_fault() {
    let evil = zip_of(&[("../../evil.py", "x = 1")]);
    let spec =
        FunctionSpec::new("zip-slip", Language::Python, "main.handler", Code::Zip(evil)).unwrap();
    let failure = driver().start(Arc::new(spec)).await.unwrap().unwrap_err();
    assert_eq!(failure.error.type_, error_types::INVALID_CODE);
    assert!(failure.error.message.contains("outside the code"), "{}", failure.error.message);

    let garbage = FunctionSpec::new(
        "not-zip",
        Language::Python,
        "main.handler",
        Code::Zip(b"PK\x03\x04junk".to_vec()),
    )
    .unwrap();
    let failure = driver().start(Arc::new(garbage)).await.unwrap().unwrap_err();
    assert_eq!(failure.error.type_, error_types::INVALID_CODE);

    let code = Code::File { name: "function.go".into(), contents: b"package main\n".to_vec() };
    let spec =
        FunctionSpec::new("go-bad-handler", Language::Go, "Handle(); os.Exit", code).unwrap();
    let failure = driver().start(Arc::new(spec)).await.unwrap().unwrap_err();
    assert_eq!(failure.error.type_, error_types::INIT_FAILED);
    assert!(failure.error.message.contains("exported function"), "{}", failure.error.message);
}

#[tokio::test]
async fn node_js_file_in_a_type_module_package_loads_as_an_es_module() {
    let archive = zip_of(&[
        ("package.json", "{\"type\": \"module\"}"),
        (
            "index.js",
            "import { helper } from './helper.js';\nexport const handler = async (e) => helper(e.n);\n",
        ),
        ("helper.js", "export const helper = (n) => n * 2;\n"),
    ]);
    let code = Code::Zip(archive);
    let spec = FunctionSpec::new("esm-package", Language::Nodejs, "index.handler", code).unwrap();
    let mut instance = start(spec).await;
    assert_eq!(instance.invoke(&request(json!({"n": 21}))).await.outcome.unwrap(), json!(42));
}
