//! Conformance suite: one table of cases, run against every runtime through the driver with the
//! host's real interpreters (python3, node, go). Nothing here skips: a missing interpreter or a
//! host without writable cgroups fails the suite.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use kubefaas_executor::{
    Code, FunctionSpec, Invocation, Language, Limits, Mechanism, Pool, Request, Scaling,
    error_types,
};
use serde_json::{Value, json};
use support::{driver, request, start, zip_of};

const PYTHON_MAIN: &str = include_str!("functions/python/main.py");
const NODE_INDEX: &str = include_str!("functions/nodejs/index.js");
const GO_FUNCTION: &str = include_str!("functions/go/function.go");

/// The test function of `language`, with the environment variable the env case looks for.
fn spec(language: Language) -> FunctionSpec {
    let (handler, code) = match language {
        Language::Python => ("main.handler", PYTHON_MAIN),
        Language::Nodejs => ("index.handler", NODE_INDEX),
        Language::Go => ("Handle", GO_FUNCTION),
    };
    let code = Code::single_file(language, handler, code.as_bytes().to_vec());
    let mut spec =
        FunctionSpec::new(format!("conformance-{}", language.as_str()), language, handler, code)
            .expect("spec");
    spec.version = "2.1.0".into();
    spec.env = BTreeMap::from([("GREETING".to_owned(), "hello from the function env".to_owned())]);
    spec.limits = Limits { memory_bytes: 128 << 20, cpu_millis: 1000, pids: 256 };
    spec
}

fn ok(invocation: &Invocation) -> &Value {
    match &invocation.outcome {
        Ok(value) => value,
        Err(e) => panic!("invocation failed: {e:?}\nlogs:\n{}", invocation.logs),
    }
}

fn err(invocation: &Invocation) -> &kubefaas_executor::InvocationError {
    match &invocation.outcome {
        Ok(value) => panic!("invocation succeeded with {value}, expected an error"),
        Err(e) => e,
    }
}

async fn echo_of_json_payloads_returns_them_unchanged(language: Language) {
    let mut instance = start(spec(language)).await;
    let large: String = "ü€x".repeat(1 << 18); // over 1 MiB of UTF-8
    for data in [
        json!({"a": 1, "nested": {"list": [1, 2.5, null, true], "s": "x"}}),
        json!([1, "two", {"three": 3}]),
        json!("unicode: žluťoučký kůň, 日本語, emoji 🎉, quote \" and newline \n"),
        json!(large),
        json!(null),
    ] {
        let invocation = instance.invoke(&request(json!({"action": "echo", "data": data}))).await;
        assert_eq!(ok(&invocation), &data);
    }
}

async fn context_has_lambda_names_and_a_decreasing_deadline(language: Language) {
    let mut instance = start(spec(language)).await;
    let req = Request::new(json!({"action": "context"}), Duration::from_secs(10));
    let invocation = instance.invoke(&req).await;
    let value = ok(&invocation);
    assert_eq!(value["function_name"], json!(format!("conformance-{}", language.as_str())));
    assert_eq!(value["function_version"], json!("2.1.0"));
    assert_eq!(value["memory_limit_in_mb"], json!(128));
    assert_eq!(value["aws_request_id"], json!(req.id));
    assert_eq!(value["invocation_id"], json!(req.id));
    let first = value["remaining_ms"][0].as_i64().unwrap();
    let second = value["remaining_ms"][1].as_i64().unwrap();
    assert!(first <= 10_000 && first > 8_000, "remaining at start: {first}");
    assert!(second <= first - 40, "deadline must come closer: {first} then {second}");
}

async fn handler_error_is_structured_with_type_and_stack(language: Language) {
    let mut instance = start(spec(language)).await;
    let invocation = instance.invoke(&request(json!({"action": "fail"}))).await;
    let error = err(&invocation);
    assert_eq!(error.type_, "CustomError");
    assert_eq!(error.message, "boom");
    let stack = error.stack.as_deref().expect("stack");
    match language {
        Language::Python => {
            assert!(stack.contains("fail_deeply") && stack.contains("main.py"), "{stack}")
        }
        Language::Nodejs => {
            assert!(stack.contains("failDeeply") && stack.contains("index.js"), "{stack}")
        }
        Language::Go => assert!(stack.contains("goroutine"), "{stack}"),
    }
    assert!(instance.is_alive(), "a function error keeps the instance");
    let again = instance.invoke(&request(json!({"action": "echo", "data": 1}))).await;
    assert_eq!(ok(&again), &json!(1));
}

