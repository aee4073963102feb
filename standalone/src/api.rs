//! The verbs: get, list, create, update, patch, delete, deletecollection, with the object
//! lifecycle rules of a real API server (status subresource, generation, finalizers,
//! owner-reference garbage collection, namespace existence and termination).
//!
//! Everything here runs under the server's one lock, so each request is atomic.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value, json};

use crate::apply::{self, Scope};
use crate::custom::{self, FieldValidation};
use crate::error::{ApiError, ApiResult};
use crate::patch::{self, PatchType};
use crate::registry::{Registry, ResourceType};
use crate::selector::{FieldSelector, LabelSelector};
use crate::store::{Key, Store};

/// The state behind the lock: the objects and the types they may have.
#[derive(Debug)]
pub(crate) struct Cluster {
    /// Objects and history.
    pub(crate) store: Store,
    /// Served types (rebuilt when a CRD changes).
    pub(crate) registry: Registry,
    /// Uids of removed objects whose dependents garbage collection has yet to look at. A
    /// worklist rather than recursion, so long ownership chains cannot exhaust the stack.
    pub(crate) orphaned: Vec<String>,
}

/// Options common to writes.
#[derive(Debug, Clone, Default)]
pub(crate) struct WriteOptions {
    /// `?dryRun=All`: validate, do not store.
    pub(crate) dry_run: bool,
    /// `?fieldManager=`, or the client's name from its User-Agent.
    pub(crate) field_manager: String,
    /// `?fieldValidation=`.
    pub(crate) field_validation: FieldValidation,
    /// `?force=true` (apply only).
    pub(crate) force: bool,
}

/// `DeleteOptions` from the body or query.
#[derive(Debug, Clone, Default)]
pub(crate) struct DeleteOptions {
    /// `Orphan`, `Background` (default) or `Foreground`.
    pub(crate) propagation: Option<String>,
    /// `preconditions.uid`.
    pub(crate) uid: Option<String>,
    /// `preconditions.resourceVersion`.
    pub(crate) resource_version: Option<String>,
    /// `dryRun`.
    pub(crate) dry_run: bool,
}

/// Options of a list.
#[derive(Debug, Clone, Default)]
pub(crate) struct ListOptions {
    /// `labelSelector`.
    pub(crate) labels: LabelSelector,
    /// `fieldSelector`.
    pub(crate) fields: FieldSelector,
    /// `limit` (0 = all).
    pub(crate) limit: usize,
    /// `continue` token from a previous page.
    pub(crate) continue_token: Option<String>,
}

/// The current time as Kubernetes writes timestamps.
pub(crate) fn now() -> String {
    jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

pub(crate) fn key(rt: &ResourceType, namespace: Option<&str>, name: &str) -> Key {
    Key {
        group: rt.storage_group.clone(),
        resource: rt.plural.clone(),
        namespace: if rt.namespaced {
            namespace.unwrap_or_default().to_owned()
        } else {
            String::new()
        },
        name: name.to_owned(),
    }
}

/// `obj` (stored, or sent by a client) as `rt`'s version serves it.
pub(crate) fn present(rt: &ResourceType, obj: Value) -> Value {
    let mut obj = rt.served_form(obj);
    if let Some(map) = obj.as_object_mut() {
        map.insert("apiVersion".into(), Value::String(rt.api_version()));
        map.insert("kind".into(), Value::String(rt.kind.clone()));
    }
    obj
}

pub(crate) fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj["metadata"][field].as_str().filter(|s| !s.is_empty())
}

/// Sets `path` in `obj`, turning anything in the way that is not an object into one. Stored
/// objects come from clients, so no part of them is assumed to have the expected shape.
pub(crate) fn set_path(obj: &mut Value, path: &[&str], value: Value) {
    let Some((last, parents)) = path.split_last() else { return };
    let mut node = obj;
    for seg in parents {
        if !node.is_object() {
            *node = json!({});
        }
        let Some(map) = node.as_object_mut() else { return };
        node = map.entry(*seg).or_insert_with(|| json!({}));
    }
    if !node.is_object() {
        *node = json!({});
    }
    if let Some(map) = node.as_object_mut() {
        map.insert((*last).to_owned(), value);
    }
}

