//! kubefaas on a real cluster: upstream kube-apiserver (RBAC, Pod Security admission), the
//! kubelet with containerd and runc, kube-proxy, the platform installed by its Helm chart and
//! running as its pods with their own ServiceAccounts. The scenarios are those the standalone
//! end-to-end tests run (`operator/tests/e2e.rs`, `api-gateway/tests/e2e.rs`), driven with
//! `kubectl` and through the gateway's Service.
//!
//! `make cluster-test` sets `KUBECONFIG` and installs the chart first; see cluster/README.md.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Cluster, Gateway, b64, function, is_ready, repo};
use serde_json::{Value, json};

/// A function that allocates until it is killed at its 64 MiB limit ends `Failed` with
/// `OutOfMemory`: the kubelet's container is OOM-killed by the kernel, and the executor reads
/// that from the pod status.
async fn memory_hog_fails_out_of_memory(cluster: &Cluster, name: &str) {
    cluster
        .apply(&function(
            name,
            "python",
            "main.handler",
            "def handler(event, context):\n    blocks = []\n    while True:\n        blocks.append(bytearray(16 * 1024 * 1024))",
            "  resources:\n    memory: 64Mi\n    cpu: 500m\n",
        ))
        .await;
    cluster.wait_phase(&format!("function/{name}"), "Ready").await;
    let invocation = format!("{name}-once");
    cluster.invoke(&invocation, name, "{}").await;
    let oom = cluster.wait_phase(&format!("invocation/{invocation}"), "Failed").await;
    assert_eq!(oom["status"]["error"]["type"], "OutOfMemory", "{}", oom["status"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn functions_in_every_runtime_run_through_resources_on_the_real_cluster() {
    let cluster = Cluster::from_env();
    let examples = repo().join("examples");

    // The examples as a user applies them: python, nodejs, go.
    for (file, name) in [
        ("function.yaml", "hello"),
        ("function-nodejs.yaml", "hello-node"),
        ("function-go.yaml", "hello-go"),
    ] {
        cluster.kubectl_ok(&["apply", "-f", examples.join(file).to_str().unwrap()]).await;
        let ready = cluster.wait_phase(&format!("function/{name}"), "Ready").await;
        assert!(ready["status"]["functionId"].is_string(), "{}", ready["status"]);
        assert_eq!(ready["status"]["codeChecksum"].as_str().unwrap().len(), 64);
    }
    cluster.kubectl_ok(&["apply", "-f", examples.join("invocation.yaml").to_str().unwrap()]).await;
    let done = cluster.wait_phase("invocation/hello-once", "Succeeded").await;
    assert_eq!(done["status"]["result"]["message"], "Hello, kubefaas!");
    assert_eq!(done["status"]["result"]["invocation"], done["metadata"]["uid"]);
    assert!(
        done["status"]["logs"].as_str().unwrap().contains("greeting kubefaas"),
        "{}",
        done["status"]
    );
    assert_eq!(done["status"]["attempts"], 1);

    cluster.invoke("node-once", "hello-node", "{name: node}").await;
    let node = cluster.wait_phase("invocation/node-once", "Succeeded").await;
    assert_eq!(node["status"]["result"]["message"], "Hello, node!");
    cluster.invoke("go-once", "hello-go", "{name: gopher}").await;
    let go = cluster.wait_phase("invocation/go-once", "Succeeded").await;
    assert_eq!(go["status"]["result"]["message"], "Hello, gopher!");

    // A raising function fails with its error type and stack.
    cluster
        .apply(&function(
            "raiser",
            "python",
            "main.handler",
            "def handler(event, context):\n    raise KeyError('missing')",
            "",
        ))
        .await;
    cluster.wait_phase("function/raiser", "Ready").await;
    cluster.invoke("raise-once", "raiser", "{}").await;
    let failed = cluster.wait_phase("invocation/raise-once", "Failed").await;
    assert_eq!(failed["status"]["error"]["type"], "KeyError");
    assert!(failed["status"]["error"]["stack"].as_str().unwrap().contains("main.py"));
    cluster.delete_functions(&["hello-node", "hello-go", "raiser"]).await;

    // A sleeping one is stopped at its deadline.
    cluster
        .apply(&function(
            "sleeper",
            "python",
            "main.handler",
            "import time\ndef handler(event, context):\n    time.sleep(60)",
            "  timeoutSeconds: 2\n",
        ))
        .await;
    cluster.wait_phase("function/sleeper", "Ready").await;
    cluster.invoke("sleep-once", "sleeper", "{}").await;
    let timed_out = cluster.wait_phase("invocation/sleep-once", "TimedOut").await;
    assert_eq!(timed_out["status"]["error"]["type"], "TimedOut");
    cluster.delete_functions(&["sleeper"]).await;

    memory_hog_fails_out_of_memory(&cluster, "hog").await;
    cluster.delete_functions(&["hog"]).await;

    // Editing the code changes the next result.
    cluster
        .apply(&function(
            "hello",
            "python",
            "main.handler",
            "def handler(event, context):\n    return {'message': 'Bonjour, ' + event['name'] + '!'}",
            "",
        ))
        .await;
    let edited = cluster.wait_observed("function/hello").await;
    assert_eq!(edited["status"]["phase"], "Ready", "{}", edited["status"]);
    cluster.invoke("hello-twice", "hello", "{name: kubefaas}").await;
    let edited = cluster.wait_phase("invocation/hello-twice", "Succeeded").await;
    assert_eq!(edited["status"]["result"]["message"], "Bonjour, kubefaas!");

    // A finished invocation disappears after its TTL; PostgreSQL keeps the record.
    cluster
        .apply("apiVersion: kubefaas.io/v1alpha1\nkind: Invocation\nmetadata:\n  name: short-lived\nspec:\n  functionRef:\n    name: hello\n  payload: {name: ttl}\n  ttlSecondsAfterFinished: 1\n")
        .await;
    let uid =
        cluster.get("invocation/short-lived").await["metadata"]["uid"].as_str().unwrap().to_owned();
    cluster.kubectl_ok(&["wait", "--for=delete", "invocation/short-lived", "--timeout=120s"]).await;
    let gateway = Gateway::connect(&cluster).await;
    let kept = gateway.expect(200, "GET", &format!("/invocations/{uid}"), None).await;
    assert_eq!(kept["status"], "succeeded", "{kept}");
    assert_eq!(kept["result"]["message"], "Bonjour, ttl!");

    // Deleting the function: the garbage collector removes its code ConfigMap and its pods,
    // and later invocations fail with FunctionNotFound.
    cluster.kubectl_ok(&["delete", "function", "hello", "--wait=true", "--timeout=120s"]).await;
    cluster
        .eventually(async || {
            let code = cluster.kubectl(&["get", "configmap", "hello-code"]).await;
            let pods = cluster.pods_of("hello").await;
            if !code.status.success() && pods.is_empty() {
                Ok(())
            } else {
                Err(format!("hello's ConfigMap or {} pods outlive it", pods.len()))
            }
        })
        .await;
    cluster.invoke("hello-after", "hello", "{name: nobody}").await;
    let missing = cluster.wait_phase("invocation/hello-after", "Failed").await;
    assert_eq!(missing["status"]["error"]["type"], "FunctionNotFound");
}

/// Replicas of the chart's executor StatefulSet.
async fn executor_replicas(cluster: &Cluster) -> usize {
    let statefulset = format!("statefulset/{}-executor", cluster.fullname);
    cluster
        .system_ok(&["get", &statefulset, "-o", "jsonpath={.spec.replicas}"])
        .await
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_pods_pass_pod_security_restricted_and_are_reused_reaped_and_capped() {
    let cluster = Cluster::from_env();
    // The functions' namespace enforces the restricted profile: a runtime pod asking for less
    // would be refused by admission and no invocation below could run.
    let namespace: Value = serde_json::from_str(
        &cluster.kubectl_ok(&["get", "namespace", &cluster.namespace, "-o", "json"]).await,
    )
    .unwrap();
    assert_eq!(
        namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"], "restricted",
        "the test namespace must enforce Pod Security restricted"
    );

    cluster
        .apply(&function(
            "pods",
            "python",
            "main.handler",
            "import os\ndef handler(event, context):\n    return {'uid': os.getuid(), 'pid': os.getpid()}",
            "  resources:\n    memory: 128Mi\n    cpu: 100m\n",
        ))
        .await;
    let ready = cluster.wait_phase("function/pods", "Ready").await;
    // Invocations land on any of the executors, and each runs its own pods: at most one cold
    // start per executor, the rest reuse a warm pod (the same process answers again).
    let executors = executor_replicas(&cluster).await;
    let mut colds = 0;
    let mut pids = std::collections::BTreeMap::<i64, usize>::new();
    for n in 0..=2 * executors {
        let name = format!("pods-{n}");
        cluster.invoke(&name, "pods", "{}").await;
        let done = cluster.wait_phase(&format!("invocation/{name}"), "Succeeded").await;
        assert_ne!(done["status"]["result"]["uid"], 0, "functions never run as root");
        colds += usize::from(done["status"]["metrics"]["coldStart"] == true);
        *pids.entry(done["status"]["result"]["pid"].as_i64().unwrap()).or_default() += 1;
    }
    assert!((1..=executors).contains(&colds), "{colds} cold starts on {executors} executors");
    assert!(pids.values().any(|&n| n > 1), "no warm pod answered twice: {pids:?}");
    cluster
        .eventually(async || {
            let status = cluster.get("function/pods").await["status"].clone();
            match status["warmInstances"].as_i64() {
                Some(n) if n >= 1 => Ok(()),
                _ => Err(format!("warmInstances never counted the pod: {status}")),
            }
        })
        .await;

    // The pod as the kubelet runs it: owned by the Function, restricted, limited, on a pod
    // network address, its container started by containerd from the runtime image.
    let pods = cluster.pods_of("pods").await;
    assert_eq!(pods.len(), colds, "one pod per cold start serves the invocations");
    let pod = &pods[0];
    assert!(is_ready(pod), "{}", pod["status"]);
    let ip = pod["status"]["podIP"].as_str().unwrap();
    assert!(!ip.starts_with("127."), "a real pod network address: {ip}");
    let owner = &pod["metadata"]["ownerReferences"][0];
    assert_eq!(owner["kind"], "Function");
    assert_eq!(owner["uid"], ready["metadata"]["uid"]);
    assert_eq!(pod["spec"]["automountServiceAccountToken"], false);
    assert_eq!(pod["spec"]["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
    let container = &pod["spec"]["containers"][0];
    let security = &container["securityContext"];
    assert_eq!(security["runAsNonRoot"], true);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(container["resources"]["limits"]["memory"], (128u64 << 20).to_string());
    assert_eq!(container["resources"]["limits"]["cpu"], "100m");
    let image = container["image"].as_str().unwrap();
    assert!(image.ends_with("kubefaas/runtime-python:3.13"), "{image}");
    let status = &pod["status"]["containerStatuses"][0];
    assert!(status["containerID"].as_str().unwrap().starts_with("containerd://"), "{status}");

    // Scaling: an idle pod is reaped after idleTimeoutSeconds, minWarm pods are kept (and
    // started), maxInstances caps the pods however many invocations wait.
    let sleepy = "import time\ndef handler(event, context):\n    time.sleep(event.get('sleep', 0))\n    return 'ok'";
    for (name, scaling) in [
        ("idle", "minWarm: 0, maxInstances: 3, idleTimeoutSeconds: 1"),
        ("warm", "minWarm: 2, maxInstances: 2, idleTimeoutSeconds: 1"),
        ("single", "minWarm: 0, maxInstances: 1, idleTimeoutSeconds: 600"),
    ] {
        let extra = format!("  maxConcurrency: 3\n  scaling: {{{scaling}}}\n");
        cluster.apply(&function(name, "python", "main.handler", sleepy, &extra)).await;
        cluster.wait_phase(&format!("function/{name}"), "Ready").await;
    }
    let invocations = [
        ("idle-1", "idle"),
        ("warm-1", "warm"),
        ("single-1", "single"),
        ("single-2", "single"),
        ("single-3", "single"),
    ];
    for (invocation, function) in invocations {
        cluster.invoke(invocation, function, "{sleep: 1}").await;
    }
    for (invocation, _) in invocations {
        cluster.wait_phase(&format!("invocation/{invocation}"), "Succeeded").await;
    }
    // minWarm and maxInstances count per executor (the Function's field docs say so): every
    // executor of the StatefulSet keeps its own minWarm pods and runs at most maxInstances.
    cluster.wait_ready_pods("idle", 0).await;
    cluster.wait_ready_pods("warm", 2 * executors).await;
    let single = cluster.pods_of("single").await.len();
    assert!(
        (1..=executors).contains(&single),
        "maxInstances 1 on {executors} executors: three invocations took turns on {single} pods"
    );
    // Observed over several idle timeouts: the minWarm pods stay.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let warm = cluster.pods_of("warm").await.iter().filter(|p| is_ready(p)).count();
    assert_eq!(warm, 2 * executors);
    cluster.delete_functions(&["pods", "idle", "warm", "single"]).await;

    memory_hog_fails_out_of_memory(&cluster, "pod-hog").await;
    cluster.delete_functions(&["pod-hog"]).await;

    // envFrom: the pod carries references, and the kubelet resolves them; a missing Secret
    // keeps the container from starting, which fails the attempt naming it.
    cluster
        .apply("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  MODE: from-configmap\n")
        .await;
    cluster
        .apply("apiVersion: v1\nkind: Secret\nmetadata:\n  name: db\nstringData:\n  PASSWORD: s3cret\n")
        .await;
    let reader = "import os\ndef handler(event, context):\n    return {k: os.environ.get(k) for k in event['keys']}";
    let sources = "  env: {LEVEL: from-env}\n  envFrom:\n  - configMapRef: {name: settings}\n  - secretRef: {name: db}\n    prefix: DB_\n";
    cluster.apply(&function("configured", "python", "main.handler", reader, sources)).await;
    cluster.wait_phase("function/configured", "Ready").await;
    cluster.invoke("configured-1", "configured", "{keys: [MODE, LEVEL, DB_PASSWORD]}").await;
    let done = cluster.wait_phase("invocation/configured-1", "Succeeded").await;
    assert_eq!(
        done["status"]["result"],
        json!({"MODE": "from-configmap", "LEVEL": "from-env", "DB_PASSWORD": "s3cret"})
    );
    let spec = serde_json::to_string(&cluster.pods_of("configured").await).unwrap();
    assert!(!spec.contains("s3cret"), "a Secret's value is written into the pod spec");
    let missing = "  retry: {maxAttempts: 1}\n  envFrom:\n  - secretRef: {name: absent}\n";
    cluster.apply(&function("unconfigured", "python", "main.handler", reader, missing)).await;
    cluster.wait_phase("function/unconfigured", "Ready").await;
    cluster.invoke("unconfigured-1", "unconfigured", "{keys: [TOKEN]}").await;
    let failed = cluster.wait_phase("invocation/unconfigured-1", "Failed").await;
    let message = failed["status"]["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("\"absent\" not found"), "{}", failed["status"]);
    cluster.delete_functions(&["configured", "unconfigured"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rest_gateway_manages_and_invokes_functions_through_its_service() {
    let cluster = Cluster::from_env();
    let gateway = Gateway::connect(&cluster).await;
    let ns = &cluster.namespace;

    // Tokens are on, as the chart installs it.
    let (status, _) = gateway.call_as(None, "GET", "/functions", None).await;
    assert_eq!(status, 401, "a request without a token is refused");

    let python =
        "def handler(event, context):\n    return {'message': 'Hello, ' + event['name'] + '!'}\n";
    let node = "exports.handler = async (event) => ({ message: `Hello, ${event.name}!` });\n";
    let created = gateway
        .expect(
            201,
            "POST",
            &format!("/functions?namespace={ns}"),
            Some(&json!({
                "name": "rest-hello", "runtime": "python", "handler": "main.handler",
                "code": b64(python), "timeout": 20, "memory_mb": 128,
            })),
        )
        .await;
    assert_eq!(created["status"], "ready", "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    gateway
        .expect(
            201,
            "POST",
            &format!("/functions?namespace={ns}"),
            Some(&json!({
                "name": "rest-node", "runtime": "nodejs", "handler": "index.handler",
                "code": b64(node),
            })),
        )
        .await;
    // The function is a resource like any other.
    let resource = cluster.get("function/rest-hello").await;
    assert_eq!(resource["spec"]["resources"]["memory"], "128Mi", "{}", resource["spec"]);

    for (function, name) in [("rest-hello", "py"), ("rest-node", "node")] {
        let reply = gateway
            .expect(
                200,
                "POST",
                &format!("/functions/{function}/invoke?namespace={ns}"),
                Some(&json!({"name": name})),
            )
            .await;
        assert_eq!(reply, json!({"message": format!("Hello, {name}!")}));
    }

    let accepted = gateway
        .expect(
            202,
            "POST",
            &format!("/invoke?namespace={ns}"),
            Some(&json!({"function_id": id, "payload": {"name": "async"}})),
        )
        .await;
    let invocation = accepted["invocation_id"].as_str().unwrap();
    let done = gateway.finished(&cluster, invocation).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["result"], json!({"message": "Hello, async!"}));

    let bonjour =
        "def handler(event, context):\n    return {'message': 'Bonjour, ' + event['name'] + '!'}\n";
    let path = format!("/functions/rest-hello?namespace={ns}");
    gateway.expect(200, "PUT", &path, Some(&json!({"code": b64(bonjour)}))).await;
    let reply = gateway
        .expect(
            200,
            "POST",
            &format!("/functions/rest-hello/invoke?namespace={ns}"),
            Some(&json!({"name": "vous"})),
        )
        .await;
    assert_eq!(reply, json!({"message": "Bonjour, vous!"}));

    gateway.expect(204, "DELETE", &path, None).await;
    let (status, _) = gateway.call("GET", &path, None).await;
    assert_eq!(status, 404);
    gateway.expect(200, "GET", &format!("/invocations/{invocation}"), None).await;
    let gone = cluster.kubectl(&["get", "function", "rest-hello"]).await;
    assert!(!gone.status.success(), "the Function resource is deleted with it");
    gateway.expect(204, "DELETE", &format!("/functions/rest-node?namespace={ns}"), None).await;
}