async fn non_json_result_is_a_clear_error(language: Language) {
    let mut instance = start(spec(language)).await;
    let invocation = instance.invoke(&request(json!({"action": "unserializable"}))).await;
    let error = err(&invocation);
    assert_eq!(error.type_, error_types::RESULT_NOT_SERIALIZABLE);
    assert!(error.message.contains("not JSON"), "{}", error.message);
}

async fn stdout_and_stderr_become_logs_not_the_result(language: Language) {
    let mut instance = start(spec(language)).await;
    let first = instance.invoke(&request(json!({"action": "log"}))).await;
    assert_eq!(ok(&first), &json!("logged"));
    assert!(first.logs.contains("to-stdout"), "logs: {:?}", first.logs);
    assert!(first.logs.contains("to-stderr"), "logs: {:?}", first.logs);
    assert!(!first.logs.contains("kubefaas-log-end"), "the marker must not leak: {:?}", first.logs);
    let second = instance.invoke(&request(json!({"action": "echo", "data": "quiet"}))).await;
    assert_eq!(ok(&second), &json!("quiet"));
    assert!(
        !second.logs.contains("to-stdout"),
        "logs belong to their invocation: {:?}",
        second.logs
    );
}

async fn function_env_is_visible_and_executor_env_is_not(language: Language) {
    assert!(std::env::var("CARGO_MANIFEST_DIR").is_ok(), "the test process has the variable");
    let mut instance = start(spec(language)).await;
    let names = ["GREETING", "CARGO_MANIFEST_DIR", "CARGO_PKG_NAME", "KUBEFAAS_CONTROL_SOCKET"];
    let invocation = instance.invoke(&request(json!({"action": "env", "names": names}))).await;
    let value = ok(&invocation);
    assert_eq!(value["GREETING"], json!("hello from the function env"));
    assert_eq!(value["CARGO_MANIFEST_DIR"], Value::Null);
    assert_eq!(value["CARGO_PKG_NAME"], Value::Null);
    assert_eq!(value["KUBEFAAS_CONTROL_SOCKET"], Value::Null, "the bootstrap hides its socket");
}

async fn timeout_kills_the_instance_and_the_next_call_gets_a_new_one(language: Language) {
    let pool = Pool::new(driver());
    let spec = Arc::new(spec(language));
    let scaling = Scaling::default();
    let warmup = pool
        .invoke(Arc::clone(&spec), scaling, &request(json!({"action": "counter"})))
        .await
        .unwrap();
    assert_eq!(ok(&warmup), &json!(1));
    let slow = Request::new(json!({"action": "sleep", "seconds": 30}), Duration::from_millis(500));
    let started = std::time::Instant::now();
    let invocation = pool.invoke(Arc::clone(&spec), scaling, &slow).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "killed promptly: {:?}",
        started.elapsed()
    );
    assert_eq!(err(&invocation).type_, error_types::TIMED_OUT);
    assert_eq!(pool.instances(&spec.name), 0, "the timed-out instance is gone");
    let next = pool
        .invoke(Arc::clone(&spec), scaling, &request(json!({"action": "counter"})))
        .await
        .unwrap();
    assert_eq!(ok(&next), &json!(1), "a fresh instance starts from scratch");
    assert!(next.metrics.cold_start);
}

async fn memory_hog_ends_as_out_of_memory_under_the_cgroup_limit(language: Language) {
    let driver = driver();
    assert!(
        matches!(driver.sandbox().memory, Mechanism::CgroupV1 | Mechanism::CgroupV2),
        "this host must give the suite writable cgroups: {:?}",
        driver.sandbox()
    );
    let mut instance = start(spec(language)).await;
    let invocation = instance.invoke(&request(json!({"action": "hog", "mb": 400}))).await;
    let error = err(&invocation);
    assert_eq!(error.type_, error_types::OUT_OF_MEMORY, "{error:?}\nlogs: {}", invocation.logs);
    assert!(!instance.is_alive());
    let peak = invocation.metrics.memory_peak_bytes.expect("peak memory");
    assert!(peak > 100 << 20 && peak <= 129 << 20, "peak {peak} near the 128 MiB limit");
}

async fn cpu_bound_loop_under_a_tenth_of_a_core_gets_about_that_share(language: Language) {
    let mut spec = spec(language);
    spec.limits.cpu_millis = 100;
    let mut instance = start(spec).await;
    let invocation = instance.invoke(&request(json!({"action": "spin", "ms": 1500}))).await;
    ok(&invocation);
    let cpu = invocation.metrics.cpu_time.expect("cpu time").as_secs_f64();
    let wall = invocation.metrics.duration.as_secs_f64();
    let share = cpu / wall;
    assert!((0.03..=0.2).contains(&share), "cpu {cpu:.3}s over wall {wall:.3}s = {share:.3}");
}

