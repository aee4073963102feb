//! Handler conventions beyond the conformance table: Lambda-style handlers that run unchanged,
//! handlers that fail to load or build, oversized logs and results.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use kubefaas_executor::{
    ACCOUNT_ID, Code, DEFAULT_REGION, FunctionSpec, Invocation, Language, Request,
    TRUNCATION_MARKER, error_types,
};
use serde_json::{Value, json};
use support::{driver, python, request, start, zip_of};

fn node(handler: &str, name: &str, source: &str) -> FunctionSpec {
    let code = Code::File { name: name.to_owned(), contents: source.as_bytes().to_vec() };
    FunctionSpec::new("node-handler", Language::Nodejs, handler, code).unwrap()
}

fn ok(invocation: Invocation) -> Value {
    match invocation.outcome {
        Ok(value) => value,
        Err(e) => panic!("invocation failed: {e:?}\nlogs:\n{}", invocation.logs),
    }
}

/// The ARN AWS would show for function `name` in `region`, checked part by part.
fn assert_arn(arn: &Value, region: &str, name: &str) {
    let parts: Vec<&str> = arn.as_str().expect("ARN is a string").split(':').collect();
    assert_eq!(parts, ["arn", "aws", "lambda", region, ACCOUNT_ID, "function", name], "{arn}");
    assert!(ACCOUNT_ID.len() == 12 && ACCOUNT_ID.bytes().all(|b| b.is_ascii_digit()));
}

/// The remaining times a handler read: below the timeout, and falling between the reads.
fn assert_counts_down(first: &Value, second: &Value, timeout: Duration) {
    let (first, second) = (first.as_i64().unwrap(), second.as_i64().unwrap());
    let timeout = timeout.as_millis() as i64;
    assert!(first < timeout && first > timeout - 5_000, "first read {first} of {timeout}");
    assert!(second < first, "the deadline must come closer: {first} then {second}");
}

const PYTHON_CONTEXT: &str = r#"
import os
import time

def handler(event, context):
    first = context.get_remaining_time_in_millis()
    # Spin until the clock moves on: the second read must be smaller.
    while context.get_remaining_time_in_millis() == first:
        pass
    second = context.get_remaining_time_in_millis()
    return {
        "arn": context.invoked_function_arn,
        "remaining": [first, second],
        "str": str(context),
        "repr": repr(context),
        "function_name": context.function_name,
        "function_version": context.function_version,
        "memory_limit_in_mb": context.memory_limit_in_mb,
        "memory_type": type(context.memory_limit_in_mb).__name__,
        "aws_request_id": context.aws_request_id,
        "log_group_name": context.log_group_name,
        "log_stream_name": context.log_stream_name,
        "identity": [context.identity.cognito_identity_id, context.identity.cognito_identity_pool_id],
        "client_context": context.client_context,
        "env": {k: v for k, v in os.environ.items()},
        "cwd": os.getcwd(),
        "zone": time.strftime("%Z"),
        "runtime_dir_has_bootstrap": os.path.exists(os.path.join(os.environ["LAMBDA_RUNTIME_DIR"], "bootstrap.py")),
    }
"#;

