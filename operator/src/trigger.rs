//! Controller triggers that never run ahead of the controller's store.
//!
//! A controller looks up each object it is asked to reconcile in its reflector's store, and
//! drops the request (`tried to reconcile object … that was not found in local store`) when the
//! object is not there. After a watch expires (410 Gone) the watcher lists everything again:
//! the store collects that list in a buffer and swaps it in only at the end (`InitDone`), but
//! kube-runtime's own trigger fires on every listed object (`InitApply`) as it arrives. An object
//! created while the watch was broken is therefore reconciled before the store holds it, the
//! request is dropped, and no later event asks for it again: it is never reconciled. That is one
//! of the two ways Invocations were lost when the API server's watch expired under load (the
//! other was the standalone API server serving a paginated relist's later pages from the current
//! state rather than the first page's version; `operator/tests/faults.rs` covers both).
//!
//! [`after_store`] holds the relisted objects back until the store has swapped them in, then
//! triggers each one: every object the watch delivers is reconciled with the store holding it.

use futures::{Stream, StreamExt, stream};
use kube::runtime::watcher::{self, Event};

/// Objects to reconcile, from a stream of watch events that has already gone through the
/// store's writer (`WatchStreamExt::reflect`). Deletions trigger nothing (the finalizer or the
/// owner does that work), as with `Controller::new`.
pub(crate) fn after_store<K: Send + 'static>(
    events: impl Stream<Item = Result<Event<K>, watcher::Error>> + Send + 'static,
) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static {
    events
        .scan(Vec::new(), |relisted: &mut Vec<K>, event| {
            let ready: Vec<Result<K, watcher::Error>> = match event {
                Ok(Event::Apply(object)) => vec![Ok(object)],
                Ok(Event::Delete(_)) => Vec::new(),
                Ok(Event::Init) => {
                    relisted.clear();
                    Vec::new()
                }
                Ok(Event::InitApply(object)) => {
                    relisted.push(object);
                    Vec::new()
                }
                Ok(Event::InitDone) => relisted.drain(..).map(Ok).collect(),
                Err(error) => vec![Err(error)],
            };
            futures::future::ready(Some(stream::iter(ready)))
        })
        .flatten()
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::{
        api::ObjectMeta,
        runtime::{WatchStreamExt, reflector},
    };

    use super::*;

    fn object(name: &str) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                ..ObjectMeta::default()
            },
            ..ConfigMap::default()
        }
    }

    /// Each triggered object is in the store at the moment the controller would look it up —
    /// across a relist, which is where kube-runtime's own trigger runs ahead.
    #[tokio::test]
    async fn every_triggered_object_is_in_the_store_when_it_is_triggered() {
        let (reader, writer) = reflector::store::<ConfigMap>();
        let events = vec![
            Ok(Event::Init),
            Ok(Event::InitApply(object("old"))),
            Ok(Event::InitDone),
            Ok(Event::Apply(object("live"))),
            // The watch expired: everything is listed again, including an object created
            // meanwhile.
            Ok(Event::Init),
            Ok(Event::InitApply(object("old"))),
            Ok(Event::InitApply(object("made-while-expired"))),
            Ok(Event::InitDone),
            Ok(Event::Delete(object("old"))),
        ];
        let triggers = after_store(stream::iter(events).reflect(writer));
        let mut triggers = std::pin::pin!(triggers);
        let mut seen = Vec::new();
        while let Some(next) = triggers.next().await {
            let object = next.unwrap();
            let reference = reflector::ObjectRef::from_obj(&object);
            assert!(reader.get(&reference).is_some(), "{reference} triggered before it is stored");
            seen.push(object.metadata.name.unwrap());
        }
        assert_eq!(seen, ["old", "live", "old", "made-while-expired"]);
    }

    /// The shape of the bug: kube-runtime's trigger, fed the same relist, names an object the
    /// store does not hold yet. Should kube-runtime change this, the test says so.
    #[tokio::test]
    async fn the_plain_trigger_runs_ahead_of_the_store_during_a_relist() {
        let (reader, writer) = reflector::store::<ConfigMap>();
        let events = vec![
            Ok::<_, watcher::Error>(Event::Init),
            Ok(Event::InitApply(object("made-while-expired"))),
            Ok(Event::InitDone),
        ];
        let applied = stream::iter(events).reflect(writer).applied_objects();
        let mut applied = std::pin::pin!(applied);
        let first = applied.next().await.unwrap().unwrap();
        assert!(reader.get(&reflector::ObjectRef::from_obj(&first)).is_none());
    }
}
