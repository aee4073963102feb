//! The `kube` Rust client (typed, dynamic, watcher, controller) against an in-process server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Harness, eventually, scratch_dir};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
    WatchEvent, WatchParams,
};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use kubefaas_core::resources::{Function, FunctionCode, FunctionSpec};
use kubefaas_standalone::Config;
use serde_json::json;

fn function(name: &str) -> Function {
    Function::new(
        name,
        FunctionSpec::new(
            "python",
            "main.handler",
            FunctionCode::inline("def handler(e, c):\n    return e\n"),
        ),
    )
}

async fn harness() -> (Harness, Api<Function>) {
    let h = Harness::start().await;
    h.install_crds().await;
    let api = Api::namespaced(h.client(), "default");
    (h, api)
}

fn status_code(err: &kube::Error) -> (u16, String) {
    match err {
        kube::Error::Api(status) => (status.code, status.reason.clone()),
        other => panic!("not an API error: {other}"),
    }
}

#[tokio::test]
async fn typed_crud_on_functions() {
    let (_h, api) = harness().await;
    let created = api.create(&PostParams::default(), &function("echo")).await.unwrap();
    assert_eq!(created.metadata.generation, Some(1));
    assert!(created.metadata.uid.is_some() && created.metadata.creation_timestamp.is_some());

    let mut fetched = api.get("echo").await.unwrap();
    assert_eq!(fetched.spec, created.spec);
    fetched.spec.timeout_seconds = 12;
    let replaced = api.replace("echo", &PostParams::default(), &fetched).await.unwrap();
    assert_eq!(replaced.metadata.generation, Some(2));

    let patched = api
        .patch(
            "echo",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"app": "echo"}}})),
        )
        .await
        .unwrap();
    assert_eq!(patched.labels().get("app").map(String::as_str), Some("echo"));
    assert_eq!(patched.metadata.generation, Some(2), "metadata changes do not bump generation");

    let names: Vec<String> = api
        .list(&ListParams::default().labels("app=echo"))
        .await
        .unwrap()
        .iter()
        .map(|f| f.name_any())
        .collect();
    assert_eq!(names, ["echo"]);

    let err = api.create(&PostParams::default(), &function("echo")).await.unwrap_err();
    assert_eq!(status_code(&err), (409, "AlreadyExists".into()));
    api.delete("echo", &DeleteParams::default()).await.unwrap();
    let err = api.get("echo").await.unwrap_err();
    assert_eq!(status_code(&err), (404, "NotFound".into()));
}

#[tokio::test]
async fn invalid_function_is_rejected_with_the_field_named() {
    let (_h, api) = harness().await;
    let mut bad = function("bad");
    bad.spec.timeout_seconds = 0;
    let err = api.create(&PostParams::default(), &bad).await.unwrap_err();
    let kube::Error::Api(status) = &err else { panic!("{err}") };
    assert_eq!((status.code, status.reason.as_str()), (422, "Invalid"));
    assert!(status.message.contains("spec.timeoutSeconds"), "{}", status.message);
}

#[tokio::test]
async fn update_with_a_stale_resource_version_conflicts() {
    let (_h, api) = harness().await;
    api.create(&PostParams::default(), &function("racy")).await.unwrap();
    let mut first = api.get("racy").await.unwrap();
    let mut second = first.clone();
    first.spec.timeout_seconds = 10;
    api.replace("racy", &PostParams::default(), &first).await.unwrap();
    second.spec.timeout_seconds = 20;
    let err = api.replace("racy", &PostParams::default(), &second).await.unwrap_err();
    assert_eq!(status_code(&err), (409, "Conflict".into()));
    assert_eq!(api.get("racy").await.unwrap().spec.timeout_seconds, 10);
}

#[tokio::test]
async fn status_subresource_writes_only_status_and_main_writes_ignore_it() {
    let (_h, api) = harness().await;
    api.create(&PostParams::default(), &function("st")).await.unwrap();
    let patched = api
        .patch_status(
            "st",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Ready"}, "spec": {"timeoutSeconds": 5}})),
        )
        .await
        .unwrap();
    assert_eq!(patched.spec.timeout_seconds, 30, "status writes leave spec alone");
    assert_eq!(patched.metadata.generation, Some(1), "status writes do not bump generation");
    let mut main = patched.clone();
    main.status.as_mut().unwrap().phase = None;
    main.spec.timeout_seconds = 7;
    let replaced = api.replace("st", &PostParams::default(), &main).await.unwrap();
    assert!(replaced.status.unwrap().phase.is_some(), "main writes keep the stored status");
    assert_eq!(replaced.metadata.generation, Some(2));
}