#[tokio::test]
async fn python_context_and_environment_are_lambdas() {
    let mut spec = python("py-context", PYTHON_CONTEXT);
    spec.version = "7".into();
    spec.env.insert("AWS_LAMBDA_FUNCTION_NAME".into(), "not-the-platforms".into());
    spec.env.insert("OWN".into(), "mine".into());
    let mut instance = start(spec).await;
    let timeout = Duration::from_secs(10);
    let req = Request::new(json!({}), timeout);
    let value = ok(instance.invoke(&req).await);

    assert_arn(&value["arn"], DEFAULT_REGION, "py-context");
    assert_counts_down(&value["remaining"][0], &value["remaining"][1], timeout);
    for printed in [&value["str"], &value["repr"]] {
        let printed = printed.as_str().unwrap();
        assert!(printed.starts_with("LambdaContext(["), "{printed}");
        for part in [
            format!("aws_request_id={}", req.id),
            "function_name=py-context".to_owned(),
            "invoked_function_arn=arn:aws:lambda:".to_owned(),
            "memory_limit_in_mb=".to_owned(),
            "identity=CognitoIdentity([".to_owned(),
        ] {
            assert!(printed.contains(&part), "{part} in {printed}");
        }
    }
    assert_eq!(value["function_name"], json!("py-context"));
    assert_eq!(value["function_version"], json!("7"));
    // AWS's python context has the memory size as a string.
    assert_eq!(value["memory_type"], json!("str"));
    assert_eq!(value["aws_request_id"], json!(req.id));
    assert_eq!(value["log_group_name"], json!("/aws/lambda/py-context"));
    let stream = value["log_stream_name"].as_str().unwrap();
    assert!(stream.ends_with(&format!("/[7]{}", instance.id())), "{stream}");
    assert_eq!(stream.split('/').count(), 4, "yyyy/mm/dd/[version]id: {stream}");
    assert_eq!(value["identity"], json!([null, null]));
    assert_eq!(value["client_context"], Value::Null);

    let env = &value["env"];
    assert_eq!(env["AWS_LAMBDA_FUNCTION_NAME"], json!("py-context"), "reserved: the platform's");
    assert_eq!(env["OWN"], json!("mine"));
    assert_eq!(env["AWS_LAMBDA_FUNCTION_VERSION"], json!("7"));
    assert_eq!(env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"], value["memory_limit_in_mb"]);
    assert_eq!(env["AWS_LAMBDA_LOG_GROUP_NAME"], value["log_group_name"]);
    assert_eq!(env["AWS_LAMBDA_LOG_STREAM_NAME"], value["log_stream_name"]);
    assert_eq!(env["AWS_REGION"], json!(DEFAULT_REGION));
    assert_eq!(env["AWS_DEFAULT_REGION"], json!(DEFAULT_REGION));
    assert_eq!(env["_HANDLER"], json!("main.handler"));
    assert_eq!(env["TZ"], json!(":UTC"));
    assert_eq!(value["zone"], json!("UTC"));
    assert!(env["AWS_EXECUTION_ENV"].as_str().unwrap().starts_with("AWS_Lambda_python3."));
    assert_eq!(value["cwd"], env["LAMBDA_TASK_ROOT"], "the working directory is the code's");
    assert_eq!(value["runtime_dir_has_bootstrap"], json!(true));
}

#[tokio::test]
async fn a_region_in_the_functions_env_is_the_arns_and_both_variables() {
    let source = "import os\ndef handler(event, context):\n    return [context.invoked_function_arn, os.environ['AWS_REGION'], os.environ['AWS_DEFAULT_REGION']]\n";
    let mut spec = python("py-region", source);
    spec.env.insert("AWS_DEFAULT_REGION".into(), "eu-central-1".into());
    let mut instance = start(spec).await;
    let value = ok(instance.invoke(&request(json!({}))).await);
    assert_arn(&value[0], "eu-central-1", "py-region");
    assert_eq!(value[1], json!("eu-central-1"));
    assert_eq!(value[2], json!("eu-central-1"));
}

#[tokio::test]
async fn python_error_stack_starts_at_the_handler() {
    let source = "def handler(event, context):\n    raise KeyError('missing')\n";
    let mut instance = start(python("py-error", source)).await;
    let error = instance.invoke(&request(json!({}))).await.outcome.unwrap_err();
    assert_eq!((error.type_.as_str(), error.message.as_str()), ("KeyError", "'missing'"));
    let stack = error.stack.unwrap();
    assert!(stack.contains("main.py") && stack.contains("in handler"), "{stack}");
    assert!(!stack.contains("bootstrap"), "no frame of the runtime: {stack}");
}

const NODE_CONTEXT: &str = r#"
exports.handler = async (event, context) => {
  const first = context.getRemainingTimeInMillis();
  while (context.getRemainingTimeInMillis() === first) { /* until the clock moves on */ }
  const second = context.getRemainingTimeInMillis();
  return {
    json: JSON.parse(JSON.stringify(context)),
    remaining: [first, second],
    memoryType: typeof context.memoryLimitInMB,
    waits: context.callbackWaitsForEmptyEventLoop,
    identity: context.identity === undefined && context.clientContext === undefined,
    env: process.env,
    cwd: process.cwd(),
    zone: Intl.DateTimeFormat().resolvedOptions().timeZone,
  };
};
"#;

#[tokio::test]
async fn node_context_serialises_and_environment_is_lambdas() {
    let mut spec = node("index.handler", "index.js", NODE_CONTEXT);
    spec.version = "4".into();
    let mut instance = start(spec).await;
    let timeout = Duration::from_secs(10);
    let req = Request::new(json!({}), timeout);
    let value = ok(instance.invoke(&req).await);
    let context = &value["json"];
    assert_arn(&context["invokedFunctionArn"], DEFAULT_REGION, "node-handler");
    assert_eq!(context["awsRequestId"], json!(req.id));
    assert_eq!(context["functionName"], json!("node-handler"));
    assert_eq!(context["functionVersion"], json!("4"));
    assert_eq!(value["memoryType"], json!("string"));
    assert_eq!(context["memoryLimitInMB"], value["env"]["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"]);
    assert_eq!(context["logGroupName"], json!("/aws/lambda/node-handler"));
    assert_eq!(context["logStreamName"], value["env"]["AWS_LAMBDA_LOG_STREAM_NAME"]);
    assert_eq!(context["callbackWaitsForEmptyEventLoop"], json!(true));
    assert!(context.get("getRemainingTimeInMillis").is_none(), "methods do not serialise");
    assert_eq!(value["waits"], json!(true));
    assert_eq!(value["identity"], json!(true));
    assert_counts_down(&value["remaining"][0], &value["remaining"][1], timeout);

    let env = &value["env"];
    assert_eq!(env["AWS_LAMBDA_FUNCTION_NAME"], json!("node-handler"));
    assert_eq!(env["AWS_REGION"], json!(DEFAULT_REGION));
    assert_eq!(env["_HANDLER"], json!("index.handler"));
    assert_eq!(env["TZ"], json!(":UTC"));
    assert_eq!(value["zone"], json!("UTC"));
    assert!(env["AWS_EXECUTION_ENV"].as_str().unwrap().starts_with("AWS_Lambda_nodejs"));
    assert_eq!(value["cwd"], env["LAMBDA_TASK_ROOT"]);
}

#[tokio::test]
async fn node_callback_waits_for_the_empty_event_loop_unless_told_not_to() {
    // The callback's value goes back only once the timer it left behind has run.
    let source = r#"
exports.handler = function (event, context, callback) {
  context.callbackWaitsForEmptyEventLoop = event.wait;
  callback(null, { waited: context.callbackWaitsForEmptyEventLoop });
  setTimeout(() => console.log('timer of ' + event.name), 20);
};
"#;
    let mut instance = start(node("index.handler", "index.js", source)).await;
    let waited = instance.invoke(&request(json!({"wait": true, "name": "first"}))).await;
    assert!(waited.logs.contains("timer of first"), "{}", waited.logs);
    assert_eq!(ok(waited), json!({"waited": true}));

    let early = instance.invoke(&request(json!({"wait": false, "name": "second"}))).await;
    assert!(!early.logs.contains("timer of second"), "answered before the timer: {}", early.logs);
    assert_eq!(ok(early), json!({"waited": false}));
    // What was left running goes on in the next invocation, as on AWS.
    let next = instance.invoke(&request(json!({"wait": true, "name": "third"}))).await;
    assert!(next.logs.contains("timer of second"), "{}", next.logs);
    assert!(next.logs.contains("timer of third"), "{}", next.logs);
}

#[tokio::test]
async fn node_handler_that_never_answers_returns_null_once_nothing_is_left_to_run() {
    for (name, source) in [
        (
            "index.mjs",
            "export const handler = () => new Promise(() => {});
",
        ),
        (
            "index.js",
            "exports.handler = (event, context, callback) => {};
",
        ),
    ] {
        let mut instance = start(node("index.handler", name, source)).await;
        let value = ok(instance.invoke(&request(json!({}))).await);
        assert_eq!(value, Value::Null, "{name}");
    }
}

#[tokio::test]
async fn node_module_styles_and_handler_styles_all_run() {
    let cases = [
        ("index.js", "exports.handler = async (event) => ({ style: 'cjs async', n: event.n });
"),
        ("index.js", "module.exports.handler = (event) => Promise.resolve({ style: 'cjs promise', n: event.n });
"),
        ("index.cjs", "exports.handler = (event, context, cb) => cb(null, { style: 'cjs callback', n: event.n });
"),
        ("index.js", "exports.handler = (event, context) => context.succeed({ style: 'cjs succeed', n: event.n });
"),
        ("index.mjs", "export function handler(event, context, callback) { callback(null, { style: 'esm callback', n: event.n }); }
"),
        ("index.mjs", "export const handler = async (event) => ({ style: 'esm async', n: event.n });
"),
        ("index.mjs", "export default { handler: async (event) => ({ style: 'esm default', n: event.n }) };
"),
    ];
    for (name, source) in cases {
        let mut instance = start(node("index.handler", name, source)).await;
        let value = ok(instance.invoke(&request(json!({"n": 3}))).await);
        assert_eq!(value["n"], json!(3), "{name}: {source}");
        assert!(value["style"].is_string(), "{value}");
    }
}

#[tokio::test]
async fn node_errors_that_are_not_error_objects_are_typed_as_aws_types_them() {
    let source = r#"
exports.handler = async (event) => {
  if (event.kind === 'string') throw 'plain words';
  if (event.kind === 'number') throw 42;
  const e = new Error('custom');
  e.name = 'OrderRejected';
  throw e;
};
"#;
    let mut instance = start(node("index.handler", "index.js", source)).await;
    let error = instance.invoke(&request(json!({"kind": "string"}))).await.outcome.unwrap_err();
    assert_eq!((error.type_.as_str(), error.message.as_str()), ("string", "plain words"));
    let error = instance.invoke(&request(json!({"kind": "number"}))).await.outcome.unwrap_err();
    assert_eq!((error.type_.as_str(), error.message.as_str()), ("number", "42"));
    let error = instance.invoke(&request(json!({}))).await.outcome.unwrap_err();
    assert_eq!((error.type_.as_str(), error.message.as_str()), ("OrderRejected", "custom"));
    assert!(error.stack.unwrap().starts_with("OrderRejected: custom\n"));
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
    assert_eq!(failure.error.type_, "Runtime.ImportModuleError");
    assert_eq!(
        failure.error.message,
        "Unable to import module 'main': No module named 'does_not_exist'"
    );
    assert!(failure.error.stack.unwrap().contains("main.py"));
    assert!(failure.logs.text.contains("loading..."));

    let syntax = python("syntax", "def handler(event, context)\n    return 1\n");
    let failure = driver().start(Arc::new(syntax)).await.unwrap().unwrap_err();
    assert_eq!(failure.error.type_, "Runtime.UserCodeSyntaxError");
    assert!(failure.error.message.starts_with("Syntax error in module 'main': "), "{failure:?}");

    let missing = python("no-handler", "def other(event, context):\n    return 1\n");
    let failure = driver().start(Arc::new(missing)).await.unwrap().unwrap_err();
    assert_eq!(failure.error.type_, "Runtime.HandlerNotFound");
    assert_eq!(failure.error.message, "Handler 'handler' missing on module 'main'");

    // An exception the module itself raises keeps its type, with where it was loaded.
    let raising = python("raising", "raise KeyError('SETTING')\n");
    let failure = driver().start(Arc::new(raising)).await.unwrap().unwrap_err();
    assert_eq!(failure.error.type_, "KeyError");
    assert!(failure.error.message.contains("main.handler"), "{:?}", failure.error);

    let node_missing = node("index.handler", "index.js", "exports.other = () => 1;\n");
    let failure = driver().start(Arc::new(node_missing)).await.unwrap().unwrap_err();
    assert_eq!(failure.error.type_, "Runtime.HandlerNotFound");
    assert_eq!(failure.error.message, "index.handler is undefined or not exported");

    // A require of a file that is not in the package fails at once, naming it.
    let node_require = node("index.handler", "index.js", "require('./helpers');\n");
    let failure = driver().start(Arc::new(node_require)).await.unwrap().unwrap_err();
    assert_eq!(failure.error.type_, "Runtime.ImportModuleError");
    assert!(failure.error.message.contains("Cannot find module './helpers'"), "{failure:?}");
    assert!(failure.duration < driver().config().init_timeout, "{:?}", failure.duration);

    let node_syntax = node("index.handler", "index.mjs", "export const handler = async ( => 1;\n");
    let failure = driver().start(Arc::new(node_syntax)).await.unwrap().unwrap_err();
    assert_eq!(failure.error.type_, "Runtime.UserCodeSyntaxError");
    assert!(failure.error.message.starts_with("SyntaxError: "), "{failure:?}");
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
