//! Garbage collection and cleanup that follow a removal: dependents whose owners are all gone,
//! `Orphan` and `Foreground` propagation, namespaces that finish terminating, custom resources
//! of a deleted CRD. Runs under the server's lock, as part of the request that removed
//! something.

use std::collections::{BTreeSet, VecDeque};

use serde_json::Value;

use crate::api::{Cluster, DeleteOptions, finalizers, meta_str, set_path};
use crate::store::Key;

impl Cluster {
    /// Deletes an object as a request would (finalizers hold it), logging failures: used for
    /// dependents, where there is no client to report to.
    pub(crate) fn delete_key(&mut self, k: &Key, propagation: Option<&str>) {
        let Some(rt) = self.registry.find_any_version(&k.group, &k.resource) else {
            self.remove_now(k);
            return;
        };
        let ns = (!k.namespace.is_empty()).then_some(k.namespace.as_str());
        let opts =
            DeleteOptions { propagation: propagation.map(str::to_owned), ..Default::default() };
        if let Err(error) = self.delete(&rt, ns, &k.name, &opts)
            && error.code != 404
        {
            tracing::warn!(?k, %error, "garbage collection could not delete a dependent");
        }
    }

    /// Removes an object for good and lets garbage collection and namespace cleanup follow.
    pub(crate) fn remove_now(&mut self, k: &Key) -> Option<Value> {
        let gone = self.store.remove(k)?;
        if let Some(uid) = meta_str(&gone, "uid") {
            let idle = self.orphaned.is_empty();
            self.orphaned.push(uid.to_owned());
            // Only the outermost removal drains the worklist; nested ones just add to it.
            if idle {
                while let Some(uid) = self.orphaned.last().cloned() {
                    self.collect_garbage(&uid);
                    self.orphaned.retain(|u| *u != uid);
                }
            }
        }
        if !k.namespace.is_empty() {
            self.finish_namespace(&k.namespace.clone());
        }
        if k.group == "apiextensions.k8s.io" && k.resource == "customresourcedefinitions" {
            self.remove_custom_objects(&gone);
            self.rebuild_registry();
        }
        Some(gone)
    }

    fn dependents_of(&self, uid: &str) -> Vec<Key> {
        self.store.dependents_of(uid)
    }

    /// Everything owned by `uid`, directly or through other dependents, in breadth-first order.
    pub(crate) fn transitive_dependents(&self, uid: &str) -> Vec<Key> {
        let mut seen = BTreeSet::from([uid.to_owned()]);
        let mut out: Vec<Key> = Vec::new();
        let mut queue = VecDeque::from([uid.to_owned()]);
        while let Some(owner) = queue.pop_front() {
            for k in self.dependents_of(&owner) {
                let Some(dependent) = self.store.get(&k).and_then(|o| meta_str(o, "uid")) else {
                    continue;
                };
                if seen.insert(dependent.to_owned()) {
                    queue.push_back(dependent.to_owned());
                    out.push(k);
                }
            }
        }
        out
    }

    /// Deletes dependents whose owners are all gone; drops the dangling reference from those
    /// that still have a live owner.
    fn collect_garbage(&mut self, uid: &str) {
        let dependents = self.dependents_of(uid);
        if dependents.is_empty() {
            return;
        }
        for k in dependents {
            let Some(obj) = self.store.get(&k).cloned() else { continue };
            let refs = obj["metadata"]["ownerReferences"].as_array().cloned().unwrap_or_default();
            let remaining: Vec<Value> = refs
                .into_iter()
                .filter(|r| r["uid"].as_str().is_some_and(|u| self.store.is_live(u)))
                .collect();
            if remaining.is_empty() {
                self.delete_key(&k, None);
            } else {
                let mut updated = obj;
                set_path(&mut updated, &["metadata", "ownerReferences"], Value::Array(remaining));
                self.store.put(k, updated);
            }
        }
    }

    pub(crate) fn orphan_dependents(&mut self, uid: &str) {
        for k in self.dependents_of(uid) {
            let Some(mut obj) = self.store.get(&k).cloned() else { continue };
            if let Some(refs) = obj["metadata"]["ownerReferences"].as_array_mut() {
                refs.retain(|r| r["uid"].as_str() != Some(uid));
                if refs.is_empty()
                    && let Some(m) = obj["metadata"].as_object_mut()
                {
                    m.remove("ownerReferences");
                }
            }
            self.store.put(k, obj);
        }
    }

    pub(crate) fn empty_namespace(&mut self, ns: &str) {
        let inside: Vec<Key> =
            self.store.iter().filter(|(k, _)| k.namespace == ns).map(|(k, _)| k.clone()).collect();
        for k in inside {
            self.delete_key(&k, None);
        }
        self.finish_namespace(ns);
    }

    /// Removes a terminating namespace once nothing is left in it.
    fn finish_namespace(&mut self, ns: &str) {
        let k = Key {
            group: String::new(),
            resource: "namespaces".into(),
            namespace: String::new(),
            name: ns.to_owned(),
        };
        let Some(obj) = self.store.get(&k) else { return };
        if obj["metadata"]["deletionTimestamp"].is_null() || !finalizers(obj).is_empty() {
            return;
        }
        if self.store.iter().any(|(other, _)| other.namespace == ns) {
            return;
        }
        self.store.remove(&k);
    }

    fn remove_custom_objects(&mut self, crd: &Value) {
        let group = crd["spec"]["group"].as_str().unwrap_or_default();
        let plural = crd["spec"]["names"]["plural"].as_str().unwrap_or_default();
        let keys: Vec<Key> = self.store.list(group, plural, None).map(|(k, _)| k.clone()).collect();
        for k in keys {
            self.store.remove(&k);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use serde_json::json;

    use super::*;
    use crate::api::WriteOptions;
    use crate::registry::Registry;
    use crate::store::Store;

    fn cluster() -> Cluster {
        let mut store = Store::open(None, 100).unwrap();
        crate::seed(&mut store);
        Cluster { store, registry: Registry::new(std::iter::empty()), orphaned: Vec::new() }
    }

    #[test]
    fn a_long_ownership_chain_is_collected_without_deep_recursion() {
        let mut c = cluster();
        let rt = c.registry.find("", "v1", "configmaps").unwrap();
        let opts = WriteOptions { field_manager: "test".into(), ..Default::default() };
        let mut owner: Option<Value> = None;
        for i in 0..10_000 {
            let mut cm = json!({"metadata": {"name": format!("cm{i}")}});
            if let Some(o) = &owner {
                cm["metadata"]["ownerReferences"] = json!([{"apiVersion": "v1", "kind": "ConfigMap",
                    "name": o["metadata"]["name"], "uid": o["metadata"]["uid"]}]);
            }
            owner = Some(c.create(&rt, Some("default"), cm, &opts).unwrap());
        }
        c.delete(&rt, Some("default"), "cm0", &DeleteOptions::default()).unwrap();
        assert_eq!(c.store.list("", "configmaps", None).count(), 0);
    }
}
