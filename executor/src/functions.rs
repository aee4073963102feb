//! Functions from the Kubernetes API: the `Function` resource for limits, scaling and retry
//! policy, its code ConfigMap (written by the operator) for the code.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::{Api, Client, ResourceExt};
use kubefaas_core::{
    code::{self, Package},
    resources::{Function, FunctionPhase},
    runtime, validation,
};
use uuid::Uuid;

use crate::{
    Code, FunctionSpec, Limits, Scaling,
    worker::{FunctionSource, ResolvedFunction, WorkerError},
};

/// Resolves functions through the Kubernetes API, caching each by the resource version of its
/// `Function`, so a warm path costs one GET.
pub struct KubeFunctions {
    client: Client,
    /// By (namespace, name): the Function's resource version and what it resolved to.
    cache: Mutex<HashMap<(String, String), Cached>>,
}

type Cached = (String, Arc<ResolvedFunction>);

impl std::fmt::Debug for KubeFunctions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeFunctions").finish_non_exhaustive()
    }
}

impl KubeFunctions {
    /// A source over `client`.
    pub fn new(client: Client) -> Self {
        Self { client, cache: Mutex::default() }
    }
}

fn failure(namespace: &str, name: &str, message: impl Into<String>) -> WorkerError {
    WorkerError::Resolve {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        message: message.into(),
    }
}

impl FunctionSource for KubeFunctions {
    async fn resolve(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Arc<ResolvedFunction>>, WorkerError> {
        let functions: Api<Function> = Api::namespaced(self.client.clone(), namespace);
        let Some(function) =
            functions.get_opt(name).await.map_err(|e| failure(namespace, name, e.to_string()))?
        else {
            return Ok(None);
        };
        if function.metadata.deletion_timestamp.is_some() {
            return Ok(None);
        }
        let version = function.resource_version().unwrap_or_default();
        let key = (namespace.to_owned(), name.to_owned());
        if let Some((cached_version, resolved)) =
            self.cache.lock().unwrap_or_else(PoisonError::into_inner).get(&key)
            && *cached_version == version
        {
            return Ok(Some(Arc::clone(resolved)));
        }

        let status = function.status.clone().unwrap_or_default();
        let current = status.phase == Some(FunctionPhase::Ready)
            && status.observed_generation == function.metadata.generation;
        let (Some(id), Some(checksum)) =
            (status.function_id.as_deref(), status.code_checksum.as_deref())
        else {
            return Err(failure(namespace, name, "function is not ready"));
        };
        if !current {
            return Err(failure(namespace, name, "function is being updated"));
        }
        let id = Uuid::parse_str(id).map_err(|_| {
            failure(namespace, name, format!("status.functionId {id:?} is not a UUID"))
        })?;

        let config_maps: Api<ConfigMap> = Api::namespaced(self.client.clone(), namespace);
        let config_map_name = code::config_map_name(name);
        let config_map = config_maps
            .get(&config_map_name)
            .await
            .map_err(|e| failure(namespace, name, format!("code ConfigMap: {e}")))?;
        if config_map.annotations().get(code::CHECKSUM_ANNOTATION).map(String::as_str)
            != Some(checksum)
        {
            return Err(failure(
                namespace,
                name,
                "code ConfigMap does not hold the current code yet",
            ));
        }
        let package = Package::from_config_map(&config_map)
            .map_err(|e| failure(namespace, name, e.to_string()))?;
        let resolved = Arc::new(
            resolved_function(&function, id, package).map_err(|e| failure(namespace, name, e))?,
        );
        self.cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, (version, Arc::clone(&resolved)));
        Ok(Some(resolved))
    }
}

/// What the worker needs of a ready `Function` and its code.
pub fn resolved_function(
    function: &Function,
    id: Uuid,
    package: Package,
) -> Result<ResolvedFunction, String> {
    let spec = &function.spec;
    let runtime = runtime::lookup(&spec.runtime)
        .ok_or_else(|| format!("unknown runtime {:?}", spec.runtime))?;
    let code = match package {
        Package::File { name, contents } => Code::File { name, contents },
        Package::Zip(bytes) => Code::Zip(bytes),
    };
    let mut driver_spec =
        FunctionSpec::new(function.name_any(), runtime.language, spec.handler.clone(), code)
            .map_err(|e| e.to_string())?;
    driver_spec.namespace = function.metadata.namespace.clone();
    driver_spec.version = spec.version.clone();
    driver_spec.env = spec.env.clone();
    driver_spec.limits = Limits {
        memory_bytes: validation::parse_memory_bytes(&spec.resources.memory)?,
        cpu_millis: validation::parse_cpu_millis(&spec.resources.cpu)?,
        ..Limits::default()
    };
    let non_negative = |n: i32| usize::try_from(n).unwrap_or(0);
    Ok(ResolvedFunction {
        id,
        spec: Arc::new(driver_spec),
        scaling: Scaling {
            min_warm: non_negative(spec.scaling.min_warm),
            max_instances: non_negative(spec.scaling.max_instances).max(1),
            idle_timeout: Duration::from_secs(
                u64::try_from(spec.scaling.idle_timeout_seconds).unwrap_or(0),
            ),
        },
        max_concurrency: non_negative(spec.max_concurrency).max(1),
        retry: spec.retry.clone(),
    })
}
