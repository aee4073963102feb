//! Measures cold start and warm invocation latency per runtime on this machine, through the
//! driver with the local sandbox: `cargo run -p kubefaas-executor --example driver_latency --release`.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use kubefaas_executor::{Code, Driver, DriverConfig, FunctionSpec, Language, Request};
use serde_json::json;

const WARM_CALLS: usize = 500;

fn spec(language: Language) -> FunctionSpec {
    let (handler, source) = match language {
        Language::Python => ("main.handler", "def handler(event, context):\n    return event\n"),
        Language::Nodejs => ("index.handler", "exports.handler = async (event) => event;\n"),
        Language::Go => (
            "Handle",
            "package main\n\nimport (\n\t\"context\"\n\t\"encoding/json\"\n)\n\nfunc Handle(ctx context.Context, e json.RawMessage) (any, error) { return e, nil }\n",
        ),
    };
    let code = Code::single_file(language, handler, source.as_bytes().to_vec());
    let mut spec = FunctionSpec::new("latency", language, handler, code).unwrap();
    spec.limits.cpu_millis = 1000;
    spec
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main]
async fn main() {
    let root = std::env::temp_dir().join("kubefaas-latency");
    let driver = Driver::new(DriverConfig::under(&root)).unwrap();
    println!("sandbox: {:?}", driver.sandbox());
    for language in [Language::Python, Language::Nodejs, Language::Go] {
        let spec = Arc::new(spec(language));
        // A first start builds Go code (cached per checksum); measure starts after that.
        let build = Instant::now();
        drop(driver.start(Arc::clone(&spec)).await.unwrap().unwrap());
        let first_start = build.elapsed();
        let mut colds = Vec::new();
        for _ in 0..5 {
            let started = Instant::now();
            let mut instance = driver.start(Arc::clone(&spec)).await.unwrap().unwrap();
            let first =
                instance.invoke(&Request::new(json!({"n": 0}), Duration::from_secs(10))).await;
            first.outcome.unwrap();
            colds.push(started.elapsed());
        }
        colds.sort();
        let mut instance = driver.start(Arc::clone(&spec)).await.unwrap().unwrap();
        let mut warm = Vec::with_capacity(WARM_CALLS);
        for n in 0..WARM_CALLS {
            let request = Request::new(json!({"n": n}), Duration::from_secs(10));
            let started = Instant::now();
            instance.invoke(&request).await.outcome.unwrap();
            warm.push(started.elapsed());
        }
        warm.sort();
        println!(
            "{:<7} first start {:>8.1?} | cold start (start + first call) median {:>7.1?} | warm p50 {:>7.2?} p99 {:>7.2?}",
            language.as_str(),
            first_start,
            colds[colds.len() / 2],
            percentile(&warm, 0.5),
            percentile(&warm, 0.99),
        );
    }
}
