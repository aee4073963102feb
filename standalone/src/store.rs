//! The object store: objects as JSON keyed by group, resource, namespace and name; one global,
//! monotonically increasing `resourceVersion`; a bounded event history for watches; and
//! optional persistence to a data directory.
//!
//! Objects are stored once per group and resource, not per version: served versions of a type
//! share storage, and reads rewrite `apiVersion` (what a CRD with conversion strategy `None`
//! does).
//!
//! Persistence is an append-only JSON-lines log (`objects.jsonl`) of puts and deletes, compacted
//! into a snapshot (`snapshot.json`, written to a temporary file and renamed) every time the
//! store is opened. Log lines are written, not fsynced, per change.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::broadcast;

use crate::error::Error;

/// Where an object lives.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub(crate) struct Key {
    /// API group ("" for core).
    pub(crate) group: String,
    /// Plural resource name.
    pub(crate) resource: String,
    /// Namespace ("" for cluster-scoped objects).
    pub(crate) namespace: String,
    /// Object name.
    pub(crate) name: String,
}

/// What happened to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EventType {
    /// Created.
    Added,
    /// Changed.
    Modified,
    /// Removed.
    Deleted,
}

impl EventType {
    /// The watch event `type`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Added => "ADDED",
            Self::Modified => "MODIFIED",
            Self::Deleted => "DELETED",
        }
    }
}

/// One change, as watches see it.
#[derive(Debug, Clone)]
pub(crate) struct Event {
    /// The `resourceVersion` the change produced.
    pub(crate) rv: u64,
    /// What happened.
    pub(crate) kind: EventType,
    /// Which object.
    pub(crate) key: Key,
    /// The object after the change (before removal for deletes, with the new version).
    pub(crate) object: Arc<Value>,
    /// The object before a modification or removal (as it was stored), so selector-filtered
    /// watches can tell when an object enters or leaves their selection and a paginated list
    /// can be served from one past version.
    pub(crate) previous: Option<Arc<Value>>,
}

#[derive(Serialize, Deserialize)]
struct Record {
    rv: u64,
    key: Key,
    /// `None` records a delete.
    object: Option<Value>,
}

#[derive(Deserialize, Default)]
struct Snapshot {
    rv: u64,
    objects: Vec<(Key, Value)>,
}

/// What a snapshot is written from (the shape [`Snapshot`] reads).
#[derive(Serialize)]
struct SnapshotRef<'a> {
    rv: u64,
    objects: Vec<(&'a Key, &'a Value)>,
}

/// How many log records trigger a compaction into a new snapshot.
const COMPACT_EVERY: usize = 10_000;

/// The data directory: a snapshot plus the log of changes made since.
#[derive(Debug)]
struct Log {
    dir: PathBuf,
    file: Option<File>,
    records: usize,
    compact_every: usize,
}

impl Log {
    /// Writes a snapshot of `objects` (to a temporary file, synced, then renamed over the old
    /// one) and starts an empty log.
    fn compact(&mut self, objects: &BTreeMap<Key, Value>, rv: u64) -> Result<(), Error> {
        let snapshot = SnapshotRef { rv, objects: objects.iter().collect() };
        let tmp = self.dir.join(format!("{SNAPSHOT}.tmp"));
        let text = serde_json::to_vec(&snapshot)
            .map_err(|source| Error::CorruptData { path: tmp.display().to_string(), source })?;
        std::fs::write(&tmp, text).map_err(io_err(&tmp))?;
        File::open(&tmp).and_then(|f| f.sync_all()).map_err(io_err(&tmp))?;
        let snapshot_path = self.dir.join(SNAPSHOT);
        std::fs::rename(&tmp, &snapshot_path).map_err(io_err(&snapshot_path))?;
        let log_path = self.dir.join(LOG);
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&log_path)
            .map_err(io_err(&log_path))?;
        self.file = Some(file);
        self.records = 0;
        Ok(())
    }

    fn append(&mut self, record: &Record) -> std::io::Result<()> {
        let file = self.file.as_mut().ok_or_else(|| std::io::Error::other("log is not open"))?;
        let mut line = serde_json::to_vec(record).map_err(std::io::Error::other)?;
        line.push(b'\n');
        file.write_all(&line)?;
        self.records += 1;
        Ok(())
    }
}

