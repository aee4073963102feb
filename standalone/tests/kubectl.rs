//! The real `kubectl` against an in-process server: every test starts its own.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Harness, PATIENCE, repo};
use tokio::io::{AsyncBufReadExt, BufReader};

fn example(name: &str) -> String {
    repo().join("examples").join(name).to_str().unwrap().to_owned()
}

fn examples() -> String {
    repo().join("examples").to_str().unwrap().to_owned()
}

async fn with_hello() -> Harness {
    let h = Harness::start().await;
    h.install_crds().await;
    h.kubectl_ok(&["apply", "-f", &example("function.yaml")]).await;
    h
}

const READY: &str = r#"{"status":{"phase":"Ready"}}"#;

#[tokio::test]
async fn kubectl_creates_a_namespace_and_objects_in_it() {
    let h = Harness::start().await;
    let out = h.kubectl_ok(&["create", "namespace", "team-a"]).await;
    assert_eq!(out.trim(), "namespace/team-a created");
    h.kubectl_ok(&["-n", "team-a", "create", "configmap", "settings", "--from-literal=mode=fast"])
        .await;
    h.kubectl_ok(&[
        "-n",
        "team-a",
        "create",
        "secret",
        "generic",
        "token",
        "--from-literal=t=s3cr3t",
    ])
    .await;
    let cms = h.kubectl_ok(&["-n", "team-a", "get", "configmaps"]).await;
    assert!(cms.starts_with("NAME") && cms.contains("settings   1"), "{cms}");
    let secret =
        h.kubectl_ok(&["-n", "team-a", "get", "secret/token", "-o", "jsonpath={.type} {.data.t}"]);
    assert_eq!(secret.await, "Opaque czNjcjN0");
    assert_eq!(h.jsonpath("namespace/team-a", "{.status.phase}").await, "Active");

    let err =
        h.kubectl_err(&["-n", "missing", "create", "configmap", "x", "--from-literal=a=b"]).await;
    assert!(err.contains("namespaces \"missing\" not found"), "{err}");
    let err = h.kubectl_err(&["create", "namespace", "team-a"]).await;
    assert!(err.contains("AlreadyExists") && err.contains("\"team-a\" already exists"), "{err}");

    h.kubectl_ok(&["delete", "namespace", "team-a"]).await;
    let err = h.kubectl_err(&["-n", "team-a", "get", "configmap", "settings"]).await;
    assert!(err.contains("NotFound"), "{err}");
}

#[tokio::test]
async fn kubectl_applies_the_project_crds_and_examples_and_shows_printer_columns() {
    let h = Harness::start().await;
    h.install_crds().await;
    let crds = h.kubectl_ok(&["get", "crds"]).await;
    assert!(crds.contains("functions.kubefaas.io") && crds.contains("invocations.kubefaas.io"));
    let out = h.kubectl_ok(&["apply", "-f", &examples()]).await;
    assert!(out.contains("function.kubefaas.io/hello created"), "{out}");
    assert!(out.contains("invocation.kubefaas.io/hello-once created"), "{out}");

    let table = h.kubectl_ok(&["get", "fn"]).await;
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "RUNTIME", "PHASE", "WARM", "INVOKED", "AGE"]);
    assert!(table.lines().any(|l| l.starts_with("hello ") && l.contains("python")), "{table}");
    let wide = h.kubectl_ok(&["get", "functions.kubefaas.io", "hello", "-o", "wide"]).await;
    assert!(wide.contains("HANDLER") && wide.contains("main.handler"), "{wide}");
    let all = h.kubectl_ok(&["get", "kubefaas"]).await;
    assert!(all.contains("function.kubefaas.io/hello"), "{all}");
    assert!(all.contains("invocation.kubefaas.io/hello-once"), "{all}");

    let again = h.kubectl_ok(&["apply", "-f", &example("function.yaml")]).await;
    assert_eq!(again.trim(), "function.kubefaas.io/hello unchanged");
}

