//! Functions from the Kubernetes API: the `Function` resource for limits, scaling and retry
//! policy, its code ConfigMap (written by the operator) for the code.
//!
//! Functions come from a watch ([`FunctionCache`]), so the warm path of an invocation costs no
//! API round trip. The watch lags the API server, so a cached Function is trusted only when it
//! is Ready for its current generation, has the row id the invocation was queued for, and runs
//! as PostgreSQL said when the invocation was claimed: the same code checksum, handler,
//! runtime, limits and environment (the operator records a changed Function there before it
//! reports it ready). Otherwise (a miss, a Function still being updated, one deleted and created
//! again under the same name, an edit made a moment ago) the Function is read from the API
//! server, as if there were no cache. A deleted Function stops resolving once the watch
//! delivers the deletion. Scaling and retry settings are not in the row; their edits take
//! effect once the watch delivers them, normally within milliseconds.
//!
//! Code is not watched: the operator writes the ConfigMap before it reports the checksum in the
//! Function's status, and the ConfigMap's checksum annotation says which code it holds, so the
//! ConfigMap is read once per checksum and kept with the resolved function. (Watching every
//! code ConfigMap would hold all code of the cluster in each executor's memory.)

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::{Api, Client, ResourceExt, runtime::watcher};
use kubefaas_core::{
    code::{self, Package},
    env_from::{self, EnvSource},
    resources::{Function, FunctionPhase},
    runtime,
    store::FunctionState,
    validation,
    watch::FunctionCache,
};
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::{
    Code, FunctionSpec, Limits, Scaling,
    worker::{Expected, FunctionSource, ResolvedFunction, WorkerError},
};

/// Resolves functions through a watch of `Function`s, reading from the API server only when
/// the watch has not caught up (see the module docs).
pub struct KubeFunctions {
    client: Client,
    cache: FunctionCache,
    /// By (namespace, name): what the function last resolved to.
    resolved: Mutex<HashMap<(String, String), Resolved>>,
    /// Functions read from the API server because the watch had not caught up.
    fetched: std::sync::atomic::AtomicU64,
    /// Whether `envFrom` is resolved into each function's environment here (for a backend
    /// whose instances do not read it themselves).
    resolve_env_from: bool,
}

/// A resolved function and what it was resolved from.
struct Resolved {
    uid: Option<String>,
    generation: Option<i64>,
    checksum: String,
    function: Arc<ResolvedFunction>,
}

impl std::fmt::Debug for KubeFunctions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeFunctions").field("cache", &self.cache).finish_non_exhaustive()
    }
}

impl KubeFunctions {
    /// A source over `client`, watching the Functions of every namespace. The task keeps the
    /// watch going until aborted; resolving works before the first listing arrives (every
    /// function is then read from the API server). With `resolve_env_from`, each function's
    /// `envFrom` Secrets and ConfigMaps are read into its environment when its generation is
    /// first resolved (see [`kubefaas_core::env_from`]); without, `envFrom` is left to the
    /// backend ([`Backend::READS_ENV_FROM`](crate::Backend::READS_ENV_FROM)).
    pub fn start(client: Client, resolve_env_from: bool) -> (Arc<Self>, JoinHandle<()>) {
        let (cache, task) =
            FunctionCache::start(Api::all(client.clone()), watcher::Config::default());
        let functions = Arc::new(Self {
            client,
            cache,
            resolved: Mutex::default(),
            fetched: Default::default(),
            resolve_env_from,
        });
        (functions, task)
    }

    /// The watch-backed cache of Functions.
    pub fn cache(&self) -> &FunctionCache {
        &self.cache
    }