/// Receives the changes made after a subscription.
pub(crate) type Subscription = broadcast::Receiver<Arc<Event>>;

/// Objects, versions and history. Callers hold it under one lock, so every operation that
/// reads and then writes is atomic.
#[derive(Debug)]
pub(crate) struct Store {
    objects: BTreeMap<Key, Value>,
    rv: u64,
    history: VecDeque<Arc<Event>>,
    history_limit: usize,
    log: Option<Log>,
    events: broadcast::Sender<Arc<Event>>,
    /// Owner uid → keys of the objects whose `ownerReferences` name it.
    dependents: BTreeMap<String, BTreeSet<Key>>,
    /// Uids of the stored objects.
    uids: BTreeSet<String>,
}

fn owner_uids(object: &Value) -> impl Iterator<Item = &str> {
    object["metadata"]["ownerReferences"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["uid"].as_str())
}

const LOG: &str = "objects.jsonl";
const SNAPSHOT: &str = "snapshot.json";

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::DataDir { path: path.display().to_string(), source }
}

impl Store {
    /// An empty store, persisted to `data_dir` when given (loading what is already there).
    pub(crate) fn open(data_dir: Option<&Path>, history_limit: usize) -> Result<Self, Error> {
        let (events, _) = broadcast::channel(4096);
        let mut store = Self {
            objects: BTreeMap::new(),
            dependents: BTreeMap::new(),
            uids: BTreeSet::new(),
            rv: 0,
            history: VecDeque::new(),
            history_limit: history_limit.max(1),
            log: None,
            events,
        };
        if let Some(dir) = data_dir {
            std::fs::create_dir_all(dir).map_err(io_err(dir))?;
            let snapshot_path = dir.join(SNAPSHOT);
            let log_path = dir.join(LOG);
            if snapshot_path.exists() {
                let text =
                    std::fs::read_to_string(&snapshot_path).map_err(io_err(&snapshot_path))?;
                let snapshot: Snapshot = serde_json::from_str(&text).map_err(|source| {
                    Error::CorruptData { path: snapshot_path.display().to_string(), source }
                })?;
                store.rv = snapshot.rv;
                store.objects = snapshot.objects.into_iter().collect();
            }
            if log_path.exists() {
                let file = File::open(&log_path).map_err(io_err(&log_path))?;
                for line in BufReader::new(file).lines() {
                    let line = line.map_err(io_err(&log_path))?;
                    if line.trim().is_empty() {
                        continue;
                    }
                    // A torn last line (crash mid-write) is dropped; earlier lines are intact.
                    let Ok(record) = serde_json::from_str::<Record>(&line) else {
                        tracing::warn!(path = %log_path.display(), "ignoring a torn log record");
                        continue;
                    };
                    store.rv = store.rv.max(record.rv);
                    match record.object {
                        Some(object) => store.objects.insert(record.key, object),
                        None => store.objects.remove(&record.key),
                    };
                }
            }
            let mut log =
                Log { dir: dir.to_owned(), file: None, records: 0, compact_every: COMPACT_EVERY };
            log.compact(&store.objects, store.rv)?;
            store.log = Some(log);
        }
        Ok(store)
    }

    /// The latest `resourceVersion`.
    pub(crate) fn rv(&self) -> u64 {
        self.rv
    }

    /// The oldest `resourceVersion` a watch can resume from.
    pub(crate) fn oldest_resumable(&self) -> u64 {
        self.history.front().map_or(self.rv, |e| e.rv - 1)
    }

    /// One object.
    pub(crate) fn get(&self, key: &Key) -> Option<&Value> {
        self.objects.get(key)
    }