#[tokio::test]
async fn watcher_sees_creates_updates_and_deletes() {
    let (_h, api) = harness().await;
    api.create(&PostParams::default(), &function("before")).await.unwrap();
    let mut events = watcher(api.clone(), watcher::Config::default()).boxed();
    let mut next = async || {
        tokio::time::timeout(common::PATIENCE, events.try_next()).await.unwrap().unwrap().unwrap()
    };
    assert!(matches!(next().await, watcher::Event::Init));
    assert!(matches!(next().await, watcher::Event::InitApply(f) if f.name_any() == "before"));
    assert!(matches!(next().await, watcher::Event::InitDone));

    api.create(&PostParams::default(), &function("during")).await.unwrap();
    assert!(matches!(next().await, watcher::Event::Apply(f) if f.name_any() == "during"));
    api.patch(
        "during",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"timeoutSeconds": 9}})),
    )
    .await
    .unwrap();
    assert!(matches!(next().await, watcher::Event::Apply(f) if f.spec.timeout_seconds == 9));
    api.delete("during", &DeleteParams::default()).await.unwrap();
    assert!(matches!(next().await, watcher::Event::Delete(f) if f.name_any() == "during"));
}

#[tokio::test]
async fn watch_from_a_version_older_than_the_history_gets_410() {
    let h = Harness::start_with(Config { history: 3, ..Config::default() }).await;
    let api: Api<ConfigMap> = Api::namespaced(h.client(), "default");
    for i in 0..6 {
        let cm: ConfigMap =
            serde_json::from_value(json!({"metadata": {"name": format!("cm{i}")}})).unwrap();
        api.create(&PostParams::default(), &cm).await.unwrap();
    }
    let mut stream = api.watch(&WatchParams::default(), "1").await.unwrap().boxed();
    let first =
        tokio::time::timeout(common::PATIENCE, stream.next()).await.unwrap().unwrap().unwrap();
    let WatchEvent::Error(status) = first else { panic!("expected an error event, got {first:?}") };
    assert_eq!(status.code, 410);

    // A recent version still works, and bookmarks arrive when asked for.
    let latest = api.list(&ListParams::default()).await.unwrap().metadata.resource_version.unwrap();
    let mut stream = api.watch(&WatchParams::default().timeout(5), &latest).await.unwrap().boxed();
    api.delete("cm0", &DeleteParams::default()).await.unwrap();
    let event =
        tokio::time::timeout(common::PATIENCE, stream.next()).await.unwrap().unwrap().unwrap();
    assert!(matches!(event, WatchEvent::Deleted(cm) if cm.name_any() == "cm0"));
}

/// `max_watch` cuts every watch at the server's limit, however long the client asked for, so
/// tests can make clients resume (and, with a short history, relist) under load.
#[tokio::test]
async fn a_watch_ends_at_the_servers_limit_whatever_its_client_asked_for() {
    let h = Harness::start_with(Config {
        max_watch: Some(Duration::from_secs(1)),
        ..Config::default()
    })
    .await;
    let api: Api<ConfigMap> = Api::namespaced(h.client(), "default");
    let rv = api.list(&ListParams::default()).await.unwrap().metadata.resource_version.unwrap();
    let mut stream = api.watch(&WatchParams::default().timeout(290), &rv).await.unwrap().boxed();
    api.create(&PostParams::default(), &config_map("during", "v")).await.unwrap();
    let ended = tokio::time::timeout(common::PATIENCE, async {
        let mut names = Vec::new();
        while let Some(event) = stream.next().await {
            if let WatchEvent::Added(cm) = event.unwrap() {
                names.push(cm.name_any());
            }
        }
        names
    })
    .await
    .expect("the watch ends long before the 290 s its client asked for");
    assert_eq!(ended, ["during"], "it served its events until it ended");
}