async fn sequential_invocations_reuse_one_warm_process(language: Language) {
    let pool = Pool::new(driver());
    let spec = Arc::new(spec(language));
    for n in 1..=100 {
        let invocation = pool
            .invoke(Arc::clone(&spec), Scaling::default(), &request(json!({"action": "counter"})))
            .await
            .unwrap();
        assert_eq!(ok(&invocation), &json!(n), "module state persists in one process");
        assert_eq!(invocation.metrics.cold_start, n == 1);
        assert!(invocation.metrics.cpu_time.is_some());
    }
    assert_eq!(pool.instances(&spec.name), 1);
}

async fn crash_mid_invocation_is_reported_and_the_next_invocation_works(language: Language) {
    let pool = Pool::new(driver());
    let spec = Arc::new(spec(language));
    let crashed = pool
        .invoke(Arc::clone(&spec), Scaling::default(), &request(json!({"action": "crash"})))
        .await
        .unwrap();
    let error = err(&crashed);
    assert_eq!(error.type_, error_types::RUNTIME_EXITED, "{error:?}");
    assert!(error.message.contains("exited with"), "{}", error.message);
    if language == Language::Go {
        assert!(
            crashed.logs.contains("crash in a goroutine"),
            "the panic is in the logs: {}",
            crashed.logs
        );
    }
    let next = pool
        .invoke(Arc::clone(&spec), Scaling::default(), &request(json!({"action": "counter"})))
        .await
        .unwrap();
    assert_eq!(ok(&next), &json!(1));
    assert!(next.metrics.cold_start);
}

async fn zip_with_several_files_resolves_modules_inside_it(language: Language) {
    let (handler, files): (&str, Vec<(&str, &str)>) = match language {
        Language::Python => (
            "app.main.handler",
            vec![
                ("app/__init__.py", ""),
                (
                    "app/main.py",
                    "from app.util import greet\n\ndef handler(event, context):\n    return greet(event['name'])\n",
                ),
                ("app/util.py", "def greet(name):\n    return 'hello ' + name\n"),
            ],
        ),
        Language::Nodejs => (
            "src/index.handler",
            vec![
                (
                    "src/index.js",
                    "const { greet } = require('greeter');\nexports.handler = async (e) => greet(e.name);\n",
                ),
                (
                    "node_modules/greeter/package.json",
                    "{\"name\": \"greeter\", \"main\": \"lib.js\"}",
                ),
                ("node_modules/greeter/lib.js", "exports.greet = (n) => 'hello ' + n;\n"),
            ],
        ),
        Language::Go => (
            "Handle",
            vec![
                ("go.mod", "module example.com/fn\n\ngo 1.18\n"),
                (
                    "fn.go",
                    "package fn\n\nimport (\n\t\"context\"\n\t\"encoding/json\"\n\n\t\"example.com/fn/greet\"\n)\n\nfunc Handle(ctx context.Context, raw json.RawMessage) (any, error) {\n\tvar e struct{ Name string `json:\"name\"` }\n\tif err := json.Unmarshal(raw, &e); err != nil {\n\t\treturn nil, err\n\t}\n\treturn greet.Hello(e.Name), nil\n}\n",
                ),
                (
                    "greet/greet.go",
                    "package greet\n\nfunc Hello(name string) string { return \"hello \" + name }\n",
                ),
            ],
        ),
    };
    let spec =
        FunctionSpec::new("conformance-zip", language, handler, Code::Zip(zip_of(&files))).unwrap();
    let mut instance = start(spec).await;
    let invocation = instance.invoke(&request(json!({"name": "zip"}))).await;
    assert_eq!(ok(&invocation), &json!("hello zip"));
}

/// The conformance table: every case runs against every runtime.
macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod python {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() { super::$case(kubefaas_executor::Language::Python).await })*
        }
        mod nodejs {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() { super::$case(kubefaas_executor::Language::Nodejs).await })*
        }
        mod go {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() { super::$case(kubefaas_executor::Language::Go).await })*
        }
    };
}

conformance!(
    echo_of_json_payloads_returns_them_unchanged,
    context_has_lambda_names_and_a_decreasing_deadline,
    handler_error_is_structured_with_type_and_stack,
    non_json_result_is_a_clear_error,
    stdout_and_stderr_become_logs_not_the_result,
    function_env_is_visible_and_executor_env_is_not,
    timeout_kills_the_instance_and_the_next_call_gets_a_new_one,
    memory_hog_ends_as_out_of_memory_under_the_cgroup_limit,
    cpu_bound_loop_under_a_tenth_of_a_core_gets_about_that_share,
    sequential_invocations_reuse_one_warm_process,
    crash_mid_invocation_is_reported_and_the_next_invocation_works,
    zip_with_several_files_resolves_modules_inside_it,
);