pub(crate) fn finalizers(obj: &Value) -> Vec<String> {
    obj["metadata"]["finalizers"]
        .as_array()
        .map(|a| a.iter().filter_map(|f| f.as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

/// The object without what does not count for `generation`: metadata and status.
fn spec_part(obj: &Value) -> Value {
    let mut out = obj.clone();
    if let Some(map) = out.as_object_mut() {
        for k in ["metadata", "status", "apiVersion", "kind"] {
            map.remove(k);
        }
    }
    out
}

fn tracks_generation(rt: &ResourceType) -> bool {
    rt.custom || rt.plural == "customresourcedefinitions"
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && name.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric())
}

fn invalid_meta(
    rt: &ResourceType,
    name: &str,
    field: &str,
    detail: &str,
    required: bool,
) -> ApiError {
    use kubefaas_core::validation::{ErrorKind, FieldError, ValidationErrors};
    let kind = if required { ErrorKind::Required } else { ErrorKind::Invalid };
    let errors = ValidationErrors(vec![FieldError {
        path: field.to_owned(),
        kind,
        detail: detail.to_owned(),
    }]);
    ApiError::invalid(&rt.kind, &rt.group, name, &errors)
}

fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    uuid::Uuid::new_v4().as_bytes()[..5]
        .iter()
        .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]))
        .collect()
}

impl Cluster {
    pub(crate) fn rebuild_registry(&mut self) {
        let crds: Vec<Value> = self
            .store
            .list("apiextensions.k8s.io", "customresourcedefinitions", None)
            .map(|(_, v)| v.clone())
            .collect();
        self.registry = Registry::new(crds.iter());
    }

    /// Stores a created or changed object; a CRD change also changes what is served.
    fn store_put(&mut self, rt: &ResourceType, k: Key, obj: Value) -> Value {
        let stored = self.store.put(k, rt.to_storage(obj));
        if rt.plural == "customresourcedefinitions" {
            self.rebuild_registry();
        }
        present(rt, stored)
    }

    /// One object.
    pub(crate) fn get(
        &self,
        rt: &ResourceType,
        namespace: Option<&str>,
        name: &str,
    ) -> ApiResult<Value> {
        self.store
            .get(&key(rt, namespace, name))
            .map(|o| present(rt, o.clone()))
            .ok_or_else(|| ApiError::not_found(&rt.group_resource(), name))
    }

    /// Matching objects, one page at a time, and the list's `resourceVersion`. Every page of
    /// one list shows the objects as they were when its first page was served: the continue
    /// token carries that version, later pages are rebuilt from the history, and a token older
    /// than the history gets 410 Expired (the client lists afresh), as from a real API server.
    pub(crate) fn list(
        &self,
        rt: &ResourceType,
        namespace: Option<&str>,
        opts: &ListOptions,
    ) -> ApiResult<(Vec<Value>, String, Option<String>)> {
        let ns = if rt.namespaced { namespace } else { None };
        let (objects, after, at) = match &opts.continue_token {
            None => {
                let objects: BTreeMap<_, _> =
                    self.store.list(&rt.storage_group, &rt.plural, ns).collect();
                (objects, None, self.store.rv())
            }
            Some(token) => {
                let (after_ns, after_name, at) = decode_continue(token)?;
                let objects =
                    self.store.list_at(&rt.storage_group, &rt.plural, ns, at).ok_or_else(|| {
                        ApiError::expired(format!(
                            "the continue token names resourceVersion {at}, which is older than \
                             the history kept; list again without it"
                        ))
                    })?;
                (objects, Some((after_ns, after_name)), at)
            }
        };
        let mut items = Vec::new();
        let mut next = None;
        for (k, obj) in objects {
            if after.as_ref().is_some_and(|(ans, aname)| (&k.namespace, &k.name) <= (ans, aname)) {
                continue;
            }
            let obj = present(rt, obj.clone());
            if !opts.labels.matches_object(&obj) || !opts.fields.matches(&obj) {
                continue;
            }
            if opts.limit > 0 && items.len() == opts.limit {
                next = items.last().map(|last: &Value| {
                    encode_continue(
                        meta_str(last, "namespace").unwrap_or_default(),
                        meta_str(last, "name").unwrap_or_default(),
                        at,
                    )
                });
                break;
            }
            items.push(obj);
        }
        Ok((items, at.to_string(), next))
    }