#[tokio::test]
async fn watch_sends_bookmarks_when_asked() {
    let h = Harness::start_with(Config {
        bookmark_interval: Duration::from_millis(100),
        ..Config::default()
    })
    .await;
    let api: Api<ConfigMap> = Api::namespaced(h.client(), "default");
    let rv = api.list(&ListParams::default()).await.unwrap().metadata.resource_version.unwrap();
    let mut stream = api.watch(&WatchParams::default().timeout(5), &rv).await.unwrap().boxed();
    let event =
        tokio::time::timeout(common::PATIENCE, stream.next()).await.unwrap().unwrap().unwrap();
    assert!(matches!(event, WatchEvent::Bookmark(_)), "{event:?}");
}

#[tokio::test]
async fn deleting_an_owner_garbage_collects_its_dependents() {
    let (h, api) = harness().await;
    let owner = api.create(&PostParams::default(), &function("owner")).await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(h.client(), "default");
    let owner_ref = owner.controller_owner_ref(&()).unwrap();
    for name in ["code", "kept"] {
        let mut cm: ConfigMap =
            serde_json::from_value(json!({"metadata": {"name": name}, "data": {"k": "v"}}))
                .unwrap();
        cm.metadata.owner_references = Some(vec![owner_ref.clone()]);
        cms.create(&PostParams::default(), &cm).await.unwrap();
    }
    // `kept` has a second, live owner: losing one owner must not delete it.
    let other = api.create(&PostParams::default(), &function("other")).await.unwrap();
    let mut kept = cms.get("kept").await.unwrap();
    kept.metadata.owner_references.as_mut().unwrap().push(other.owner_ref(&()).unwrap());
    cms.replace("kept", &PostParams::default(), &kept).await.unwrap();

    api.delete("owner", &DeleteParams::background()).await.unwrap();
    eventually("the owned ConfigMap to be collected", || async {
        cms.get_opt("code").await.unwrap().is_none()
    })
    .await;
    let kept = cms.get("kept").await.unwrap();
    assert_eq!(kept.owner_references().len(), 1);
    assert_eq!(kept.owner_references()[0].name, "other");

    // Orphan propagation leaves dependents alone.
    api.delete("other", &DeleteParams::orphan()).await.unwrap();
    let kept = cms.get("kept").await.unwrap();
    assert!(kept.owner_references().is_empty());
}

#[tokio::test]
async fn dynamic_objects_and_paginated_lists() {
    let (h, _) = harness().await;
    let resource = ApiResource::erase::<Function>(&());
    let api: Api<DynamicObject> = Api::namespaced_with(h.client(), "default", &resource);
    for i in 0..5 {
        let obj = DynamicObject::new(&format!("dyn{i}"), &resource).data(json!({
            "spec": {"runtime": "nodejs", "handler": "index.handler", "code": {"inline": "exports.handler = async () => 1"}}
        }));
        api.create(&PostParams::default(), &obj).await.unwrap();
    }
    let mut names = Vec::new();
    let mut params = ListParams::default().limit(2);
    loop {
        let page = api.list(&params).await.unwrap();
        assert!(page.items.len() <= 2);
        names.extend(page.items.iter().map(ResourceExt::name_any));
        match page.metadata.continue_ {
            Some(token) if !token.is_empty() => params = params.continue_token(&token),
            _ => break,
        }
    }
    assert_eq!(names, ["dyn0", "dyn1", "dyn2", "dyn3", "dyn4"]);
    let deleted = api
        .delete_collection(
            &DeleteParams::default(),
            &ListParams::default().fields("metadata.name!=dyn0"),
        )
        .await
        .unwrap();
    assert_eq!(deleted.left().map(|l| l.items.len()), Some(4));
    assert_eq!(api.list(&ListParams::default()).await.unwrap().items.len(), 1);
}

fn config_map(name: &str, value: &str) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name}, "data": {"v": value}})).unwrap()
}

