//! `status.warmInstances` of Functions: how many of a function's runtime pods (the executor's
//! `kubernetes` backend) are running and ready to serve.
//!
//! A pod reflector of its own feeds this small writer, so runtime pods coming and going never
//! run the Function pipeline (code ConfigMap, PostgreSQL row, validation): each pod event counts
//! the ready pods of the function that owns it, and when the count differs from the one last
//! written, applies `status.warmInstances` alone under a field manager of its own
//! ([`names::WARM_FIELD_MANAGER`]), as `last_invoked` does with `lastInvokedAt`. The function
//! controller's status applies leave the field out, so neither removes what the other owns.
//!
//! Pods are counted for the Function whose uid owns them, so a function deleted and created
//! again under the same name is never shown its predecessor's pods. A write that fails is
//! retried at the next pod event of that function, and every function is counted again after
//! each relist.

use std::collections::{BTreeMap, HashMap};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{WatchStreamExt, reflector, watcher},
};
use kubefaas_core::resources::Function;
use serde_json::json;

use crate::names;

/// Where a function's count is written: its namespace, name and uid.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Owner {
    namespace: String,
    name: String,
    uid: String,
}

/// The Function (its controller owner reference) that owns a runtime pod.
fn owner_of(pod: &Pod) -> Option<Owner> {
    let owner = pod
        .owner_references()
        .iter()
        .find(|o| o.kind == Function::kind(&()) && o.controller == Some(true))
        .or_else(|| pod.owner_references().iter().find(|o| o.kind == Function::kind(&())))?;
    Some(Owner { namespace: pod.namespace()?, name: owner.name.clone(), uid: owner.uid.clone() })
}

/// Running with its `Ready` condition true.
fn pod_is_ready(pod: &Pod) -> bool {
    let Some(status) = &pod.status else { return false };
    status.phase.as_deref() == Some("Running")
        && status
            .conditions
            .iter()
            .flatten()
            .any(|condition| condition.type_ == "Ready" && condition.status == "True")
}

/// Ready pods per owning Function, among `pods`.
fn counts<'a>(pods: impl IntoIterator<Item = &'a Pod>) -> BTreeMap<Owner, i32> {
    let mut counts = BTreeMap::new();
    for pod in pods {
        if let Some(owner) = owner_of(pod) {
            let count = counts.entry(owner).or_insert(0);
            if pod_is_ready(pod) && pod.metadata.deletion_timestamp.is_none() {
                *count += 1;
            }
        }
    }
    counts
}

/// Watches runtime pods (`pods`, selected by `config`) and keeps each owning Function's
/// `status.warmInstances` equal to its ready pods, until `shutdown`.
pub(crate) async fn follow(
    client: Client,
    pods: Api<Pod>,
    config: watcher::Config,
    shutdown: impl std::future::Future<Output = ()> + Send,
) {
    let (reader, writer) = reflector::store::<Pod>();
    let events = watcher(pods, config).default_backoff().reflect(writer);
    let mut events = std::pin::pin!(events.take_until(shutdown));
    // What was last written (or found written) per function.
    let mut written: HashMap<Owner, i32> = HashMap::new();
    while let Some(event) = events.next().await {
        let touched: Vec<Owner> = match event {
            Ok(watcher::Event::Apply(pod) | watcher::Event::Delete(pod)) => {
                owner_of(&pod).into_iter().collect()
            }
            // After a relist every function is counted again, and those whose pods all went
            // while the watch was down drop to zero.
            Ok(watcher::Event::InitDone) => {
                let mut owners: Vec<Owner> = written.keys().cloned().collect();
                owners.extend(reader.state().iter().filter_map(|pod| owner_of(pod)));
                owners
            }
            Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => Vec::new(),
            Err(error) => {
                tracing::debug!(%error, "runtime pod watch failed; it resumes");
                Vec::new()
            }
        };
        if touched.is_empty() {
            continue;
        }
        let state = reader.state();
        let now = counts(state.iter().map(|pod| pod.as_ref()));
        for owner in touched {
            let count = now.get(&owner).copied().unwrap_or(0);
            if written.get(&owner) == Some(&count) {
                continue;
            }
            match write(&client, &owner, count).await {
                Written::Done => {
                    written.insert(owner, count);
                }
                Written::Gone => {
                    written.remove(&owner);
                }
                Written::Failed => {}
            }
        }
    }
}

enum Written {
    Done,
    Gone,
    Failed,
}

/// Applies `status.warmInstances` of `owner` (only while it is the Function with that uid).
async fn write(client: &Client, owner: &Owner, count: i32) -> Written {
    let api: Api<Function> = Api::namespaced(client.clone(), &owner.namespace);
    let patch = json!({
        "apiVersion": Function::api_version(&()),
        "kind": Function::kind(&()),
        "metadata": {"name": owner.name, "uid": owner.uid},
        "status": {"warmInstances": count},
    });
    let params = PatchParams::apply(names::WARM_FIELD_MANAGER).force();
    match api.patch_status(&owner.name, &params, &Patch::Apply(&patch)).await {
        Ok(_) => Written::Done,
        // Deleted, or replaced by a Function of another uid.
        Err(kube::Error::Api(status)) if status.is_not_found() || status.is_conflict() => {
            Written::Gone
        }
        Err(error) => {
            tracing::warn!(function = %owner.name, namespace = %owner.namespace, %error,
                "cannot write warmInstances; trying again at its next pod event");
            Written::Failed
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{PodCondition, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

    use super::*;

    fn pod(name: &str, function: &str, uid: &str, ready: bool) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                owner_references: Some(vec![OwnerReference {
                    api_version: Function::api_version(&()).into_owned(),
                    kind: Function::kind(&()).into_owned(),
                    name: function.into(),
                    uid: uid.into(),
                    controller: Some(true),
                    ..OwnerReference::default()
                }]),
                ..ObjectMeta::default()
            },
            status: Some(PodStatus {
                phase: Some(if ready { "Running" } else { "Pending" }.into()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..PodCondition::default()
                }]),
                ..PodStatus::default()
            }),
            ..Pod::default()
        }
    }

    #[test]
    fn ready_pods_are_counted_for_the_function_uid_that_owns_them() {
        let pods = [
            pod("a-1", "a", "uid-a", true),
            pod("a-2", "a", "uid-a", true),
            pod("a-3", "a", "uid-a", false),
            // A pod of an earlier Function named `a`, being deleted.
            pod("a-old", "a", "uid-a-old", true),
            pod("b-1", "b", "uid-b", false),
        ];
        let owner = |name: &str, uid: &str| Owner {
            namespace: "default".into(),
            name: name.into(),
            uid: uid.into(),
        };
        let counts = counts(pods.iter());
        assert_eq!(counts.get(&owner("a", "uid-a")), Some(&2));
        assert_eq!(counts.get(&owner("a", "uid-a-old")), Some(&1));
        assert_eq!(counts.get(&owner("b", "uid-b")), Some(&0), "known, with none ready");
    }
}
