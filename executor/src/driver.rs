//! The driver: configuration, host detection, and starting instances of a function.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::code::{Code, DEFAULT_MAX_UNPACKED_BYTES};
use crate::error::Error;
use crate::instance::Instance;
use crate::runtime::{GoBuilder, Interpreters, write_bootstraps};
use crate::sandbox::{Limits, Sandbox, SandboxMode, SandboxReport};
use kubefaas_core::runtime::Language;

/// How the driver runs instances.
#[derive(Clone, Debug)]
pub struct DriverConfig {
    /// Where instance directories (code, private tmp, control socket) are created.
    pub work_dir: PathBuf,
    /// Where bootstraps and Go builds are cached across instances.
    pub cache_dir: PathBuf,
    /// Limits and isolation to apply.
    pub sandbox: SandboxMode,
    /// Most log bytes kept per invocation; the rest is dropped and marked.
    pub log_limit_bytes: usize,
    /// Most bytes a result may have.
    pub max_result_bytes: usize,
    /// Most bytes the function's code may unpack to.
    pub max_code_bytes: u64,
    /// How long an instance may take to load its handler.
    pub init_timeout: Duration,
    /// How long a Go build may take.
    pub build_timeout: Duration,
}

impl DriverConfig {
    /// Defaults below `root` (`root/instances`, `root/cache`).
    pub fn under(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        Self {
            work_dir: root.join("instances"),
            cache_dir: root.join("cache"),
            sandbox: SandboxMode::Auto,
            log_limit_bytes: 64 * 1024,
            max_result_bytes: 6 * 1024 * 1024,
            max_code_bytes: DEFAULT_MAX_UNPACKED_BYTES,
            init_timeout: Duration::from_secs(30),
            build_timeout: Duration::from_secs(300),
        }
    }
}

/// Everything needed to start an instance of a function.
#[derive(Clone, Debug)]
pub struct FunctionSpec {
    /// Function name (the context's `function_name`).
    pub name: String,
    /// Namespace of the function, when it has one: functions of the same name in different
    /// namespaces are different functions to the [`Pool`](crate::Pool).
    pub namespace: Option<String>,
    /// Function version (the context's `function_version`).
    pub version: String,
    /// Language of the runtime.
    pub language: Language,
    /// Handler, in the language's convention.
    pub handler: String,
    /// The code.
    pub code: Code,
    /// sha256 of the code (see [`Code::checksum`]).
    pub checksum: String,
    /// The function's environment variables; the only variables besides the platform's.
    pub env: BTreeMap<String, String>,
    /// Resource limits of each instance.
    pub limits: Limits,
}

impl FunctionSpec {
    /// What the pool knows the function by: `namespace/name`, or the name alone.
    pub fn pool_key(&self) -> String {
        match &self.namespace {
            Some(namespace) => format!("{namespace}/{}", self.name),
            None => self.name.clone(),
        }
    }

    /// A spec with the checksum computed from `code`, no environment and default limits.
    pub fn new(
        name: impl Into<String>,
        language: Language,
        handler: impl Into<String>,
        code: Code,
    ) -> Result<Self, Error> {
        let checksum = code.checksum()?;
        Ok(Self {
            name: name.into(),
            namespace: None,
            version: "1.0.0".into(),
            language,
            handler: handler.into(),
            code,
            checksum,
            env: BTreeMap::new(),
            limits: Limits::default(),
        })
    }
}

/// Starts instances. One driver serves any number of functions and instances.
#[derive(Debug)]
pub struct Driver {
    pub(crate) config: DriverConfig,
    pub(crate) sandbox: Sandbox,
    pub(crate) interpreters: Interpreters,
    pub(crate) bootstraps: HashMap<Language, PathBuf>,
    pub(crate) go: GoBuilder,
    /// Where instances' control sockets live: a short private directory, because a unix socket
    /// path must stay under about 100 bytes and work directories can be deep.
    pub(crate) socket_dir: PathBuf,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.socket_dir);
    }
}

impl Driver {
    /// Prepares the work and cache directories, writes the bootstraps and detects the sandbox.
    pub fn new(config: DriverConfig) -> Result<Arc<Self>, Error> {
        for dir in [&config.work_dir, &config.cache_dir] {
            std::fs::create_dir_all(dir)
                .map_err(|source| Error::PrepareFiles { path: dir.clone(), source })?;
        }
        let bootstraps = write_bootstraps(&config.cache_dir.join("bootstrap"))?;
        let go = GoBuilder::new(config.cache_dir.join("go"), config.build_timeout);
        let socket_dir =
            std::env::temp_dir().join(format!("kubefaas-{}", crate::instance::unique_id()));
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&socket_dir)
                .map_err(|source| Error::PrepareFiles { path: socket_dir.clone(), source })?;
        }
        Ok(Arc::new(Self {
            socket_dir,
            sandbox: Sandbox::detect(config.sandbox),
            interpreters: Interpreters::default(),
            bootstraps,
            go,
            config,
        }))
    }

    /// What the sandbox enforces on this host.
    pub fn sandbox(&self) -> &SandboxReport {
        self.sandbox.report()
    }

    /// The driver's configuration.
    pub fn config(&self) -> &DriverConfig {
        &self.config
    }

    /// Starts a cold instance of `spec` and waits until its handler is loaded. A handler that
    /// fails to load or a Go build that fails is reported as the `Err` of the returned
    /// [`StartOutcome`], not as an [`Error`]: that is the function's fault.
    pub async fn start(self: &Arc<Self>, spec: Arc<FunctionSpec>) -> Result<StartOutcome, Error> {
        Instance::start(Arc::clone(self), spec).await
    }
}

/// An instance that is ready, or the function's reason why none can be.
pub type StartOutcome = Result<Instance, crate::instance::StartFailure>;
