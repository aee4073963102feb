//! The function controller.
//!
//! Reconcile is a pipeline: validate the spec, obtain the code, build the code ConfigMap (pure),
//! apply it, record the function in PostgreSQL, then write the status. Every step is idempotent,
//! so a reconcile that runs twice, or after a crash half-way, converges to the same state.
//!
//! `status.lastInvokedAt` is not written here but by `last_invoked`, under a field manager of its
//! own; the statuses built here leave it out so this controller's applies never touch it. Each
//! reconcile hands the function to that tracker, which is how it catches up after a restart.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use k8s_openapi::{
    api::core::v1::ConfigMap,
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference},
};
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{
        controller::Action,
        events::{Event, EventType},
        finalizer::{self, finalizer},
    },
};
use kubefaas_core::{
    code::{self, Package},
    resources::{Function, FunctionPhase, FunctionSpec, FunctionStatus},
    runtime,
    store::{CodeSource, FunctionRecord},
    validation,
};
use serde_json::json;
use uuid::Uuid;

use crate::{
    Context, Error,
    names::{self, condition, reason},
    status,
};

/// How often a ready function is looked at again without any change (drift repair).
const RESYNC: Duration = Duration::from_secs(600);
/// How soon a function whose code is unavailable is retried.
const CODE_RETRY: Duration = Duration::from_secs(15);

/// Reconciles one Function.
pub(crate) async fn reconcile(function: Arc<Function>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile_timer("Function");
    let namespace = function
        .namespace()
        .ok_or(Error::MissingField { kind: "Function", field: "metadata.namespace" })?;
    let api: Api<Function> = Api::namespaced(ctx.client.clone(), &namespace);
    finalizer(&api, names::FUNCTION_FINALIZER, function, |event| async {
        match event {
            finalizer::Event::Apply(function) => apply(&function, &namespace, &ctx).await,
            finalizer::Event::Cleanup(function) => cleanup(&function, &namespace, &ctx).await,
        }
    })
    .await
    .map_err(|error| Error::Finalizer(Box::new(error)))
}

/// Transient errors back off; the next change or retry tries again.
pub(crate) fn error_policy(function: Arc<Function>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile_failed("Function");
    tracing::warn!(function = %function.name_any(), error = %error, "function reconcile failed");
    Action::requeue(Duration::from_secs(5))
}

/// What went wrong obtaining the code, for the status.
#[derive(Debug)]
pub(crate) struct CodeProblem(pub(crate) String);

async fn apply(function: &Function, namespace: &str, ctx: &Context) -> Result<Action, Error> {
    let name = function.name_any();
    let previous = function.status.clone().unwrap_or_default();
    // Whatever the spec says now, earlier code may have been invoked.
    ctx.last_invoked.reconciled(function, &ctx.store).await;

    if let Err(errors) = validation::validate_function(&name, &function.spec, &ctx.limits) {
        let message = errors.to_string();
        let status = failed_status(function, &previous, reason::INVALID_SPEC, &message);
        status::write::<Function>(ctx, namespace, &name, &status).await?;
        if previous.message.as_deref() != Some(message.as_str()) {
            publish(ctx, function, EventType::Warning, reason::INVALID_SPEC, &message).await;
        }
        // Nothing will change until the spec does.
        return Ok(Action::await_change());
    }

    let package = match obtain_code(function, namespace, ctx).await? {
        Ok(package) => package,
        Err(CodeProblem(message)) => {
            let status = failed_status(function, &previous, reason::CODE_UNAVAILABLE, &message);
            status::write::<Function>(ctx, namespace, &name, &status).await?;
            if previous.message.as_deref() != Some(message.as_str()) {
                publish(ctx, function, EventType::Warning, reason::CODE_UNAVAILABLE, &message)
                    .await;
            }
            return Ok(Action::requeue(CODE_RETRY));
        }
    };

    let config_map = code_config_map(function, namespace, &package)?;
    let config_maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), namespace);
    let config_map_name = code::config_map_name(&name);
    config_maps
        .patch(
            &config_map_name,
            &PatchParams::apply(names::FIELD_MANAGER).force(),
            &Patch::Apply(&config_map),
        )
        .await
        .map_err(Error::kube("apply code ConfigMap", format!("{namespace}/{config_map_name}")))?;

    let record = function_record(function, namespace, &package)?;
    let (row, _) = ctx.store.upsert_function(&record).await?;

    let checksum = package.checksum();
    let status = ready_status(function, &previous, row.record.id, &package);
    status::write::<Function>(ctx, namespace, &name, &status).await?;
    match previous.code_checksum.as_deref() {
        Some(old) if old != checksum => {
            let note = format!("code changed to {checksum} ({} bytes)", package.size());
            publish(ctx, function, EventType::Normal, reason::CODE_UPDATED, &note).await;
        }
        _ if previous.phase != Some(FunctionPhase::Ready) => {
            let note = format!("code {checksum} stored ({} bytes)", package.size());
            publish(ctx, function, EventType::Normal, reason::READY, &note).await;
        }
        _ => {}
    }
    Ok(Action::requeue(RESYNC))
}

