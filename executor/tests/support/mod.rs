//! Shared fixtures of the executor's integration tests.
#![allow(dead_code, clippy::expect_used, clippy::unwrap_used)]

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use kubefaas_executor::{Driver, DriverConfig, FunctionSpec, Instance, Language, Request};
use serde_json::Value;

/// The environment variable `name`, which the tests need (`make test` sets it).
pub(crate) fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: these tests need real PostgreSQL and Redis (run `make test`)")
    })
}

/// One driver per test binary, so Go builds are shared (and cached across runs below the
/// target directory).
pub(crate) fn driver() -> Arc<Driver> {
    static DRIVER: OnceLock<Arc<Driver>> = OnceLock::new();
    Arc::clone(DRIVER.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("kubefaas-executor-tests");
        Driver::new(DriverConfig::under(&root)).expect("driver")
    }))
}

/// The PostgreSQL row of a python function `default/name`, as the operator records it.
pub(crate) fn python_record(id: uuid::Uuid, name: &str) -> kubefaas_core::store::FunctionRecord {
    kubefaas_core::store::FunctionRecord {
        id,
        namespace: "default".into(),
        name: name.into(),
        version: "1.0.0".into(),
        runtime: "python".into(),
        handler: "main.handler".into(),
        code_source: kubefaas_core::store::CodeSource::Inline,
        code_location: None,
        code_checksum: "0".repeat(64),
        code_size: 1,
        timeout_seconds: 30,
        memory_mb: 128,
        cpu_millis: 100,
        max_concurrency: 10,
        environment: std::collections::BTreeMap::new(),
        metadata: serde_json::json!({}),
    }
}

/// Records an invocation of `default/name` with `payload` in PostgreSQL (3 attempts).
pub(crate) async fn record(
    store: &kubefaas_core::store::Store,
    function_id: uuid::Uuid,
    name: &str,
    payload: Value,
    timeout_seconds: i32,
) -> uuid::Uuid {
    let new = new_invocation(function_id, name, payload, timeout_seconds);
    store.create_invocation(&new).await.unwrap().into_row().id
}

/// Records an invocation and releases it to the queue, as the operator and the gateway do.
pub(crate) async fn enqueue(
    store: &kubefaas_core::store::Store,
    queue: &kubefaas_core::queue::Queue,
    function_id: uuid::Uuid,
    name: &str,
    payload: Value,
    timeout_seconds: i32,
) -> uuid::Uuid {
    let id = record(store, function_id, name, payload, timeout_seconds).await;
    assert!(store.mark_queued(id).await.unwrap());
    let job = kubefaas_core::queue::Job::new(id, function_id, "default", name);
    queue.enqueue(&job).await.unwrap();
    id
}

/// A python function made of one `main.py` with `handler`.
pub(crate) fn python(name: &str, source: &str) -> FunctionSpec {
    let code = kubefaas_executor::Code::single_file(
        Language::Python,
        "main.handler",
        source.as_bytes().to_vec(),
    );
    FunctionSpec::new(name, Language::Python, "main.handler", code).expect("spec")
}

pub(crate) fn request(payload: Value) -> Request {
    Request::new(payload, Duration::from_secs(20))
}

pub(crate) async fn start(spec: FunctionSpec) -> Instance {
    match driver().start(Arc::new(spec)).await.expect("driver error") {
        Ok(instance) => instance,
        Err(failure) => panic!("instance failed to start: {failure:?}"),
    }
}

/// Polls `condition` every 10 ms until it holds or `within` passes.
pub(crate) async fn eventually(within: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let until = std::time::Instant::now() + within;
    loop {
        if condition() {
            return true;
        }
        if std::time::Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A zip archive of `(name, contents)` pairs.
pub(crate) fn zip_of(files: &[(&str, &str)]) -> Vec<u8> {
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, contents) in files {
        writer.start_file(*name, zip::write::SimpleFileOptions::default()).unwrap();
        std::io::Write::write_all(&mut writer, contents.as_bytes()).unwrap();
    }
    writer.finish().unwrap().into_inner()
}

/// A PostgreSQL schema of its own, migrated: the URL that selects it and a store on it.
pub(crate) async fn fresh_store() -> (String, kubefaas_core::store::Store) {
    let schema = format!("exec_{}", uuid::Uuid::new_v4().simple());
    let url = kubefaas_core::store::create_schema(&env("DATABASE_URL"), &schema).await.unwrap();
    let store = kubefaas_core::store::Store::connect(&kubefaas_core::store::StoreConfig::new(&url))
        .await
        .unwrap();
    store.migrate().await.unwrap();
    (url, store)
}

/// A synchronous invocation of `name` with a fresh id, three attempts and a 1 s backoff.
pub(crate) fn new_invocation(
    function_id: uuid::Uuid,
    name: &str,
    payload: Value,
    timeout_seconds: i32,
) -> kubefaas_core::store::NewInvocation {
    kubefaas_core::store::NewInvocation {
        id: uuid::Uuid::new_v4(),
        function_id,
        namespace: "default".into(),
        function_name: name.into(),
        resource_name: None,
        source: kubefaas_core::store::Source::Sync,
        payload: Some(payload),
        headers: std::collections::BTreeMap::new(),
        timeout_seconds,
        max_attempts: 3,
        backoff_seconds: 1,
        retry_on_function_error: false,
    }
}