    fn check_namespace(&self, rt: &ResourceType, namespace: Option<&str>) -> ApiResult<()> {
        if !rt.namespaced {
            return Ok(());
        }
        let Some(ns) = namespace.filter(|n| !n.is_empty()) else {
            return Err(ApiError::bad_request("the namespace of the object is required"));
        };
        let ns_key = Key {
            group: String::new(),
            resource: "namespaces".into(),
            namespace: String::new(),
            name: ns.to_owned(),
        };
        match self.store.get(&ns_key) {
            None => Err(ApiError::not_found("namespaces", ns)),
            Some(obj) if obj["metadata"]["deletionTimestamp"].is_string() => {
                Err(ApiError::forbidden(format!(
                    "{} is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                    rt.group_resource()
                )))
            }
            Some(_) => Ok(()),
        }
    }

    /// Creates an object (`POST`).
    pub(crate) fn create(
        &mut self,
        rt: &ResourceType,
        namespace: Option<&str>,
        obj: Value,
        opts: &WriteOptions,
    ) -> ApiResult<Value> {
        self.create_object(rt, namespace, obj, opts, false)
    }

    /// Creates an object; `applied` objects come with the managed fields of their apply.
    fn create_object(
        &mut self,
        rt: &ResourceType,
        namespace: Option<&str>,
        mut obj: Value,
        opts: &WriteOptions,
        applied: bool,
    ) -> ApiResult<Value> {
        check_body(rt, &obj)?;
        obj = present(rt, obj);
        let meta = obj
            .as_object_mut()
            .map(|m| m.entry("metadata").or_insert_with(|| json!({})))
            .and_then(Value::as_object_mut)
            .ok_or_else(|| ApiError::bad_request("metadata must be an object"))?;
        if rt.namespaced {
            match (
                meta.get("namespace").and_then(Value::as_str).filter(|s| !s.is_empty()),
                namespace,
            ) {
                (Some(body), Some(path)) if body != path => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
                _ => {}
            }
            if let Some(ns) = namespace {
                meta.insert("namespace".into(), Value::String(ns.to_owned()));
            }
        } else {
            meta.remove("namespace");
        }
        let mut name = meta.get("name").and_then(Value::as_str).unwrap_or_default().to_owned();
        if name.is_empty() {
            if let Some(prefix) =
                meta.get("generateName").and_then(Value::as_str).filter(|s| !s.is_empty())
            {
                name = format!("{prefix}{}", random_suffix());
                meta.insert("name".into(), Value::String(name.clone()));
            } else {
                return Err(invalid_meta(
                    rt,
                    "",
                    "metadata.name",
                    "name or generateName is required",
                    true,
                ));
            }
        }
        if !valid_name(&name) {
            return Err(invalid_meta(
                rt,
                &name,
                "metadata.name",
                &format!(
                    "{name:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
                ),
                false,
            ));
        }
        let now = now();
        meta.insert("uid".into(), Value::String(uuid::Uuid::new_v4().to_string()));
        meta.insert("creationTimestamp".into(), Value::String(now.clone()));
        // Like a real server, only custom resources and CRDs track `generation`.
        if tracks_generation(rt) {
            meta.insert("generation".into(), json!(1));
        } else {
            meta.remove("generation");
        }
        for k in ["resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds", "selfLink"]
        {
            meta.remove(k);
        }
        if !applied {
            meta.remove("managedFields");
        }
        self.check_namespace(rt, namespace)?;
        let k = key(rt, namespace, &name);
        if self.store.get(&k).is_some() {
            return Err(ApiError::already_exists(&rt.group_resource(), &name));
        }
        initial_status(rt, &mut obj);
        if rt.plural == "customresourcedefinitions" {
            check_crd(&mut obj)?;
        }
        custom::admit(rt, &mut obj, opts.field_validation)?;
        let scope = Scope::Main { without_status: rt.status_subresource };
        if !applied {
            apply::track_update(None, &mut obj, &opts.field_manager, scope, &now);
        }
        if opts.dry_run {
            return Ok(obj);
        }
        Ok(self.store_put(rt, k, obj))
    }