    /// How many times a function was read from the API server because the watch had not
    /// caught up with it (or it does not exist).
    pub fn fetched(&self) -> u64 {
        self.fetched.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn resolved(&self) -> MutexGuard<'_, HashMap<(String, String), Resolved>> {
        self.resolved.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The cached Function, resolved, when the cache can be trusted with it: Ready for its
    /// current generation, and what `expected` says when something is expected.
    pub async fn resolve_cached(
        &self,
        namespace: &str,
        name: &str,
        expected: Option<&Expected>,
    ) -> Option<Arc<ResolvedFunction>> {
        let function = self.cache.get(namespace, name)?;
        let kubefaas_core::resources::Readiness::Ready(id) = function.readiness() else {
            return None;
        };
        if let Some(expected) = expected
            && (expected.id != id
                || expected.state.as_ref().is_some_and(|state| !runs_as(&function, state))
                || expected.generation.is_some_and(|g| function.metadata.generation < Some(g)))
        {
            return None;
        }
        self.build(namespace, name, &function).await.ok()
    }

    /// Reads the function from the API server. `None` when it does not exist or is being
    /// deleted.
    pub async fn fetch(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Arc<ResolvedFunction>>, WorkerError> {
        self.fetched.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let functions: Api<Function> = Api::namespaced(self.client.clone(), namespace);
        let function =
            functions.get_opt(name).await.map_err(|e| failure(namespace, name, e.to_string()))?;
        match function {
            Some(function) if function.metadata.deletion_timestamp.is_none() => {
                self.build(namespace, name, &function).await.map(Some)
            }
            _ => {
                self.forget(namespace, name);
                Ok(None)
            }
        }
    }

    /// Drops what is kept of the function `namespace/name`.
    pub fn forget(&self, namespace: &str, name: &str) {
        self.resolved().remove(&(namespace.to_owned(), name.to_owned()));
    }

    /// `function` resolved, reusing what was resolved for its generation and code before and
    /// reading the code ConfigMap when its checksum is new.
    async fn build(
        &self,
        namespace: &str,
        name: &str,
        function: &Function,
    ) -> Result<Arc<ResolvedFunction>, WorkerError> {
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
        let key = (namespace.to_owned(), name.to_owned());
        let (uid, generation) = (function.uid(), function.metadata.generation);
        let known_code = {
            let resolved = self.resolved();
            match resolved.get(&key) {
                Some(known) if known.uid == uid && known.checksum == checksum => {
                    if known.generation == generation {
                        return Ok(Arc::clone(&known.function));
                    }
                    Some(known.function.spec.code.clone())
                }
                _ => None,
            }
        };
        let code = match known_code {
            Some(code) => code,
            None => self.read_code(namespace, name, checksum).await?,
        };
        let mut resolved =
            resolved_function(function, id, code).map_err(|e| failure(namespace, name, e))?;
        if self.resolve_env_from && !resolved.env_from.is_empty() {
            match env_from::resolve(&self.client, namespace, &resolved.env_from).await {
                Ok(from) => {
                    if !from.skipped.is_empty() {
                        tracing::warn!(
                            %namespace, function = %name, skipped = ?from.skipped,
                            "envFrom keys that are not valid variable names were skipped"
                        );
                    }
                    let spec = Arc::make_mut(&mut resolved.spec);
                    let own = std::mem::replace(&mut spec.env, from.vars);
                    spec.env.extend(own);
                }
                // As a kubelet keeps such a pod from starting: the backend fails the attempt,
                // and the next resolution reads the objects again (this one is not kept).
                Err(error) => {
                    resolved.env_from_error = Some(error.to_string());
                    return Ok(Arc::new(resolved));
                }
            }
        }
        let resolved = Arc::new(resolved);
        self.resolved().insert(
            key,
            Resolved {
                uid,
                generation,
                checksum: checksum.to_owned(),
                function: Arc::clone(&resolved),
            },
        );
        Ok(resolved)
    }

    /// The code of the function from its ConfigMap, which must hold `checksum`.
    async fn read_code(
        &self,
        namespace: &str,
        name: &str,
        checksum: &str,
    ) -> Result<Code, WorkerError> {
        let config_maps: Api<ConfigMap> = Api::namespaced(self.client.clone(), namespace);
        let config_map = config_maps
            .get(&code::config_map_name(name))
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
        Ok(
            match Package::from_config_map(&config_map)
                .map_err(|e| failure(namespace, name, e.to_string()))?
            {
                Package::File { name, contents } => Code::File { name, contents },
                Package::Zip(bytes) => Code::Zip(bytes),
            },
        )
    }
}

/// Whether `function` runs as its PostgreSQL row says: the same code, handler, runtime, limits
/// and environment.
fn runs_as(function: &Function, state: &FunctionState) -> bool {
    let spec = &function.spec;
    function.status.as_ref().and_then(|s| s.code_checksum.as_deref())
        == Some(state.code_checksum.as_str())
        && spec.runtime == state.runtime
        && spec.handler == state.handler
        && spec.memory_mb() == state.memory_mb
        && spec.cpu_millis() == state.cpu_millis
        && spec.env == state.environment
}

fn failure(namespace: &str, name: &str, message: impl Into<String>) -> WorkerError {
    WorkerError::Resolve {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        message: message.into(),
    }
}

impl FunctionSource for Arc<KubeFunctions> {
    async fn resolve(
        &self,
        namespace: &str,
        name: &str,
        expected: &Expected,
    ) -> Result<Option<Arc<ResolvedFunction>>, WorkerError> {
        if let Some(resolved) = self.resolve_cached(namespace, name, Some(expected)).await {
            return Ok(Some(resolved));
        }
        self.fetch(namespace, name).await
    }
}

/// What the worker needs of a ready `Function` and its code.
pub fn resolved_function(
    function: &Function,
    id: Uuid,
    code: Code,
) -> Result<ResolvedFunction, String> {
    let spec = &function.spec;
    let runtime = runtime::lookup(&spec.runtime)
        .ok_or_else(|| format!("unknown runtime {:?}", spec.runtime))?;
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
        env_from: spec.env_from.iter().filter_map(EnvSource::of_function).collect(),
        env_from_error: None,
        scaling: Scaling {
            min_warm: non_negative(spec.scaling.min_warm),
            max_instances: non_negative(spec.scaling.max_instances).max(1),
            idle_timeout: Duration::from_secs(
                u64::try_from(spec.scaling.idle_timeout_seconds).unwrap_or(0),
            ),
        },
        max_concurrency: non_negative(spec.max_concurrency).max(1),
    })
}