/// Every page of one list shows the objects as they were when the first page was served, and
/// a watch from the list's version delivers everything that changed since — including objects
/// created, changed or deleted in pages already served. (The server once served each page from
/// the current state under the current version: an object created mid-list before the cursor
/// was in no page and in no watch, and the operator never reconciled it.)
#[tokio::test]
async fn a_paginated_list_is_one_snapshot_and_a_watch_from_it_misses_nothing() {
    let h = Harness::start().await;
    let api: Api<ConfigMap> = Api::namespaced(h.client(), "default");
    for name in ["b", "d", "f", "h"] {
        api.create(&PostParams::default(), &config_map(name, "old")).await.unwrap();
    }
    let first = api.list(&ListParams::default().limit(2)).await.unwrap();
    let at = first.metadata.resource_version.clone().unwrap();
    assert_eq!(first.items.iter().map(ResourceExt::name_any).collect::<Vec<_>>(), ["b", "d"]);

    // Meanwhile: a new object before the cursor and one after it, a change and a removal in
    // the page still to come.
    api.create(&PostParams::default(), &config_map("a", "new")).await.unwrap();
    api.create(&PostParams::default(), &config_map("g", "new")).await.unwrap();
    api.patch("f", &PatchParams::default(), &Patch::Merge(json!({"data": {"v": "changed"}})))
        .await
        .unwrap();
    api.delete("h", &DeleteParams::default()).await.unwrap();

    let token = first.metadata.continue_.clone().unwrap();
    let second = api.list(&ListParams::default().limit(2).continue_token(&token)).await.unwrap();
    assert_eq!(second.metadata.resource_version.as_deref(), Some(at.as_str()));
    let rest: Vec<(String, String)> = second
        .items
        .iter()
        .map(|cm| (cm.name_any(), cm.data.as_ref().unwrap()["v"].clone()))
        .collect();
    assert_eq!(rest, [("f".to_owned(), "old".to_owned()), ("h".to_owned(), "old".to_owned())]);
    assert!(second.metadata.continue_.is_none_or(|t| t.is_empty()), "h was the last object");

    // The watch from the list's version replays what happened meanwhile, in order.
    let mut stream = api.watch(&WatchParams::default().timeout(5), &at).await.unwrap().boxed();
    let mut seen = Vec::new();
    while seen.len() < 4 {
        let event =
            tokio::time::timeout(common::PATIENCE, stream.next()).await.unwrap().unwrap().unwrap();
        seen.push(match event {
            WatchEvent::Added(cm) => format!("added {}", cm.name_any()),
            WatchEvent::Modified(cm) => format!("modified {}", cm.name_any()),
            WatchEvent::Deleted(cm) => format!("deleted {}", cm.name_any()),
            other => panic!("unexpected {other:?}"),
        });
    }
    assert_eq!(seen, ["added a", "added g", "modified f", "deleted h"]);
}

/// A continue token whose version has left the history cannot be served as one snapshot: the
/// client is told to list afresh (410 Expired), as a real API server tells it after compaction.
#[tokio::test]
async fn continuing_a_list_older_than_the_history_gets_410() {
    let h = Harness::start_with(Config { history: 3, ..Config::default() }).await;
    let api: Api<ConfigMap> = Api::namespaced(h.client(), "default");
    for name in ["a", "b", "c"] {
        api.create(&PostParams::default(), &config_map(name, "old")).await.unwrap();
    }
    let first = api.list(&ListParams::default().limit(1)).await.unwrap();
    let token = first.metadata.continue_.unwrap();
    for i in 0..4 {
        api.create(&PostParams::default(), &config_map(&format!("x{i}"), "new")).await.unwrap();
    }
    let error = api.list(&ListParams::default().limit(1).continue_token(&token)).await.unwrap_err();
    assert_eq!(status_code(&error), (410, "Expired".to_owned()));
    let fresh = api.list(&ListParams::default()).await.unwrap();
    assert_eq!(fresh.items.len(), 7);
}

#[tokio::test]
async fn a_controller_reconciles_functions_to_ready() {
    let (h, api) = harness().await;
    async fn reconcile(f: Arc<Function>, api: Arc<Api<Function>>) -> Result<Action, kube::Error> {
        if f.status.as_ref().and_then(|s| s.phase).is_none() {
            let status =
                json!({"status": {"phase": "Ready", "observedGeneration": f.metadata.generation}});
            api.patch_status(&f.name_any(), &PatchParams::apply("test-controller").force(), &Patch::Apply(json!({
                "apiVersion": "kubefaas.io/v1alpha1", "kind": "Function", "status": status["status"]
            })))
            .await?;
        }
        Ok(Action::await_change())
    }
    let controller = Controller::new(api.clone(), watcher::Config::default())
        .run(reconcile, |_, _, _| Action::requeue(Duration::from_secs(1)), Arc::new(api.clone()))
        .for_each(|_| async {});
    let running = tokio::spawn(controller);
    api.create(&PostParams::default(), &function("managed")).await.unwrap();
    eventually("the controller to mark the function Ready", || async {
        api.get("managed").await.unwrap().status.and_then(|s| s.phase).is_some()
    })
    .await;
    let f = api.get("managed").await.unwrap();
    assert_eq!(f.status.unwrap().observed_generation, Some(1));
    running.abort();
    drop(h);
}