async fn cleanup(function: &Function, namespace: &str, ctx: &Context) -> Result<Action, Error> {
    let name = function.name_any();
    if let Some(uid) = function.uid().and_then(|uid| Uuid::parse_str(&uid).ok()) {
        ctx.last_invoked.forget(uid);
    }
    // Already deleted (a repeated cleanup) counts as done.
    if ctx.store.delete_function_by_name(namespace, &name).await? {
        publish(
            ctx,
            function,
            EventType::Normal,
            reason::DELETED,
            "function marked deleted; its history stays",
        )
        .await;
    }
    // The code ConfigMap and any runtime pods are owned by the Function: garbage collection
    // removes them.
    Ok(Action::await_change())
}

/// The code of the function, or why it cannot be had right now.
async fn obtain_code(
    function: &Function,
    namespace: &str,
    ctx: &Context,
) -> Result<Result<Package, CodeProblem>, Error> {
    let spec = &function.spec;
    // Validation accepted the runtime, so the lookup succeeds; a miss is reported, not a panic.
    let Some(runtime) = runtime::lookup(&spec.runtime) else {
        return Ok(Err(CodeProblem(format!("unknown runtime {:?}", spec.runtime))));
    };
    let language = runtime.language;
    if let Some(text) = &spec.code.inline {
        return Ok(Ok(Package::from_bytes(language, &spec.handler, text.clone().into_bytes())));
    }
    if let Some(encoded) = &spec.code.base64 {
        return Ok(match validation::decode_base64_code(encoded) {
            Ok(bytes) => Ok(Package::from_bytes(language, &spec.handler, bytes)),
            Err(error) => {
                Err(CodeProblem(format!("spec.code.base64 is not valid base64: {error}")))
            }
        });
    }
    if let Some(reference) = &spec.code.config_map_ref {
        let config_maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), namespace);
        let Some(config_map) = config_maps.get_opt(&reference.name).await.map_err(Error::kube(
            "get code ConfigMap",
            format!("{namespace}/{}", reference.name),
        ))?
        else {
            return Ok(Err(CodeProblem(format!("ConfigMap {:?} not found", reference.name))));
        };
        let bytes = config_map
            .data
            .as_ref()
            .and_then(|data| data.get(&reference.key))
            .map(|text| text.clone().into_bytes())
            .or_else(|| {
                config_map
                    .binary_data
                    .as_ref()
                    .and_then(|data| data.get(&reference.key))
                    .map(|b| b.0.clone())
            });
        let Some(bytes) = bytes else {
            return Ok(Err(CodeProblem(format!(
                "ConfigMap {:?} has no key {:?}",
                reference.name, reference.key
            ))));
        };
        if bytes.len() > ctx.limits.max_code_bytes {
            return Ok(Err(CodeProblem(format!(
                "code in ConfigMap {:?} key {:?} is {} bytes; at most {} are allowed",
                reference.name,
                reference.key,
                bytes.len(),
                ctx.limits.max_code_bytes
            ))));
        }
        return Ok(Ok(Package::from_bytes(language, &spec.handler, bytes)));
    }
    if let (Some(url), Some(sha256)) = (&spec.code.url, &spec.code.sha256) {
        // Code already stored under this digest is the same code: no download on every resync
        // or restart, and a server that has gone away does not fail a function it once served.
        if let Some(bytes) = stored_code(function, namespace, ctx, sha256).await? {
            return Ok(Ok(Package::from_bytes(language, &spec.handler, bytes)));
        }
        return Ok(match ctx.fetcher.fetch(url, sha256).await {
            Ok(bytes) => Ok(Package::from_bytes(language, &spec.handler, bytes)),
            Err(error) => Err(CodeProblem(format!("spec.code.url: {error}"))),
        });
    }
    Ok(Err(CodeProblem("spec.code has no source".to_owned())))
}

