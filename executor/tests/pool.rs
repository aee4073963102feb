//! The warm pool with real python instances: reuse, `maxInstances`, `minWarm`, idle reaping.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use kubefaas_executor::{Pool, Scaling};
use serde_json::json;
use support::{driver, python, request};

const SLEEPER: &str = r#"
import os, time
def handler(event, context):
    time.sleep(event.get("sleep", 0))
    return os.environ["TMPDIR"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_invocations_scale_out_up_to_max_instances_and_no_further() {
    let pool = Arc::new(Pool::new(driver()));
    let spec = Arc::new(python("pool-max", SLEEPER));
    let scaling = Scaling { max_instances: 2, ..Scaling::default() };
    let started = Instant::now();
    let calls: Vec<_> = (0..3)
        .map(|_| {
            let (pool, spec) = (Arc::clone(&pool), Arc::clone(&spec));
            tokio::spawn(async move {
                pool.invoke(spec, scaling, &request(json!({"sleep": 1.0}))).await.unwrap()
            })
        })
        .collect();
    let mut instance_dirs = Vec::new();
    for call in calls {
        let invocation = call.await.unwrap();
        instance_dirs.push(invocation.outcome.unwrap().as_str().unwrap().to_owned());
    }
    instance_dirs.sort();
    instance_dirs.dedup();
    assert_eq!(instance_dirs.len(), 2, "two instances served three calls");
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "the third call waited for a free instance"
    );
    assert_eq!(pool.instances("pool-max"), 2);
}

#[tokio::test]
async fn min_warm_instances_are_started_ahead_and_survive_reaping() {
    let pool = Pool::new(driver());
    let spec = Arc::new(python("pool-warm", SLEEPER));
    let scaling = Scaling { min_warm: 1, max_instances: 3, idle_timeout: Duration::ZERO };
    assert_eq!(pool.ensure_warm(Arc::clone(&spec), scaling).await.unwrap().unwrap(), 1);
    assert_eq!(pool.idle_instances("pool-warm"), 1);
    let invocation = pool.invoke(Arc::clone(&spec), scaling, &request(json!({}))).await.unwrap();
    assert!(!invocation.metrics.cold_start, "the warm instance served the first call");
    assert_eq!(pool.reap_idle(), 0, "min_warm instances are kept");
    assert_eq!(pool.idle_instances("pool-warm"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_instances_are_reaped_after_the_idle_timeout() {
    let pool = Arc::new(Pool::new(driver()));
    let spec = Arc::new(python("pool-reap", SLEEPER));
    let scaling =
        Scaling { min_warm: 0, max_instances: 2, idle_timeout: Duration::from_millis(300) };
    pool.invoke(Arc::clone(&spec), scaling, &request(json!({}))).await.unwrap();
    assert_eq!(pool.idle_instances("pool-reap"), 1);
    assert_eq!(pool.reap_idle(), 0, "not idle long enough yet");
    let _reaper = pool.spawn_reaper(Duration::from_millis(50));
    assert!(
        support::eventually(Duration::from_secs(5), || pool.idle_instances("pool-reap") == 0).await
    );
}

#[tokio::test]
async fn changed_code_gets_new_instances() {
    let pool = Pool::new(driver());
    let v1 = Arc::new(python("pool-update", "def handler(e, c):\n    return 1\n"));
    let v2 = Arc::new(python("pool-update", "def handler(e, c):\n    return 2\n"));
    let scaling = Scaling::default();
    let first = pool.invoke(v1, scaling, &request(json!({}))).await.unwrap();
    assert_eq!(first.outcome.unwrap(), json!(1));
    let second = pool.invoke(v2, scaling, &request(json!({}))).await.unwrap();
    assert_eq!(second.outcome.unwrap(), json!(2));
    assert!(second.metrics.cold_start);
    assert_eq!(pool.instances("pool-update"), 1);
}

#[tokio::test]
async fn functions_of_the_same_name_in_two_namespaces_keep_their_own_warm_instances() {
    let pool = Pool::new(driver());
    let mut first = python("twin", SLEEPER);
    first.namespace = Some("team-a".into());
    let mut second = python("twin", "def handler(event, context):\n    return 'b'\n");
    second.namespace = Some("team-b".into());
    let (first, second) = (Arc::new(first), Arc::new(second));
    for _ in 0..2 {
        let a =
            pool.invoke(Arc::clone(&first), Scaling::default(), &request(json!({}))).await.unwrap();
        let b = pool
            .invoke(Arc::clone(&second), Scaling::default(), &request(json!({})))
            .await
            .unwrap();
        assert_eq!(b.outcome.unwrap(), json!("b"));
        assert!(a.outcome.is_ok());
    }
    assert_eq!(pool.instances("team-a/twin"), 1, "no instance was thrown away");
    assert_eq!(pool.instances("team-b/twin"), 1);
}