#[tokio::test]
async fn a_data_directory_keeps_objects_and_resource_versions_across_restarts() {
    let dir = scratch_dir();
    let config = Config { data_dir: Some(dir.join("data")), ..Config::default() };
    let mut h = Harness::start_with(config.clone()).await;
    let cms: Api<ConfigMap> = Api::namespaced(h.client(), "default");
    let cm: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "durable"}, "data": {"a": "1"}}))
            .unwrap();
    let created = cms.create(&PostParams::default(), &cm).await.unwrap();
    h.stop().await;

    let h = Harness::start_with(config).await;
    let cms: Api<ConfigMap> = Api::namespaced(h.client(), "default");
    let found = cms.get("durable").await.unwrap();
    assert_eq!(found.metadata.uid, created.metadata.uid);
    let rv = |c: &ConfigMap| c.metadata.resource_version.clone().unwrap().parse::<u64>().unwrap();
    let mut changed = found.clone();
    changed.data.as_mut().unwrap().insert("b".into(), "2".into());
    let updated = cms.replace("durable", &PostParams::default(), &changed).await.unwrap();
    assert!(rv(&updated) > rv(&created), "resource versions continue after a restart");
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn a_label_selected_watch_sees_objects_enter_and_leave_the_selection() {
    let (_h, api) = harness().await;
    api.create(&PostParams::default(), &function("moving")).await.unwrap();
    let rv = api.list(&ListParams::default()).await.unwrap().metadata.resource_version.unwrap();
    let params = WatchParams::default().labels("stage=live").timeout(10);
    let mut stream = api.watch(&params, &rv).await.unwrap().boxed();
    let label =
        |value: Option<&str>| Patch::Merge(json!({"metadata": {"labels": {"stage": value}}}));
    api.patch("moving", &PatchParams::default(), &label(Some("live"))).await.unwrap();
    api.patch("moving", &PatchParams::default(), &label(Some("retired"))).await.unwrap();
    let mut next = async || {
        tokio::time::timeout(common::PATIENCE, stream.next()).await.unwrap().unwrap().unwrap()
    };
    assert!(matches!(next().await, WatchEvent::Added(f) if f.name_any() == "moving"));
    assert!(matches!(next().await, WatchEvent::Deleted(f) if f.labels()["stage"] == "retired"));
}

#[tokio::test]
async fn a_streaming_list_watcher_gets_initial_events_then_changes() {
    let (_h, api) = harness().await;
    api.create(&PostParams::default(), &function("existing")).await.unwrap();
    let config = watcher::Config::default().streaming_lists();
    let mut events = watcher(api.clone(), config).boxed();
    let mut next = async || {
        let event = tokio::time::timeout(common::PATIENCE, events.try_next()).await.unwrap();
        event.unwrap().unwrap()
    };
    assert!(matches!(next().await, watcher::Event::Init));
    assert!(matches!(next().await, watcher::Event::InitApply(f) if f.name_any() == "existing"));
    assert!(matches!(next().await, watcher::Event::InitDone));
    api.create(&PostParams::default(), &function("later")).await.unwrap();
    assert!(matches!(next().await, watcher::Event::Apply(f) if f.name_any() == "later"));
}