/// The bytes in the function's own code ConfigMap, if they are the code with SHA-256 `sha256`.
async fn stored_code(
    function: &Function,
    namespace: &str,
    ctx: &Context,
    sha256: &str,
) -> Result<Option<Vec<u8>>, Error> {
    let config_maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), namespace);
    let name = code::config_map_name(&function.name_any());
    let Some(config_map) = config_maps
        .get_opt(&name)
        .await
        .map_err(Error::kube("get code ConfigMap", format!("{namespace}/{name}")))?
    else {
        return Ok(None);
    };
    let ours = function
        .uid()
        .is_some_and(|uid| config_map.owner_references().iter().any(|owner| owner.uid == uid));
    if !ours
        || config_map.annotations().get(code::CHECKSUM_ANNOTATION).map(String::as_str)
            != Some(sha256)
    {
        return Ok(None);
    }
    // The annotation is what the operator wrote; the bytes are checked again all the same.
    Ok(Package::from_config_map(&config_map)
        .ok()
        .filter(|package| package.checksum() == sha256)
        .map(|package| package.bytes().to_vec()))
}

/// The ConfigMap holding the code, owned by the function.
pub(crate) fn code_config_map(
    function: &Function,
    namespace: &str,
    package: &Package,
) -> Result<ConfigMap, Error> {
    let name = function.name_any();
    let owner: OwnerReference = function
        .controller_owner_ref(&())
        .ok_or(Error::MissingField { kind: "Function", field: "metadata.uid" })?;
    let (data, binary_data) = package.config_map_data();
    Ok(ConfigMap {
        metadata: ObjectMeta {
            name: Some(code::config_map_name(&name)),
            namespace: Some(namespace.to_owned()),
            labels: Some(BTreeMap::from([
                (names::FUNCTION_LABEL.to_owned(), name),
                ("app.kubernetes.io/managed-by".to_owned(), names::MANAGED_BY.to_owned()),
            ])),
            annotations: Some(BTreeMap::from([(
                code::CHECKSUM_ANNOTATION.to_owned(),
                package.checksum(),
            )])),
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        data: Some(data).filter(|d| !d.is_empty()),
        binary_data: Some(binary_data).filter(|b| !b.is_empty()),
        ..ConfigMap::default()
    })
}

/// The PostgreSQL row of a valid function. Its id is the Function's uid, so a Function deleted
/// and created again under the same name is a new row.
pub(crate) fn function_record(
    function: &Function,
    namespace: &str,
    package: &Package,
) -> Result<FunctionRecord, Error> {
    let spec: &FunctionSpec = &function.spec;
    let uid =
        function.uid().ok_or(Error::MissingField { kind: "Function", field: "metadata.uid" })?;
    let id = Uuid::parse_str(&uid).map_err(|_| Error::MissingField {
        kind: "Function",
        field: "metadata.uid in UUID form",
    })?;
    let (code_source, code_location) = match (&spec.code.config_map_ref, &spec.code.url, package) {
        (Some(reference), _, _) => {
            (CodeSource::ConfigMap, Some(format!("{}/{}", reference.name, reference.key)))
        }
        (None, Some(url), _) => (CodeSource::Url, Some(url.clone())),
        (None, None, Package::Zip(_)) => (CodeSource::Zip, None),
        (None, None, Package::File { .. }) => (CodeSource::Inline, None),
    };
    let metadata = function
        .annotations()
        .get(names::METADATA_ANNOTATION)
        .and_then(|text| serde_json::from_str::<serde_json::Value>(text).ok())
        .filter(serde_json::Value::is_object)
        .unwrap_or_else(|| json!({}));
    Ok(FunctionRecord {
        id,
        namespace: namespace.to_owned(),
        name: function.name_any(),
        version: spec.version.clone(),
        runtime: spec.runtime.clone(),
        handler: spec.handler.clone(),
        code_source,
        code_location,
        code_checksum: package.checksum(),
        code_size: i64::try_from(package.size()).unwrap_or(i64::MAX),
        timeout_seconds: spec.timeout_seconds,
        memory_mb: spec.memory_mb(),
        cpu_millis: spec.cpu_millis(),
        max_concurrency: spec.max_concurrency,
        environment: spec.env.clone(),
        metadata,
    })
}

pub(crate) fn ready_status(
    function: &Function,
    previous: &FunctionStatus,
    function_id: Uuid,
    package: &Package,
) -> FunctionStatus {
    let generation = function.metadata.generation;
    let checksum = package.checksum();
    FunctionStatus {
        phase: Some(FunctionPhase::Ready),
        conditions: vec![status::condition(
            &previous.conditions,
            condition::READY,
            true,
            reason::READY,
            format!("code {checksum} stored ({} bytes)", package.size()),
            generation,
        )],
        observed_generation: generation,
        function_id: Some(function_id.to_string()),
        code_checksum: Some(checksum),
        code_size: Some(i64::try_from(package.size()).unwrap_or(i64::MAX)),
        // Owned by the field managers of `warm` and `last_invoked`; left out so this apply
        // neither takes nor removes them.
        warm_instances: None,
        last_invoked_at: None,
        message: None,
    }
}

pub(crate) fn failed_status(
    function: &Function,
    previous: &FunctionStatus,
    why: &str,
    message: &str,
) -> FunctionStatus {
    let generation = function.metadata.generation;
    FunctionStatus {
        phase: Some(FunctionPhase::Failed),
        conditions: vec![status::condition(
            &previous.conditions,
            condition::READY,
            false,
            why,
            message,
            generation,
        )],
        observed_generation: generation,
        message: Some(message.to_owned()),
        // What was last stored stays visible: the previous code keeps serving until fixed.
        function_id: previous.function_id.clone(),
        code_checksum: previous.code_checksum.clone(),
        code_size: previous.code_size,
        // See `ready_status`.
        warm_instances: None,
        last_invoked_at: None,
    }
}

/// Records an Event; events are best effort, so a failure is logged and otherwise ignored.
pub(crate) async fn publish<K: Resource<DynamicType = ()>>(
    ctx: &Context,
    object: &K,
    type_: EventType,
    reason: &str,
    note: &str,
) {
    let event = Event {
        type_,
        reason: reason.to_owned(),
        note: Some(note.chars().take(1000).collect()),
        action: "Reconcile".to_owned(),
        secondary: None,
    };
    if let Err(error) = ctx.recorder.publish(&event, &object.object_ref(&())).await {
        tracing::debug!(error = %error, reason, "could not record event");
    }
}

#[cfg(test)]
mod tests {
    use kubefaas_core::resources::FunctionCode;

    use super::*;

    fn function() -> Function {
        let mut function = Function::new(
            "hello",
            FunctionSpec::new(
                "python",
                "main.handler",
                FunctionCode::inline("def handler(e, c):\n    return e\n"),
            ),
        );
        function.metadata.namespace = Some("default".into());
        function.metadata.uid = Some("6f2d1c1e-3a5b-4c8d-9e0f-1a2b3c4d5e6f".into());
        function.metadata.generation = Some(3);
        function
    }

    #[test]
    fn the_code_config_map_is_owned_labelled_and_holds_the_source_under_its_file_name() {
        let function = function();
        let package =
            Package::from_bytes(runtime::Language::Python, "main.handler", b"x = 1\n".to_vec());
        let config_map = code_config_map(&function, "default", &package).unwrap();
        assert_eq!(config_map.metadata.name.as_deref(), Some("hello-code"));
        let owner = &config_map.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.controller),
            ("Function", "hello", Some(true))
        );
        assert_eq!(config_map.data.as_ref().unwrap()["main.py"], "x = 1\n");
        assert_eq!(config_map.metadata.labels.as_ref().unwrap()[names::FUNCTION_LABEL], "hello");
        assert_eq!(
            config_map.metadata.annotations.as_ref().unwrap()[code::CHECKSUM_ANNOTATION],
            package.checksum()
        );
        assert_eq!(Package::from_config_map(&config_map).unwrap(), package);
    }

    #[test]
    fn the_record_carries_limits_in_the_units_of_the_table() {
        let mut function = function();
        function.spec.resources.memory = "200M".into();
        function.spec.resources.cpu = "1.5".into();
        function.metadata.annotations = Some(BTreeMap::from([(
            names::METADATA_ANNOTATION.to_owned(),
            r#"{"team":"a"}"#.to_owned(),
        )]));
        let package =
            Package::from_bytes(runtime::Language::Python, "main.handler", b"x = 1\n".to_vec());
        let record = function_record(&function, "default", &package).unwrap();
        assert_eq!(record.id.to_string(), "6f2d1c1e-3a5b-4c8d-9e0f-1a2b3c4d5e6f");
        assert_eq!(record.memory_mb, 191, "200 MB rounded up to whole MiB");
        assert_eq!(record.cpu_millis, 1500);
        assert_eq!(record.code_source, CodeSource::Inline);
        assert_eq!(record.code_checksum, package.checksum());
        assert_eq!(record.metadata, json!({"team": "a"}));
    }

    #[test]
    fn a_failed_status_keeps_what_was_stored_and_says_why() {
        let function = function();
        let package =
            Package::from_bytes(runtime::Language::Python, "main.handler", b"x = 1\n".to_vec());
        let ready = ready_status(&function, &FunctionStatus::default(), Uuid::nil(), &package);
        assert_eq!(ready.phase, Some(FunctionPhase::Ready));
        assert_eq!(ready.observed_generation, Some(3));
        let failed = failed_status(
            &function,
            &ready,
            reason::INVALID_SPEC,
            "spec.runtime: Unsupported value",
        );
        assert_eq!(failed.phase, Some(FunctionPhase::Failed));
        assert_eq!(failed.code_checksum, ready.code_checksum);
        assert_eq!(failed.conditions[0].status, "False");
        assert_eq!(failed.conditions[0].reason, reason::INVALID_SPEC);
    }

    #[test]
    fn the_statuses_of_this_controller_leave_last_invoked_at_to_its_own_field_manager() {
        let function = function();
        let package =
            Package::from_bytes(runtime::Language::Python, "main.handler", b"x = 1\n".to_vec());
        let previous =
            FunctionStatus { last_invoked_at: Some(status::now()), ..FunctionStatus::default() };
        let ready = ready_status(&function, &previous, Uuid::nil(), &package);
        let failed = failed_status(&function, &previous, reason::INVALID_SPEC, "bad");
        for status in [ready, failed] {
            let applied = serde_json::to_value(&status).unwrap();
            assert!(applied.get("lastInvokedAt").is_none(), "{applied}");
        }
    }
}
