//! Pieces of status shared by both controllers: conditions, timestamps, bounded text.

use std::fmt::Debug;

use chrono::{DateTime, Utc};
use k8s_openapi::{
    NamespaceResourceScope,
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
};
use kube::{
    Api, Resource,
    api::{Patch, PatchParams},
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::json;

use crate::{Context, Error, names};

/// Writes `status` to the status subresource of `K` `namespace/name` with server-side apply, as
/// the operator's field manager: fields the operator set before and left out now are removed.
pub(crate) async fn write<K>(
    ctx: &Context,
    namespace: &str,
    name: &str,
    status: &impl Serialize,
) -> Result<(), Error>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Debug,
{
    let api: Api<K> = Api::namespaced(ctx.client.clone(), namespace);
    let patch = json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(names::FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(Error::kube("write status", format!("{} {namespace}/{name}", K::kind(&()))))?;
    Ok(())
}

/// A condition, keeping `lastTransitionTime` from `existing` when its status did not change (so
/// the time says when it last flipped, not when it was last written).
pub(crate) fn condition(
    existing: &[Condition],
    type_: &str,
    status: bool,
    reason: &str,
    message: impl Into<String>,
    observed_generation: Option<i64>,
) -> Condition {
    let status = if status { "True" } else { "False" };
    let last_transition_time = existing
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map_or_else(now, |c| c.last_transition_time.clone());
    Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message: message.into(),
        observed_generation,
        last_transition_time,
    }
}

/// The current time as a Kubernetes timestamp.
pub(crate) fn now() -> Time {
    Time(jiff::Timestamp::now())
}

/// A database timestamp as a Kubernetes timestamp (to the microsecond).
pub(crate) fn time(at: DateTime<Utc>) -> Option<Time> {
    jiff::Timestamp::from_microsecond(at.timestamp_micros()).ok().map(Time)
}

/// The last `max` bytes of `text` (on a character boundary), marked when cut.
pub(crate) fn tail(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("[… {start} earlier bytes not shown]\n{}", &text[start..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_time_is_kept_while_the_status_holds() {
        let first = condition(&[], "Ready", true, "Ready", "ok", Some(1));
        let old = Time(jiff::Timestamp::UNIX_EPOCH);
        let earlier = Condition { last_transition_time: old.clone(), ..first.clone() };
        let again =
            condition(std::slice::from_ref(&earlier), "Ready", true, "Ready", "still ok", Some(2));
        assert_eq!(again.last_transition_time, old);
        assert_eq!(again.observed_generation, Some(2));
        let flipped = condition(&[earlier], "Ready", false, "InvalidSpec", "bad", Some(3));
        assert_ne!(flipped.last_transition_time, old);
        assert_eq!(flipped.status, "False");
    }

    #[test]
    fn tails_are_bounded_and_marked() {
        assert_eq!(tail("short", 10), "short");
        let cut = tail("0123456789abcdef", 6);
        assert!(cut.ends_with("abcdef"), "{cut}");
        assert!(cut.starts_with("[… 10 earlier bytes not shown]"), "{cut}");
        // Never splits a character.
        let cut = tail("ééééé", 3);
        assert!(cut.ends_with("é"), "{cut}");
    }

    #[test]
    fn database_times_convert_to_the_microsecond() {
        let at = DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap();
        assert_eq!(time(at).unwrap().0.as_microsecond(), 1_700_000_000_123_456);
    }
}