    /// Objects of one group/resource, in one namespace or all, ordered by namespace and name.
    pub(crate) fn list<'a>(
        &'a self,
        group: &'a str,
        resource: &'a str,
        namespace: Option<&'a str>,
    ) -> impl Iterator<Item = (&'a Key, &'a Value)> + 'a {
        let start = Key {
            group: group.to_owned(),
            resource: resource.to_owned(),
            namespace: namespace.unwrap_or_default().to_owned(),
            name: String::new(),
        };
        self.objects.range(start..).take_while(move |(k, _)| {
            k.group == group
                && k.resource == resource
                && namespace.is_none_or(|ns| k.namespace == ns)
        })
    }

    /// Objects of one group/resource as they were at `rv`, rebuilt from today's by undoing the
    /// later changes in the history: what the next page of a paginated list is served from, so
    /// that all its pages show one version, as a real API server's do. `None` when history back
    /// to `rv` has been dropped (the caller answers 410).
    pub(crate) fn list_at<'a>(
        &'a self,
        group: &'a str,
        resource: &'a str,
        namespace: Option<&'a str>,
        rv: u64,
    ) -> Option<BTreeMap<&'a Key, &'a Value>> {
        if rv < self.oldest_resumable() || rv > self.rv {
            return None;
        }
        let mut objects: BTreeMap<&Key, &Value> = self.list(group, resource, namespace).collect();
        let ours = |k: &Key| {
            k.group == group
                && k.resource == resource
                && namespace.is_none_or(|ns| k.namespace == ns)
        };
        for event in self.history.iter().rev().take_while(|e| e.rv > rv) {
            if !ours(&event.key) {
                continue;
            }
            match (event.kind, event.previous.as_deref()) {
                (EventType::Added, _) => {
                    objects.remove(&event.key);
                }
                (_, Some(before)) => {
                    objects.insert(&event.key, before);
                }
                // Modifications and removals always record what they replaced.
                (_, None) => {}
            }
        }
        Some(objects)
    }

    /// Every object (for garbage collection and namespace cleanup).
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&Key, &Value)> {
        self.objects.iter()
    }

    /// Writes an object with a new `resourceVersion`, which is returned.
    pub(crate) fn put(&mut self, key: Key, mut object: Value) -> Value {
        self.rv += 1;
        let rv = self.rv;
        if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert("resourceVersion".into(), Value::String(rv.to_string()));
        }
        self.persist(rv, &key, Some(&object));
        let previous = self.objects.insert(key.clone(), object.clone()).map(Arc::new);
        self.index(&key, previous.as_deref(), Some(&object));
        let kind = if previous.is_some() { EventType::Modified } else { EventType::Added };
        self.record(Event { rv, kind, key, object: Arc::new(object.clone()), previous });
        self.maybe_compact();
        object
    }

    /// Removes an object; the returned copy carries the deletion's `resourceVersion`.
    pub(crate) fn remove(&mut self, key: &Key) -> Option<Value> {
        let stored = self.objects.remove(key)?;
        self.index(key, Some(&stored), None);
        let mut object = stored.clone();
        self.rv += 1;
        let rv = self.rv;
        if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert("resourceVersion".into(), Value::String(rv.to_string()));
        }
        self.persist(rv, key, None);
        self.record(Event {
            rv,
            kind: EventType::Deleted,
            key: key.clone(),
            object: Arc::new(object.clone()),
            previous: Some(Arc::new(stored)),
        });
        self.maybe_compact();
        Some(object)
    }

    /// Keys of the objects that name `uid` in their `ownerReferences`.
    pub(crate) fn dependents_of(&self, uid: &str) -> Vec<Key> {
        self.dependents.get(uid).map(|keys| keys.iter().cloned().collect()).unwrap_or_default()
    }

    /// Whether an object with this uid is stored.
    pub(crate) fn is_live(&self, uid: &str) -> bool {
        self.uids.contains(uid)
    }

    fn index(&mut self, key: &Key, before: Option<&Value>, after: Option<&Value>) {
        let uid_of = |o: &Value| o["metadata"]["uid"].as_str().map(str::to_owned);
        if let Some(uid) = before.and_then(uid_of) {
            self.uids.remove(&uid);
        }
        if let Some(uid) = after.and_then(uid_of) {
            self.uids.insert(uid);
        }
        for uid in before.into_iter().flat_map(owner_uids) {
            if let Some(keys) = self.dependents.get_mut(uid) {
                keys.remove(key);
                if keys.is_empty() {
                    self.dependents.remove(uid);
                }
            }
        }
        for uid in after.into_iter().flat_map(owner_uids) {
            self.dependents.entry(uid.to_owned()).or_default().insert(key.clone());
        }
    }

    /// Events after `rv` still in the history, and a receiver for later ones. `None` when
    /// history after `rv` has been dropped (the caller answers 410).
    pub(crate) fn subscribe(&self, rv: u64) -> Option<(Vec<Arc<Event>>, Subscription)> {
        if rv < self.oldest_resumable() {
            return None;
        }
        let backlog = self.history.iter().filter(|e| e.rv > rv).cloned().collect();
        Some((backlog, self.events.subscribe()))
    }

    /// A receiver for changes from now on.
    pub(crate) fn subscribe_now(&self) -> broadcast::Receiver<Arc<Event>> {
        self.events.subscribe()
    }

    fn record(&mut self, event: Event) {
        let event = Arc::new(event);
        self.history.push_back(event.clone());
        while self.history.len() > self.history_limit {
            self.history.pop_front();
        }
        // No receivers is fine: nobody watches.
        let _ = self.events.send(event);
    }

    fn persist(&mut self, rv: u64, key: &Key, object: Option<&Value>) {
        let Some(log) = &mut self.log else { return };
        let record = Record { rv, key: key.clone(), object: object.cloned() };
        if let Err(error) = log.append(&record) {
            tracing::error!(dir = %log.dir.display(), %error, "could not persist a change");
        }
    }

    /// Compacts the log once it is long; called after the change is applied in memory, so
    /// the snapshot includes it.
    fn maybe_compact(&mut self) {
        let Some(log) = &mut self.log else { return };
        if log.records < log.compact_every {
            return;
        }
        if let Err(error) = log.compact(&self.objects, self.rv) {
            tracing::error!(dir = %log.dir.display(), %error, "could not compact the data directory");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use serde_json::json;

    fn key(name: &str) -> Key {
        Key {
            group: "".into(),
            resource: "configmaps".into(),
            namespace: "ns".into(),
            name: name.into(),
        }
    }

    #[test]
    fn reopened_store_keeps_objects_and_continues_versions() {
        let dir = std::env::temp_dir().join(format!("kubefaas-store-{}", uuid::Uuid::new_v4()));
        {
            let mut store = Store::open(Some(&dir), 10).unwrap();
            store.put(key("a"), json!({"metadata": {"name": "a"}}));
            store.put(key("b"), json!({"metadata": {"name": "b"}}));
            store.remove(&key("a"));
        }
        let mut store = Store::open(Some(&dir), 10).unwrap();
        assert_eq!(store.rv(), 3);
        assert!(store.get(&key("a")).is_none());
        assert_eq!(store.get(&key("b")).unwrap()["metadata"]["resourceVersion"], "2");
        let c = store.put(key("c"), json!({"metadata": {"name": "c"}}));
        assert_eq!(c["metadata"]["resourceVersion"], "4");
        drop(store);
        assert_eq!(Store::open(Some(&dir), 10).unwrap().rv(), 4);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_long_log_is_compacted_into_the_snapshot() {
        let dir = std::env::temp_dir().join(format!("kubefaas-store-{}", uuid::Uuid::new_v4()));
        let mut store = Store::open(Some(&dir), 10).unwrap();
        store.log.as_mut().unwrap().compact_every = 3;
        for name in ["a", "b", "c", "d", "e"] {
            store.put(key(name), json!({"metadata": {"name": name}}));
        }
        let lines = std::fs::read_to_string(dir.join(LOG)).unwrap().lines().count();
        assert_eq!(lines, 2, "three records were compacted away");
        drop(store);
        let store = Store::open(Some(&dir), 10).unwrap();
        assert_eq!((store.rv(), store.iter().count()), (5, 5));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn watch_from_a_version_older_than_the_history_is_refused() {
        let mut store = Store::open(None, 2).unwrap();
        for name in ["a", "b", "c", "d"] {
            store.put(key(name), json!({"metadata": {"name": name}}));
        }
        assert!(store.subscribe(1).is_none());
        let (backlog, _) = store.subscribe(2).unwrap();
        assert_eq!(backlog.iter().map(|e| e.rv).collect::<Vec<_>>(), vec![3, 4]);
    }
}
