//! Shared fixtures of the executor's integration tests.
#![allow(dead_code, clippy::expect_used, clippy::unwrap_used)]

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use kubefaas_executor::{Driver, DriverConfig, FunctionSpec, Instance, Language, Request};
use serde_json::Value;

/// One driver per test binary, so Go builds are shared (and cached across runs below the
/// target directory).
pub(crate) fn driver() -> Arc<Driver> {
    static DRIVER: OnceLock<Arc<Driver>> = OnceLock::new();
    Arc::clone(DRIVER.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("kubefaas-executor-tests");
        Driver::new(DriverConfig::under(&root)).expect("driver")
    }))
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
