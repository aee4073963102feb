//! What the local sandbox enforces, checked from inside a real python instance. This host gives
//! the suite writable cgroups and namespaces (as root); without them these tests fail.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod support;

use std::time::Duration;

use kubefaas_executor::{Driver, DriverConfig, Limits, Mechanism, SandboxMode};
use serde_json::json;
use support::{driver, eventually, python, request, start};

const PROBE: &str = r#"
import os, threading, time

def handler(event, context):
    if event.get("threads"):
        started = 0
        try:
            for _ in range(event["threads"]):
                threading.Thread(target=time.sleep, args=(2,), daemon=True).start()
                started += 1
        except RuntimeError as exc:
            return {"started": started, "error": str(exc)}
        return {"started": started}
    procs = [p for p in os.listdir("/proc") if p.isdigit()]
    with open("/proc/self/cgroup") as f:
        cgroup = f.read()
    return {
        "pid": os.getpid(),
        "procs": len(procs),
        "cwd_files": sorted(os.listdir(".")),
        "tmp": os.environ["TMPDIR"],
        "home": os.environ["HOME"],
        "env_names": sorted(os.environ),
        "cgroup": cgroup,
    }
"#;

#[tokio::test]
async fn host_gives_cgroups_and_namespaces_and_the_report_says_so() {
    let report = driver().sandbox().clone();
    assert!(matches!(report.memory, Mechanism::CgroupV1 | Mechanism::CgroupV2), "{report:?}");
    assert_eq!(report.cpu, report.memory, "{report:?}");
    assert_eq!(report.pids, report.memory, "{report:?}");
    assert!(report.namespaces, "{report:?}");
}

#[tokio::test]
async fn instance_sees_only_its_code_its_processes_and_a_minimal_environment() {
    let mut instance = start(python("sandbox-probe", PROBE)).await;
    let invocation = instance.invoke(&request(json!({}))).await;
    let value = invocation.outcome.expect("probe");
    assert_eq!(value["cwd_files"], json!(["main.py"]), "the working dir holds only the code");
    assert_eq!(value["pid"], json!(1), "own PID namespace: the interpreter is its init");
    assert!(value["procs"].as_u64().unwrap() <= 2, "no host processes visible: {value}");
    let tmp = value["tmp"].as_str().unwrap();
    assert!(tmp.contains(instance.id()), "private tmp per instance: {tmp}");
    assert_eq!(value["home"], value["tmp"]);
    let names: Vec<&str> =
        value["env_names"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    for name in &names {
        assert!(
            [
                "PATH",
                "PWD",
                "LANG",
                "TZ",
                "HOME",
                "TMPDIR",
                "LAMBDA_TASK_ROOT",
                "LAMBDA_RUNTIME_DIR",
                "LC_CTYPE",
                "_HANDLER",
                "AWS_REGION",
                "AWS_DEFAULT_REGION",
                "AWS_EXECUTION_ENV",
            ]
            .contains(name)
                || name.starts_with("KUBEFAAS_")
                || name.starts_with("AWS_LAMBDA_"),
            "unexpected variable {name} in {names:?}"
        );
    }
    // The instance runs in its own memory cgroup, which is gone once the instance is.
    let cgroup = value["cgroup"].as_str().unwrap();
    let memory_path = cgroup
        .lines()
        .find_map(|l| l.split_once(":memory:").map(|(_, p)| p.to_owned()))
        .expect("memory cgroup line");
    assert!(memory_path.ends_with(instance.id()), "{memory_path}");
    let dir =
        std::path::Path::new("/sys/fs/cgroup/memory").join(memory_path.trim_start_matches('/'));
    assert!(dir.exists(), "{}", dir.display());
    drop(instance);
    assert!(eventually(Duration::from_secs(5), || !dir.exists()).await, "cgroup removed");
}

#[tokio::test]
async fn pids_limit_stops_a_thread_bomb() {
    let mut spec = python("sandbox-pids", PROBE);
    spec.limits = Limits { pids: 16, ..Limits::default() };
    let mut instance = start(spec).await;
    let invocation = instance.invoke(&request(json!({"threads": 100}))).await;
    let value = invocation.outcome.expect("probe");
    let started = value["started"].as_u64().unwrap();
    assert!(started < 16, "at most the pids limit: {value}");
    assert!(value["error"].as_str().unwrap().contains("thread"), "{value}");
}

fn driver_with(name: &str, change: impl FnOnce(&mut DriverConfig)) -> std::sync::Arc<Driver> {
    let root = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let mut config = DriverConfig::under(root);
    change(&mut config);
    Driver::new(config).unwrap()
}

#[tokio::test]
async fn without_cgroups_the_address_space_rlimit_still_bounds_memory() {
    let driver = driver_with("kubefaas-rlimit-tests", |c| c.sandbox = SandboxMode::Rlimits);
    assert_eq!(driver.sandbox().memory, Mechanism::Rlimit);
    assert_eq!(driver.sandbox().cpu, Mechanism::None, "the report says what is not enforced");
    let source = "def handler(event, context):\n    blocks = [bytearray(b'x') * (1 << 20) for _ in range(event['mb'])]\n    return len(blocks)\n";
    let spec = std::sync::Arc::new(python("rlimit-hog", source));
    let mut instance = driver.start(spec).await.unwrap().unwrap();
    let small = instance.invoke(&request(json!({"mb": 10}))).await;
    assert_eq!(small.outcome.unwrap(), json!(10));
    let hog = instance.invoke(&request(json!({"mb": 400}))).await;
    assert_eq!(
        hog.outcome.unwrap_err().type_,
        "MemoryError",
        "the allocation fails inside the function"
    );
}

#[tokio::test]
async fn handler_that_hangs_while_loading_times_out_as_a_start_failure() {
    // Long enough for python to start and print on a busy CI machine (800 ms was not: the
    // start was cut before the print), far shorter than the module's sleep.
    let driver =
        driver_with("kubefaas-init-timeout-tests", |c| c.init_timeout = Duration::from_secs(3));
    let spec =
        std::sync::Arc::new(python("hangs", "import time\nprint('loading')\ntime.sleep(60)\n"));
    let started = std::time::Instant::now();
    let failure = driver.start(spec).await.unwrap().unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(30), "the start was not cut at its deadline");
    assert_eq!(failure.error.type_, kubefaas_executor::error_types::TIMED_OUT);
    assert!(failure.error.message.contains("loading handler"), "{}", failure.error.message);
    assert!(failure.logs.text.contains("loading"), "{:?}", failure.logs);
}