    /// Replaces an object (`PUT`), on the main resource or the status subresource.
    pub(crate) fn update(
        &mut self,
        rt: &ResourceType,
        namespace: Option<&str>,
        name: &str,
        obj: Value,
        status: bool,
        opts: &WriteOptions,
    ) -> ApiResult<Value> {
        check_body(rt, &obj)?;
        if let Some(body_name) = meta_str(&obj, "name")
            && body_name != name
        {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        if rt.namespaced
            && let (Some(body), Some(path)) = (meta_str(&obj, "namespace"), namespace)
            && body != path
        {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        let k = key(rt, namespace, name);
        let old = self
            .store
            .get(&k)
            .cloned()
            .ok_or_else(|| ApiError::not_found(&rt.group_resource(), name))?;
        check_preconditions(rt, name, &obj, &old)?;
        let scope = if status {
            Scope::Status
        } else {
            Scope::Main { without_status: rt.status_subresource }
        };
        self.commit(rt, k, old, present(rt, obj), scope, opts, false)
    }

    /// Patches an object; a server-side apply of a missing object creates it.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn patch(
        &mut self,
        rt: &ResourceType,
        namespace: Option<&str>,
        name: &str,
        kind: PatchType,
        body: &[u8],
        status: bool,
        opts: &WriteOptions,
    ) -> ApiResult<(u16, Value)> {
        let patch: Value = match kind {
            PatchType::Apply => parse_yaml_or_json(body)?,
            _ => serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?,
        };
        let k = key(rt, namespace, name);
        let old = self.store.get(&k).cloned();
        let scope = if status {
            Scope::Status
        } else {
            Scope::Main { without_status: rt.status_subresource }
        };
        if kind == PatchType::Apply {
            return self.server_side_apply(rt, namespace, name, k, old, patch, scope, opts);
        }
        let old = old.ok_or_else(|| ApiError::not_found(&rt.group_resource(), name))?;
        let old_presented = present(rt, old.clone());
        let new = match kind {
            PatchType::Json => patch::json_patch(&old_presented, &patch)?,
            PatchType::Merge => patch::merge_patch(&old_presented, &patch)?,
            PatchType::Strategic if rt.custom => {
                return Err(ApiError::unsupported_media_type(
                    "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml",
                ));
            }
            PatchType::Strategic => patch::strategic_merge_patch(&old_presented, &patch)?,
            PatchType::Apply => old_presented,
        };
        if meta_str(&new, "name") != Some(name) {
            return Err(ApiError::bad_request("metadata.name may not be changed by a patch"));
        }
        check_preconditions(rt, name, &new, &old)?;
        Ok((200, self.commit(rt, k, old, new, scope, opts, false)?))
    }

    #[allow(clippy::too_many_arguments)]
    fn server_side_apply(
        &mut self,
        rt: &ResourceType,
        namespace: Option<&str>,
        name: &str,
        k: Key,
        old: Option<Value>,
        config: Value,
        scope: Scope,
        opts: &WriteOptions,
    ) -> ApiResult<(u16, Value)> {
        if opts.field_manager.is_empty() {
            return Err(ApiError::bad_request(
                "PATCH /apply: fieldManager is required for apply requests",
            ));
        }
        check_body(rt, &config)?;
        if config["apiVersion"].as_str().is_none() || config["kind"].as_str().is_none() {
            return Err(ApiError::bad_request(
                "apiVersion and kind must be set in an applied configuration",
            ));
        }
        if meta_str(&config, "name").is_some_and(|n| n != name) {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                meta_str(&config, "name").unwrap_or_default()
            )));
        }
        let now = now();
        if let Some(old) = &old {
            check_preconditions(rt, name, &config, old)?;
        }
        let live = old.as_ref().map(|o| present(rt, o.clone()));
        let merged =
            apply::apply(live.as_ref(), &config, &opts.field_manager, opts.force, scope, &now)
                .map_err(|conflicts| {
                    let mut err = ApiError::conflict(&rt.group_resource(), name, "");
                    err.message = apply_conflict_message(&conflicts);
                    err
                })?;
        match old {
            Some(old) => Ok((200, self.commit(rt, k, old, merged, scope, opts, true)?)),
            None if scope == Scope::Status => Err(ApiError::not_found(&rt.group_resource(), name)),
            None => {
                let mut obj = merged;
                set_path(&mut obj, &["metadata", "name"], Value::String(name.to_owned()));
                Ok((201, self.create_object(rt, namespace, obj, opts, true)?))
            }
        }
    }

    /// The shared tail of update and patch: status subresource rules, managed fields,
    /// generation, validation, no-op detection, and removal once the last finalizer is gone.
    #[allow(clippy::too_many_arguments)]
    fn commit(
        &mut self,
        rt: &ResourceType,
        k: Key,
        old: Value,
        new: Value,
        scope: Scope,
        opts: &WriteOptions,
        applied: bool,
    ) -> ApiResult<Value> {
        // Everything below compares and writes in `rt`'s form; `store_put` converts back.
        let old = present(rt, old);
        let mut new = match scope {
            Scope::Status => {
                let mut out = old.clone();
                match new.get("status") {
                    Some(s) => set_path(&mut out, &["status"], s.clone()),
                    None => {
                        if let Some(m) = out.as_object_mut() {
                            m.remove("status");
                        }
                    }
                }
                if applied {
                    let managed = new["metadata"]["managedFields"].clone();
                    set_path(&mut out, &["metadata", "managedFields"], managed);
                }
                out
            }
            Scope::Main { without_status } => {
                let mut out = new;
                if without_status && let Some(m) = out.as_object_mut() {
                    match old.get("status") {
                        Some(s) => {
                            m.insert("status".into(), s.clone());
                        }
                        None => {
                            m.remove("status");
                        }
                    }
                }
                out
            }
        };
        new = present(rt, new);
        {
            let Some(meta) = new.get_mut("metadata").and_then(Value::as_object_mut) else {
                return Err(ApiError::bad_request("metadata must be an object"));
            };
            for field in [
                "name",
                "namespace",
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
                "resourceVersion",
            ] {
                match old["metadata"].get(field) {
                    Some(v) => meta.insert(field.into(), v.clone()),
                    None => meta.remove(field),
                };
            }
            if !applied {
                match old["metadata"].get("managedFields") {
                    Some(v) => meta.insert("managedFields".into(), v.clone()),
                    None => meta.remove("managedFields"),
                };
            }
        }
        if old["metadata"]["deletionTimestamp"].is_string() {
            let before: BTreeSet<String> = finalizers(&old).into_iter().collect();
            if finalizers(&new).iter().any(|f| !before.contains(f)) {
                return Err(invalid_meta(
                    rt,
                    &k.name,
                    "metadata.finalizers",
                    "no new finalizers can be added if the object is being deleted",
                    false,
                ));
            }
        }
        if rt.plural == "customresourcedefinitions" {
            check_crd(&mut new)?;
        }
        custom::admit(rt, &mut new, opts.field_validation)?;
        if tracks_generation(rt) && spec_part(&new) != spec_part(&old) {
            let generation = old["metadata"]["generation"].as_i64().unwrap_or(0) + 1;
            set_path(&mut new, &["metadata", "generation"], json!(generation));
        }
        if !applied {
            apply::track_update(Some(&old), &mut new, &opts.field_manager, scope, &now());
        }
        let unchanged = {
            let strip = |v: &Value| {
                let mut v = v.clone();
                if let Some(m) = v["metadata"].as_object_mut() {
                    m.remove("managedFields");
                }
                v
            };
            strip(&new) == strip(&old)
        };
        if unchanged {
            return Ok(old);
        }
        if opts.dry_run {
            return Ok(new);
        }
        if new["metadata"]["deletionTimestamp"].is_string() && finalizers(&new).is_empty() {
            self.store.put(k.clone(), rt.to_storage(new));
            let gone = self.remove_now(&k);
            return Ok(present(rt, gone.unwrap_or(Value::Null)));
        }
        Ok(self.store_put(rt, k, new))
    }

    /// Deletes an object: at once, or (with finalizers) by setting `deletionTimestamp`.
    /// Returns the object and whether it is still there.
    pub(crate) fn delete(
        &mut self,
        rt: &ResourceType,
        namespace: Option<&str>,
        name: &str,
        opts: &DeleteOptions,
    ) -> ApiResult<(Value, bool)> {
        let k = key(rt, namespace, name);
        let obj = self
            .store
            .get(&k)
            .cloned()
            .ok_or_else(|| ApiError::not_found(&rt.group_resource(), name))?;
        if let Some(uid) = &opts.uid
            && Some(uid.as_str()) != meta_str(&obj, "uid")
        {
            return Err(ApiError::conflict(
                &rt.group_resource(),
                name,
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    meta_str(&obj, "uid").unwrap_or_default()
                ),
            ));
        }
        if let Some(rv) = &opts.resource_version
            && Some(rv.as_str()) != meta_str(&obj, "resourceVersion")
        {
            return Err(ApiError::conflict(
                &rt.group_resource(),
                name,
                &format!(
                    "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                    meta_str(&obj, "resourceVersion").unwrap_or_default()
                ),
            ));
        }
        if opts.dry_run {
            return Ok((present(rt, obj), false));
        }
        let uid = meta_str(&obj, "uid").unwrap_or_default().to_owned();
        match opts.propagation.as_deref() {
            Some("Orphan") => self.orphan_dependents(&uid),
            Some("Foreground") => {
                // Deepest dependents first; the visited set makes ownership cycles harmless.
                for dependent in self.transitive_dependents(&uid).into_iter().rev() {
                    self.delete_key(&dependent, None);
                }
            }
            _ => {}
        }
        let is_namespace = rt.group.is_empty() && rt.plural == "namespaces";
        if !finalizers(&obj).is_empty() || is_namespace {
            let mut held = obj.clone();
            if held["metadata"]["deletionTimestamp"].is_null() {
                set_path(&mut held, &["metadata", "deletionTimestamp"], Value::String(now()));
                set_path(&mut held, &["metadata", "deletionGracePeriodSeconds"], json!(0));
                if is_namespace {
                    set_path(&mut held, &["status", "phase"], json!("Terminating"));
                }
                held = self.store.put(k.clone(), held);
            }
            if is_namespace {
                self.empty_namespace(name);
                if let Some(still) = self.store.get(&k).cloned() {
                    return Ok((present(rt, still), true));
                }
                return Ok((present(rt, held), false));
            }
            return Ok((present(rt, held), true));
        }
        let gone = self.remove_now(&k).unwrap_or(obj);
        if rt.plural == "customresourcedefinitions" {
            self.rebuild_registry();
        }
        Ok((present(rt, gone), false))
    }

    /// Deletes every matching object; returns them as they were before deletion.
    pub(crate) fn delete_collection(
        &mut self,
        rt: &ResourceType,
        namespace: Option<&str>,
        list: &ListOptions,
        opts: &DeleteOptions,
    ) -> ApiResult<Vec<Value>> {
        let list = ListOptions { limit: 0, continue_token: None, ..list.clone() };
        let (items, _, _) = self.list(rt, namespace, &list)?;
        let mut out = Vec::new();
        for item in items {
            let name = meta_str(&item, "name").unwrap_or_default().to_owned();
            let ns = meta_str(&item, "namespace").map(str::to_owned);
            match self.delete(rt, ns.as_deref(), &name, opts) {
                Ok((obj, _)) => out.push(obj),
                Err(e) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }
}

/// The message of an apply conflict, worded as kube-apiserver words it (clients and users match
/// on it): one conflict inline, several grouped by manager in name order, one path per line.
fn apply_conflict_message(conflicts: &[apply::Conflict]) -> String {
    if let [only] = conflicts {
        return format!(
            "Apply failed with 1 conflict: conflict with \"{}\": {}",
            only.manager, only.field
        );
    }
    let mut by_manager: BTreeMap<&str, Vec<&str>> = Default::default();
    for conflict in conflicts {
        by_manager.entry(&conflict.manager).or_default().push(&conflict.field);
    }
    let mut lines = Vec::new();
    for (manager, fields) in by_manager {
        lines.push(format!("conflicts with \"{manager}\":"));
        lines.extend(fields.into_iter().map(|field| format!("- {field}")));
    }
    format!("Apply failed with {} conflicts: {}", conflicts.len(), lines.join("\n"))
}

/// A `resourceVersion` or `uid` a client sends must match the stored object's.
fn check_preconditions(rt: &ResourceType, name: &str, sent: &Value, old: &Value) -> ApiResult<()> {
    if let Some(rv) = meta_str(sent, "resourceVersion")
        && Some(rv) != meta_str(old, "resourceVersion")
    {
        return Err(ApiError::conflict(
            &rt.group_resource(),
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        ));
    }
    if let Some(uid) = meta_str(sent, "uid")
        && Some(uid) != meta_str(old, "uid")
    {
        return Err(ApiError::conflict(
            &rt.group_resource(),
            name,
            &format!(
                "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                meta_str(old, "uid").unwrap_or_default()
            ),
        ));
    }
    Ok(())
}

fn check_body(rt: &ResourceType, obj: &Value) -> ApiResult<()> {
    if !obj.is_object() {
        return Err(ApiError::bad_request("the body of the request must be a JSON object"));
    }
    if obj.get("metadata").is_some_and(|m| !m.is_object()) {
        return Err(ApiError::bad_request("metadata must be an object"));
    }
    if let Some(kind) = obj["kind"].as_str()
        && kind != rt.kind
    {
        return Err(ApiError::bad_request(format!(
            "the kind of the object ({kind}) does not match the kind of the resource ({})",
            rt.kind
        )));
    }
    if let Some(api_version) = obj["apiVersion"].as_str()
        && api_version != rt.api_version()
    {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({api_version}) does not match the expected API version ({})",
            rt.api_version()
        )));
    }
    Ok(())
}