#[tokio::test]
async fn a_namespace_terminates_once_its_last_object_is_released() {
    use k8s_openapi::api::core::v1::Namespace;
    let (h, _) = harness().await;
    let namespaces: Api<Namespace> = Api::all(h.client());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "doomed"}})).unwrap();
    namespaces.create(&PostParams::default(), &ns).await.unwrap();
    let functions: Api<Function> = Api::namespaced(h.client(), "doomed");
    let mut held = function("held");
    held.metadata.finalizers = Some(vec!["kubefaas.io/cleanup".into()]);
    functions.create(&PostParams::default(), &held).await.unwrap();
    functions.create(&PostParams::default(), &function("free")).await.unwrap();

    namespaces.delete("doomed", &DeleteParams::default()).await.unwrap();
    let terminating = namespaces.get("doomed").await.unwrap();
    assert_eq!(terminating.status.unwrap().phase.as_deref(), Some("Terminating"));
    assert!(functions.get_opt("free").await.unwrap().is_none());
    assert!(functions.get("held").await.unwrap().metadata.deletion_timestamp.is_some());
    let err = functions.create(&PostParams::default(), &function("late")).await.unwrap_err();
    assert_eq!(status_code(&err), (403, "Forbidden".into()));

    let release = Patch::Merge(json!({"metadata": {"finalizers": null}}));
    functions.patch("held", &PatchParams::default(), &release).await.unwrap();
    assert!(functions.get_opt("held").await.unwrap().is_none());
    assert!(namespaces.get_opt("doomed").await.unwrap().is_none());
}

#[tokio::test]
async fn foreground_deletion_removes_dependents_first_even_with_ownership_cycles() {
    let (h, api) = harness().await;
    let cms: Api<ConfigMap> = Api::namespaced(h.client(), "default");
    let owner = api.create(&PostParams::default(), &function("root")).await.unwrap();
    let owned_by = |owner: OwnerReference, name: &str| {
        let mut cm: ConfigMap =
            serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
        cm.metadata.owner_references = Some(vec![owner]);
        cm
    };
    let child = owned_by(owner.owner_ref(&()).unwrap(), "child");
    let child = cms.create(&PostParams::default(), &child).await.unwrap();
    let grandchild = owned_by(child.owner_ref(&()).unwrap(), "grandchild");
    let grandchild = cms.create(&PostParams::default(), &grandchild).await.unwrap();
    // The child is also owned by its own dependent: a cycle.
    let mut child = cms.get("child").await.unwrap();
    child.metadata.owner_references.as_mut().unwrap().push(grandchild.owner_ref(&()).unwrap());
    cms.replace("child", &PostParams::default(), &child).await.unwrap();

    api.delete("root", &DeleteParams::foreground()).await.unwrap();
    assert!(api.get_opt("root").await.unwrap().is_none());
    assert!(cms.get_opt("child").await.unwrap().is_none());
    assert!(cms.get_opt("grandchild").await.unwrap().is_none());
}

#[tokio::test]
async fn generate_name_namespace_field_selectors_and_watch_timeouts() {
    let (h, api) = harness().await;
    let mut generated = function("");
    generated.metadata.name = None;
    generated.metadata.generate_name = Some("gen-".into());
    let created = api.create(&PostParams::default(), &generated).await.unwrap();
    let name = created.name_any();
    assert!(name.starts_with("gen-") && name.len() == "gen-".len() + 5, "{name}");

    for ns in ["default", "kube-system", "kube-public"] {
        let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "c"}})).unwrap();
        Api::<ConfigMap>::namespaced(h.client(), ns)
            .create(&PostParams::default(), &cm)
            .await
            .unwrap();
    }
    let cms: Api<ConfigMap> = Api::all(h.client());
    let namespaces = async |selector: &str| -> Vec<String> {
        let list = cms.list(&ListParams::default().fields(selector)).await.unwrap();
        list.items.iter().map(|c| c.namespace().unwrap()).collect()
    };
    assert_eq!(namespaces("metadata.namespace=default").await, ["default"]);
    assert_eq!(namespaces("metadata.namespace!=default").await, ["kube-public", "kube-system"]);
    assert_eq!(
        namespaces("metadata.name=c,metadata.namespace==kube-public").await,
        ["kube-public"]
    );

    // A watch with timeoutSeconds ends on its own.
    let rv = api.list(&ListParams::default()).await.unwrap().metadata.resource_version.unwrap();
    let params = WatchParams::default().timeout(1).disable_bookmarks();
    let stream = api.watch(&params, &rv).await.unwrap();
    let events: Vec<_> =
        tokio::time::timeout(common::PATIENCE, stream.collect::<Vec<_>>()).await.unwrap();
    assert!(events.is_empty(), "{events:?}");
}