#[tokio::test]
async fn kubectl_reapplies_an_edit_client_side_and_server_side() {
    let h = with_hello().await;
    let timeout_and_generation = "{.spec.timeoutSeconds} {.metadata.generation}";
    assert_eq!(h.jsonpath("fn/hello", timeout_and_generation).await, "30 1");

    let original = std::fs::read_to_string(example("function.yaml")).unwrap();
    let edited = h.dir.join("function.yaml");
    let file = edited.to_str().unwrap();
    std::fs::write(&edited, original.replace("timeoutSeconds: 30", "timeoutSeconds: 45")).unwrap();
    let out = h.kubectl_ok(&["apply", "-f", file]).await;
    assert_eq!(out.trim(), "function.kubefaas.io/hello configured");
    assert_eq!(h.jsonpath("fn/hello", timeout_and_generation).await, "45 2");

    std::fs::write(&edited, original.replace("timeoutSeconds: 30", "timeoutSeconds: 50")).unwrap();
    let err = h.kubectl_err(&["apply", "--server-side", "-f", file]).await;
    assert!(err.contains("conflict with \"kubectl-client-side-apply\""), "{err}");
    assert!(err.contains(".spec.timeoutSeconds"), "{err}");
    let out = h.kubectl_ok(&["apply", "--server-side", "--force-conflicts", "-f", file]).await;
    assert_eq!(out.trim(), "function.kubefaas.io/hello serverside-applied");
    assert_eq!(h.jsonpath("fn/hello", timeout_and_generation).await, "50 3");

    // A server-side apply that leaves a field out removes it, if nobody else owns it.
    let config = "apiVersion: kubefaas.io/v1alpha1\nkind: Function\nmetadata:\n  name: ssa\n  \
        labels:\n    a: one\n    b: two\nspec:\n  runtime: python\n  handler: main.handler\n  \
        code:\n    inline: 'def handler(e, c): return 1'\n";
    h.kubectl_stdin(&["apply", "--server-side", "-f", "-"], config).await;
    h.kubectl_stdin(&["apply", "--server-side", "-f", "-"], &config.replace("    b: two\n", ""))
        .await;
    assert_eq!(h.jsonpath("fn/ssa", "{.metadata.labels}").await, r#"{"a":"one"}"#);
    let managers = "jsonpath={.metadata.managedFields[*].manager}";
    let out = h.kubectl_ok(&["get", "fn/ssa", "--show-managed-fields", "-o", managers]).await;
    assert_eq!(out, "kubectl");
}

#[tokio::test]
async fn kubectl_get_yaml_shows_server_set_metadata_and_schema_defaults() {
    let h = with_hello().await;
    let yaml = h.kubectl_ok(&["get", "function", "hello", "-o", "yaml"]).await;
    for expected in [
        "apiVersion: kubefaas.io/v1alpha1",
        "kind: Function",
        "  name: hello",
        "  namespace: default",
        "  generation: 1",
        "  uid: ",
        "  creationTimestamp: ",
        "  resourceVersion: ",
        "  runtime: python",
        "  maxConcurrency: 10",
    ] {
        assert!(yaml.contains(expected), "missing {expected:?} in:\n{yaml}");
    }
    assert!(!yaml.contains("status:"), "a new function has no status:\n{yaml}");
}

#[tokio::test]
async fn kubectl_get_watch_sees_an_update() {
    let h = with_hello().await;
    let columns = "custom-columns=EVENT:.type,TIMEOUT:.object.spec.timeoutSeconds";
    let mut watch =
        h.kubectl_spawn(&["get", "fn/hello", "-w", "--output-watch-events", "-o", columns]);
    let mut lines = BufReader::new(watch.stdout.take().unwrap()).lines();
    let mut next_words = async || {
        let line = tokio::time::timeout(PATIENCE, lines.next_line()).await.expect("watch output");
        line.unwrap().expect("a line").split_whitespace().map(str::to_owned).collect::<Vec<_>>()
    };
    assert_eq!(next_words().await, ["EVENT", "TIMEOUT"]);
    assert_eq!(next_words().await, ["ADDED", "30"]);
    h.patch_ok("fn/hello", "merge", r#"{"spec":{"timeoutSeconds":40}}"#).await;
    assert_eq!(next_words().await, ["MODIFIED", "40"]);
    watch.kill().await.unwrap();
}

#[tokio::test]
async fn kubectl_label_and_select_by_label() {
    let h = Harness::start().await;
    h.install_crds().await;
    h.kubectl_ok(&["apply", "-f", &examples()]).await;
    h.kubectl_ok(&["label", "fn", "hello", "tier=web"]).await;
    h.kubectl_ok(&["label", "fn", "hello-go", "tier=batch"]).await;
    let names = async |selector: &str| {
        h.kubectl_ok(&["get", "fn", "-l", selector, "-o", "jsonpath={.items[*].metadata.name}"])
            .await
    };
    assert_eq!(names("tier=web").await, "hello");
    assert_eq!(names("tier!=web").await, "hello-go hello-node");
    assert_eq!(names("tier in (web,batch)").await, "hello hello-go");
    assert_eq!(names("tier notin (web)").await, "hello-go hello-node");
    assert_eq!(names("tier").await, "hello hello-go");
    assert_eq!(names("!tier").await, "hello-node");
    let field =
        h.kubectl_ok(&["get", "fn", "--field-selector", "metadata.name=hello-go", "-o", "name"]);
    assert_eq!(field.await.trim(), "function.kubefaas.io/hello-go");
    h.kubectl_ok(&["label", "fn", "hello", "tier-"]).await;
    assert_eq!(names("tier").await, "hello-go");
    let err = h.kubectl_err(&["label", "fn", "hello-go", "tier=web"]).await;
    assert!(err.contains("already has a value"), "{err}");
}

#[tokio::test]
async fn kubectl_patch_merge_and_json_and_schema_errors_name_the_field() {
    let h = with_hello().await;
    h.patch_ok("fn/hello", "merge", r#"{"spec":{"env":{"EXTRA":"1"}}}"#).await;
    let replace = r#"[{"op":"replace","path":"/spec/timeoutSeconds","value":20}]"#;
    h.patch_ok("fn/hello", "json", replace).await;
    let out =
        h.jsonpath("fn/hello", "{.spec.env.EXTRA} {.spec.timeoutSeconds} {.metadata.generation}");
    assert_eq!(out.await, "1 20 3");

    let err = h.patch_err("fn/hello", "merge", r#"{"spec":{"runtime":"cobol"}}"#).await;
    let expected = "The Function \"hello\" is invalid: spec.runtime: Unsupported value: \"cobol\"";
    assert!(err.contains(expected), "{err}");
    let err = h.patch_err("fn/hello", "merge", r#"{"spec":{"timeoutSeconds":"soon"}}"#).await;
    assert!(
        err.contains("spec.timeoutSeconds") && err.contains("must be of type integer"),
        "{err}"
    );
    let err = h.patch_err("fn/hello", "json", r#"[{"op":"remove","path":"/spec/nothing"}]"#).await;
    assert!(err.to_lowercase().contains("invalid"), "{err}");
    let err = h.patch_err("fn/hello", "strategic", r#"{"spec":{"timeoutSeconds":21}}"#).await;
    assert!(err.contains("strategic-merge-patch+json is not supported"), "{err}");

    // Status is only written through the status subresource.
    h.patch_ok("fn/hello", "merge", READY).await;
    assert_eq!(h.jsonpath("fn/hello", "{.status.phase}").await, "");
    h.patch_status("fn/hello", READY).await;
    assert_eq!(h.jsonpath("fn/hello", "{.status.phase} {.metadata.generation}").await, "Ready 3");
}

#[tokio::test]
async fn kubectl_delete_waits_for_a_finalizer_to_be_released() {
    let h = with_hello().await;
    h.patch_ok("fn/hello", "merge", r#"{"metadata":{"finalizers":["kubefaas.io/test"]}}"#).await;
    let out = h.kubectl_ok(&["delete", "fn", "hello", "--wait=false"]).await;
    assert_eq!(out.trim(), "function.kubefaas.io \"hello\" deleted");
    let held = h.jsonpath("fn/hello", "{.metadata.deletionTimestamp}").await;
    assert!(!held.is_empty(), "the object is held with a deletionTimestamp");
    let more = r#"{"metadata":{"finalizers":["kubefaas.io/test","kubefaas.io/other"]}}"#;
    let err = h.patch_err("fn/hello", "merge", more).await;
    assert!(err.contains("finalizers"), "{err}");

    let release = r#"[{"op":"remove","path":"/metadata/finalizers"}]"#;
    let (waited, released) = tokio::join!(
        h.kubectl(&["wait", "--for=delete", "fn/hello", "--timeout=15s"]),
        h.patch("fn/hello", "json", release, &[]),
    );
    assert!(released.status.success(), "{}", String::from_utf8_lossy(&released.stderr));
    assert!(waited.status.success(), "{}", String::from_utf8_lossy(&waited.stderr));
    let err = h.kubectl_err(&["get", "fn", "hello"]).await;
    assert!(err.contains("functions.kubefaas.io \"hello\" not found"), "{err}");
}

#[tokio::test]
async fn kubectl_wait_for_jsonpath_returns_once_the_status_matches() {
    let h = with_hello().await;
    let (waited, ()) = tokio::join!(
        h.kubectl(&[
            "wait",
            "--for=jsonpath={.status.phase}=Ready",
            "function/hello",
            "--timeout=15s"
        ]),
        h.patch_status("fn/hello", READY),
    );
    assert!(waited.status.success(), "{}", String::from_utf8_lossy(&waited.stderr));
    let out = String::from_utf8_lossy(&waited.stdout);
    assert_eq!(out.trim(), "function.kubefaas.io/hello condition met");
}

#[tokio::test]
async fn kubectl_explain_shows_the_crd_field_documentation() {
    let h = Harness::start().await;
    h.install_crds().await;
    let out = h.kubectl_ok(&["explain", "function.spec.code"]).await;
    assert!(out.contains("KIND:       Function") && out.contains("VERSION:    v1alpha1"), "{out}");
    assert!(out.contains("FIELD: code <Object>") && out.contains("inline\t<string>"), "{out}");
    let out = h.kubectl_ok(&["explain", "fn.spec.runtime"]).await;
    assert!(out.contains("FIELD: runtime <string>"), "{out}");
}

#[tokio::test]
async fn kubectl_api_resources_lists_builtins_and_custom_resources() {
    let h = Harness::start().await;
    h.install_crds().await;
    let out = h.kubectl_ok(&["api-resources"]).await;
    for line in ["configmaps", "leases", "customresourcedefinitions", "functions"] {
        assert!(out.lines().any(|l| l.starts_with(line)), "{line} missing:\n{out}");
    }
    let functions: Vec<&str> =
        out.lines().find(|l| l.starts_with("functions")).unwrap().split_whitespace().collect();
    assert_eq!(functions, ["functions", "fn", "kubefaas.io/v1alpha1", "true", "Function"]);
    let version = h.kubectl_ok(&["version", "-o", "json"]).await;
    assert!(version.contains("serverVersion"), "{version}");
}

#[tokio::test]
async fn events_recorded_by_a_controller_show_in_kubectl_describe_and_get_events() {
    use kube::Resource;
    use kube::runtime::events::{Event, EventType, Recorder};
    let h = with_hello().await;
    let api: kube::Api<kubefaas_core::resources::Function> =
        kube::Api::default_namespaced(h.client());
    let function = api.get("hello").await.unwrap();
    let recorder = Recorder::new(h.client(), "kubefaas-operator".into());
    let event = Event {
        type_: EventType::Normal,
        reason: "CodeStored".into(),
        note: Some("stored 180 bytes".into()),
        action: "StoreCode".into(),
        secondary: None,
    };
    recorder.publish(&event, &function.object_ref(&())).await.unwrap();
    recorder.publish(&event, &function.object_ref(&())).await.unwrap();

    let events = h.kubectl_ok(&["get", "events"]).await;
    assert!(events.contains("CodeStored") && events.contains("function/hello"), "{events}");
    let describe = h.kubectl_ok(&["describe", "fn", "hello"]).await;
    let line = describe.lines().find(|l| l.contains("CodeStored")).unwrap_or_default();
    let words: Vec<&str> = line.split_whitespace().collect();
    assert!(words.starts_with(&["Normal", "CodeStored"]), "{describe}");
    assert!(line.contains("kubefaas-operator") && line.contains("stored 180 bytes"), "{line}");
    let count = h.kubectl_ok(&["get", "events", "-o", "jsonpath={.items[0].count}"]).await;
    let series = h.kubectl_ok(&[
        "get",
        "events.v1.events.k8s.io",
        "-o",
        "jsonpath={.items[0].series.count}",
    ]);
    assert_eq!((count.as_str(), series.await.as_str()), ("", "2"), "a repeat becomes a series");
}