/// Status a real API server gives a new object of a built-in type; custom resources with a
/// status subresource start without status.
fn initial_status(rt: &ResourceType, obj: &mut Value) {
    let Some(map) = obj.as_object_mut() else { return };
    match (rt.group.as_str(), rt.plural.as_str()) {
        ("", "namespaces") => {
            map.insert("status".into(), json!({"phase": "Active"}));
            if obj["spec"]["finalizers"].is_null() {
                set_path(obj, &["spec", "finalizers"], json!(["kubernetes"]));
            }
        }
        ("", "secrets") => {
            map.entry("type").or_insert_with(|| json!("Opaque"));
        }
        ("", "pods") => {
            map.insert("status".into(), json!({"phase": "Pending"}));
        }
        ("", "services") => {
            map.insert("status".into(), json!({"loadBalancer": {}}));
            if obj["spec"]["type"].is_null() {
                set_path(obj, &["spec", "type"], json!("ClusterIP"));
            }
        }
        _ if rt.status_subresource => {
            map.remove("status");
        }
        _ => {}
    }
}

/// Validates a CRD (names, versions, structural schemas) and marks it established.
fn check_crd(obj: &mut Value) -> ApiResult<()> {
    use kubefaas_core::validation::{ErrorKind, FieldError, ValidationErrors};
    let name = meta_str(obj, "name").unwrap_or_default().to_owned();
    let spec = &obj["spec"];
    let mut errors = Vec::new();
    let mut need = |path: &str, ok: bool| {
        if !ok {
            errors.push(FieldError {
                path: path.to_owned(),
                kind: ErrorKind::Required,
                detail: String::new(),
            });
        }
    };
    let group = spec["group"].as_str().unwrap_or_default();
    let plural = spec["names"]["plural"].as_str().unwrap_or_default();
    need("spec.group", !group.is_empty());
    need("spec.names.plural", !plural.is_empty());
    need("spec.names.kind", spec["names"]["kind"].as_str().is_some_and(|s| !s.is_empty()));
    need("spec.versions", spec["versions"].as_array().is_some_and(|v| !v.is_empty()));
    if !group.is_empty() && !plural.is_empty() && name != format!("{plural}.{group}") {
        errors.push(FieldError {
            path: "metadata.name".into(),
            kind: ErrorKind::Invalid,
            detail: format!("{name:?}: must be spec.names.plural+\".\"+spec.group"),
        });
    }
    for (i, version) in spec["versions"].as_array().into_iter().flatten().enumerate() {
        let schema = &version["schema"]["openAPIV3Schema"];
        let path = format!("spec.versions[{i}].schema.openAPIV3Schema");
        if schema.is_null() {
            continue;
        }
        match serde_json::from_value(schema.clone()) {
            Ok(props) => {
                for violation in kubefaas_core::schema::structural_violations(&props) {
                    errors.push(FieldError {
                        path: path.clone(),
                        kind: ErrorKind::Invalid,
                        detail: violation,
                    });
                }
            }
            Err(e) => {
                errors.push(FieldError { path, kind: ErrorKind::Invalid, detail: e.to_string() })
            }
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::invalid(
            "CustomResourceDefinition",
            "apiextensions.k8s.io",
            &name,
            &ValidationErrors(errors),
        ));
    }
    let stored: Vec<Value> = spec["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["storage"].as_bool() == Some(true))
        .map(|v| v["name"].clone())
        .collect();
    let names = spec["names"].clone();
    let now = now();
    let condition = |t: &str, reason: &str, message: &str| json!({"type": t, "status": "True", "lastTransitionTime": now, "reason": reason, "message": message});
    set_path(
        obj,
        &["status"],
        json!({
            "acceptedNames": names,
            "conditions": [
                condition("NamesAccepted", "NoConflicts", "no conflicts found"),
                condition("Established", "InitialNamesAccepted", "the initial names have been accepted"),
            ],
            "storedVersions": stored,
        }),
    );
    Ok(())
}

fn parse_yaml_or_json(body: &[u8]) -> ApiResult<Value> {
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        return Ok(v);
    }
    let text =
        std::str::from_utf8(body).map_err(|_| ApiError::bad_request("the body is not UTF-8"))?;
    serde_saphyr::from_str::<Value>(text)
        .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))
}

