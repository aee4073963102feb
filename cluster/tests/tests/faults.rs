//! Accepted means done, on the real cluster: invocations accepted by the gateway finish when
//! every executor pod and the operator pod are killed mid-run (force-deleted, no grace), and the
//! StatefulSet and Deployment bring new ones. A file of its own so it runs after the other
//! end-to-end tests, never beside them: it takes the platform down on purpose.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use common::{Cluster, Gateway, b64};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_invocations_finish_when_executor_and_operator_pods_are_killed() {
    let cluster = Cluster::from_env();
    let gateway = Gateway::connect(&cluster).await;
    let ns = &cluster.namespace;
    let slow = "import time\ndef handler(event, context):\n    time.sleep(event['sleep'])\n    return {'slept': event['sleep']}\n";
    let created = gateway
        .expect(
            201,
            "POST",
            &format!("/functions?namespace={ns}"),
            Some(&json!({
                "name": "slow", "runtime": "python", "handler": "main.handler",
                "code": b64(slow), "timeout": 120,
            })),
        )
        .await;
    let id = created["id"].as_str().unwrap().to_owned();

    // Several accepted invocations; wait until one runs.
    let mut accepted = Vec::new();
    for _ in 0..4 {
        let reply = gateway
            .expect(
                202,
                "POST",
                &format!("/invoke?namespace={ns}"),
                Some(&json!({"function_id": id, "payload": {"sleep": 6}})),
            )
            .await;
        accepted.push(reply["invocation_id"].as_str().unwrap().to_owned());
    }
    cluster
        .eventually(async || {
            let (_, row) =
                gateway.call("GET", &format!("/invocations/{}", accepted[0]), None).await;
            if row["status"] == "running" { Ok(()) } else { Err(format!("never running: {row}")) }
        })
        .await;

    // Every executor and the operator die at once, without a chance to hand work back.
    for selector in ["app.kubernetes.io/component=executor", "app.kubernetes.io/component=operator"]
    {
        cluster
            .system_ok(&[
                "delete",
                "pods",
                "-l",
                selector,
                "--grace-period=0",
                "--force",
                "--wait=false",
            ])
            .await;
    }
    // And more work arrives while they are down.
    for _ in 0..2 {
        let (status, reply) = gateway
            .call(
                "POST",
                &format!("/invoke?namespace={ns}"),
                Some(&json!({"function_id": id, "payload": {"sleep": 1}})),
            )
            .await;
        assert_eq!(status, 202, "{reply}");
        accepted.push(reply["invocation_id"].as_str().unwrap().to_owned());
    }

    for invocation in &accepted {
        let done = gateway.finished(&cluster, invocation).await;
        assert_eq!(done["status"], "succeeded", "{done}");
    }
    let first = gateway.expect(200, "GET", &format!("/invocations/{}", accepted[0]), None).await;
    assert!(first["attempts"].as_i64().unwrap_or(0) >= 2, "the killed run was taken over: {first}");
    gateway.expect(204, "DELETE", &format!("/functions/slow?namespace={ns}"), None).await;
}