/// A continue token: the last key served and the list's `resourceVersion`, as hex of JSON.
fn encode_continue(namespace: &str, name: &str, rv: u64) -> String {
    let raw = json!([namespace, name, rv]).to_string();
    raw.bytes().map(|b| format!("{b:02x}")).collect()
}

fn decode_continue(token: &str) -> ApiResult<(String, String, u64)> {
    let bad = || ApiError::bad_request("continue key is not valid");
    if !token.len().is_multiple_of(2) {
        return Err(bad());
    }
    let bytes: Option<Vec<u8>> = (0..token.len())
        .step_by(2)
        .map(|i| token.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect();
    let parsed: (String, String, u64) =
        serde_json::from_slice(&bytes.ok_or_else(bad)?).map_err(|_| bad())?;
    Ok(parsed)
}

/// Builds a `…List` object.
pub(crate) fn list_object(
    rt: &ResourceType,
    items: Vec<Value>,
    rv: String,
    next: Option<String>,
) -> Value {
    let mut meta = Map::new();
    meta.insert("resourceVersion".into(), Value::String(rv));
    if let Some(next) = next {
        meta.insert("continue".into(), Value::String(next));
    }
    json!({
        "apiVersion": rt.api_version(),
        "kind": format!("{}List", rt.kind),
        "metadata": meta,
        "items": items,
    })
}
