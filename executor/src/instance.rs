//! One instance: a long-lived interpreter running the bootstrap, serving one invocation at a
//! time over a private control socket.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

use crate::driver::{Driver, FunctionSpec, StartOutcome};
use crate::error::{Error, InvocationError, error_types, platform_error};
use crate::logs::{LogCapture, Segment};
use crate::sandbox::Cgroup;
use kubefaas_core::runtime::Language;

/// How long the driver waits for the logs of a finished invocation to be read, and for a
/// killed instance to be gone.
const SETTLE: Duration = Duration::from_secs(2);

/// A random-enough identifier (instance ids, log markers): hashed pid, clock and counter.
pub(crate) fn unique_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = Sha256::new();
    hasher.update(std::process::id().to_le_bytes());
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    hasher.update(nanos.to_le_bytes());
    hasher.update(COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    hex::encode(&hasher.finalize()[..8])
}

/// One invocation request.
#[derive(Clone, Debug)]
pub struct Request {
    /// Invocation id (the context's `aws_request_id` / `invocation_id`).
    pub id: String,
    /// The event handed to the handler.
    pub payload: Value,
    /// Time the handler may run; past it the instance is killed.
    pub timeout: Duration,
}

impl Request {
    /// A request with a fresh id.
    pub fn new(payload: Value, timeout: Duration) -> Self {
        Self { id: unique_id(), payload, timeout }
    }
}

/// Measurements of one invocation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Metrics {
    /// Wall-clock time from sending the request to the reply (or the kill).
    pub duration: Duration,
    /// CPU time the instance used during the invocation.
    pub cpu_time: Option<Duration>,
    /// Peak memory of the instance during the invocation (on cgroup v2: during its life).
    pub memory_peak_bytes: Option<u64>,
    /// Whether the invocation was the instance's first (it paid for the start).
    pub cold_start: bool,
    /// Time it took to start the instance, on a cold start.
    pub init_duration: Option<Duration>,
}

/// The result of one invocation.
#[derive(Clone, Debug)]
pub struct Invocation {
    /// The handler's JSON result, or the structured error.
    pub outcome: Result<Value, InvocationError>,
    /// What the function wrote to stdout and stderr during the invocation (on a cold start,
    /// preceded by what it wrote while loading).
    pub logs: String,
    /// Whether the logs were cut at the limit.
    pub logs_truncated: bool,
    /// Measurements.
    pub metrics: Metrics,
}

/// Why an instance could not be started, when it is the function's fault (its code does not
/// build or load) or the instance died while loading.
#[derive(Clone, Debug)]
pub struct StartFailure {
    /// The structured error.
    pub error: InvocationError,
    /// What the instance wrote while loading.
    pub logs: Segment,
    /// How long the attempt took.
    pub duration: Duration,
}

impl StartFailure {
    /// The failure as the result of the invocation that needed the instance.
    pub fn into_invocation(self) -> Invocation {
        Invocation {
            outcome: Err(self.error),
            logs: self.logs.text,
            logs_truncated: self.logs.truncated,
            metrics: Metrics {
                duration: self.duration,
                cold_start: true,
                init_duration: Some(self.duration),
                ..Metrics::default()
            },
        }
    }
}

#[derive(Serialize)]
struct InitMessage<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    handler: &'a str,
    code_dir: &'a Path,
    marker: &'a str,
    function_name: &'a str,
    function_version: &'a str,
    memory_limit_in_mb: u64,
    instance_id: &'a str,
    invoked_function_arn: &'a str,
    log_group_name: &'a str,
    log_stream_name: &'a str,
}

#[derive(Serialize)]
struct InvokeMessage<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    id: &'a str,
    deadline_ms: u64,
    payload: &'a Value,
}

#[derive(Deserialize)]
struct Reply {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    ok: Option<Value>,
    #[serde(default)]
    error: Option<InvocationError>,
}

enum Received {
    Line(Vec<u8>),
    TooLong,
    Closed,
}

/// A running instance of a function. Dropping it kills the instance and removes its cgroup
/// and directory.
#[derive(Debug)]
pub struct Instance {
    id: String,
    driver: Arc<Driver>,
    spec: Arc<FunctionSpec>,
    dir: PathBuf,
    child: tokio::process::Child,
    pid: Option<u32>,
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    logs: LogCapture,
    cgroup: Option<Cgroup>,
    /// Without a cgroup of its own: the enclosing cgroup's OOM kills when the instance started.
    oom_baseline: Option<u64>,
    invocations: u64,
    alive: bool,
    init_logs: Option<Segment>,
    init_duration: Duration,
    /// Whether the next invocation pays for the start (false for instances started ahead).
    cold: bool,
    last_used: Instant,
}

impl Instance {
    /// Instance id (unique per driver process).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The function this instance runs.
    pub fn spec(&self) -> &Arc<FunctionSpec> {
        &self.spec
    }

    /// Process id of the instance's root process (the interpreter, or `unshare` above it).
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// Whether the instance can take another invocation. A killed or crashed instance cannot;
    /// it must be replaced.
    pub fn is_alive(&self) -> bool {
        self.alive
    }

    /// Invocations this instance has served.
    pub fn invocations(&self) -> u64 {
        self.invocations
    }

    /// When the instance last finished an invocation (or started).
    pub fn last_used(&self) -> Instant {
        self.last_used
    }

    pub(crate) async fn start(
        driver: Arc<Driver>,
        spec: Arc<FunctionSpec>,
    ) -> Result<StartOutcome, Error> {
        let started = Instant::now();
        let id = unique_id();
        let dir = driver.config.work_dir.join(&id);
        let code_dir = dir.join("code");
        let tmp_dir = dir.join("tmp");
        for d in [&code_dir, &tmp_dir] {
            fs::create_dir_all(d)
                .map_err(|source| Error::PrepareFiles { path: d.clone(), source })?;
        }
        let fail = |error: InvocationError| StartFailure {
            error,
            logs: Segment::default(),
            duration: started.elapsed(),
        };
        let guard = DirGuard(Some(dir.clone()));
        if let Err(e) = spec.code.materialize(&code_dir, driver.config.max_code_bytes) {
            return user_fault(e).map(|error| Err(fail(error)));
        }
        let program = driver.interpreters.get(spec.language).await?;
        let command: Vec<String> = match spec.language {
            Language::Python => vec![
                program.display().to_string(),
                "-I".into(),
                "-u".into(),
                "-B".into(),
                bootstrap(&driver, Language::Python)?,
            ],
            Language::Nodejs => {
                vec![program.display().to_string(), bootstrap(&driver, Language::Nodejs)?]
            }
            Language::Go => {
                let built = driver
                    .go
                    .binary(
                        &program,
                        &spec.code,
                        &spec.checksum,
                        &spec.handler,
                        driver.config.max_code_bytes,
                    )
                    .await;
                match built {
                    Ok(Ok(binary)) => vec![binary.display().to_string()],
                    Ok(Err(error)) => return Ok(Err(fail(error))),
                    Err(e) => return user_fault(e).map(|error| Err(fail(error))),
                }
            }
        };
        let cgroup = driver.sandbox.create_cgroup(&id, spec.limits)?;
        let argv = driver.sandbox.wrap(cgroup.as_ref(), spec.limits, command);
        let socket_path = driver.socket_dir.join(format!("{id}.sock"));
        let listener = UnixListener::bind(&socket_path).map_err(Error::Control)?;
        let (log_reader, log_writer) = std::io::pipe().map_err(Error::SpawnInstance)?;
        let log_writer2 = log_writer.try_clone().map_err(Error::SpawnInstance)?;

        let Some((program, args)) = argv.split_first() else {
            return Err(Error::SpawnInstance(std::io::Error::other("empty command")));
        };
        let names = LambdaNames::of(&spec, &id, SystemTime::now());
        let runtime_dir = match spec.language {
            Language::Go => None,
            language => driver.bootstraps.get(&language).and_then(|p| p.parent()),
        };
        let dirs = InstanceDirs {
            code: &code_dir,
            tmp: &tmp_dir,
            runtime: runtime_dir.unwrap_or(&code_dir),
            socket: &socket_path,
        };
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args)
            .current_dir(&code_dir)
            .env_clear()
            .envs(platform_env(&spec, &names, &dirs))
            .stdin(Stdio::null())
            .stdout(log_writer)
            .stderr(log_writer2)
            .process_group(0)
            .kill_on_drop(true);
        let child = cmd.spawn().map_err(Error::SpawnInstance)?;
        // The command holds the pipe's write ends; once it is gone only the instance has them,
        // so the log reader sees end-of-file when the instance is gone.
        drop(cmd);
        let marker = format!("\u{1e}[kubefaas-log-end:{}]\u{1e}", unique_id());
        let logs = LogCapture::start(
            log_reader,
            marker.clone().into_bytes(),
            driver.config.log_limit_bytes,
        )
        .map_err(Error::SpawnInstance)?;
        let pid = child.id();
        let oom_baseline =
            if cgroup.is_none() { crate::sandbox::enclosing_oom_kills() } else { None };
        let mut pending = Pending { child, logs, cgroup, pid, oom_baseline };

        // One deadline covers the whole start: connecting and loading the handler.
        let deadline = tokio::time::Instant::now() + driver.config.init_timeout;
        let accepted = tokio::select! {
            accepted = listener.accept() => Ok(accepted.map_err(Error::Control)?.0),
            _ = pending.child.wait() => Err(false),
            _ = tokio::time::sleep_until(deadline) => Err(true),
        };
        let _ = fs::remove_file(&socket_path);
        drop(listener);
        let stream = match accepted {
            Ok(stream) => stream,
            Err(true) => {
                return pending
                    .start_timed_out(started, &spec.handler, driver.config.init_timeout)
                    .await;
            }
            Err(false) => {
                return pending.failed_start(started, "the runtime did not connect").await;
            }
        };
        let (read_half, mut writer) = stream.into_split();
        let mut reader = BufReader::new(read_half);
        let init = InitMessage {
            kind: "init",
            handler: &spec.handler,
            code_dir: &code_dir,
            marker: &marker,
            function_name: &spec.name,
            function_version: &spec.version,
            memory_limit_in_mb: spec.limits.memory_bytes / (1024 * 1024),
            instance_id: &id,
            invoked_function_arn: &names.arn,
            log_group_name: &names.log_group,
            log_stream_name: &names.log_stream,
        };
        send(&mut writer, &init).await?;
        let received = tokio::select! {
            r = read_line(&mut reader, 1024 * 1024) => Some(r.map_err(Error::Control)?),
            _ = tokio::time::sleep_until(deadline) => None,
        };
        let Some(received) = received else {
            return pending
                .start_timed_out(started, &spec.handler, driver.config.init_timeout)
                .await;
        };
        let reply = match received {
            Received::Line(line) => serde_json::from_slice::<Reply>(&line).ok(),
            _ => None,
        };
        match reply {
            Some(r) if r.kind == "ready" => {}
            Some(r) if r.kind == "init_error" => {
                let mut error = r.error.unwrap_or_else(|| {
                    platform_error(error_types::INIT_FAILED, "the handler failed to load")
                });
                // The runtime's own load failures (`Runtime.*`, as AWS types them) already say
                // what failed; an error the module raised gets the context.
                if !error.type_.starts_with(error_types::RUNTIME_LOAD_PREFIX) {
                    error.message = format!("loading handler {}: {}", spec.handler, error.message);
                }
                let logs = pending.logs.next_segment(SETTLE).await;
                pending.kill().await;
                return Ok(Err(StartFailure { error, logs, duration: started.elapsed() }));
            }
            _ => {
                return pending.failed_start(started, "the runtime exited while loading").await;
            }
        }
        let init_logs = pending.logs.next_segment(SETTLE).await;
        let init_duration = started.elapsed();
        tracing::debug!(instance = %id, function = %spec.name, ?init_duration, "instance ready");
        guard.defuse();
        let Pending { child, logs, cgroup, pid, oom_baseline } = pending;
        Ok(Ok(Instance {
            id,
            driver,
            spec,
            dir,
            child,
            pid,
            reader,
            writer,
            logs,
            cgroup,
            oom_baseline,
            invocations: 0,
            alive: true,
            init_logs: Some(init_logs),
            init_duration,
            cold: true,
            last_used: Instant::now(),
        }))
    }

    /// Runs one invocation. Never fails: whatever goes wrong is the invocation's structured
    /// error, and an instance that timed out, crashed or broke the protocol is killed
    /// ([`is_alive`](Self::is_alive) turns false).
    pub async fn invoke(&mut self, request: &Request) -> Invocation {
        let cold_start = std::mem::replace(&mut self.cold, false);
        self.invocations += 1;
        let init_logs = self.init_logs.take();
        let mut metrics = Metrics {
            cold_start,
            init_duration: cold_start.then_some(self.init_duration),
            ..Metrics::default()
        };
        if !self.alive {
            return Invocation {
                outcome: Err(platform_error(
                    error_types::RUNTIME_EXITED,
                    "the instance is not running",
                )),
                logs: String::new(),
                logs_truncated: false,
                metrics,
            };
        }
        let cpu_before = self.cpu_time();
        if let Some(cgroup) = &self.cgroup {
            cgroup.reset_peak();
        }
        let started = Instant::now();
        let deadline = SystemTime::now() + request.timeout;
        let deadline_ms =
            deadline.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
        let message = InvokeMessage {
            kind: "invoke",
            id: &request.id,
            deadline_ms,
            payload: &request.payload,
        };
        let cap = self.driver.config.max_result_bytes + 64 * 1024;
        let received = match send(&mut self.writer, &message).await {
            Ok(()) => tokio::select! {
                r = read_line(&mut self.reader, cap) => Some(r.unwrap_or(Received::Closed)),
                _ = tokio::time::sleep(request.timeout) => None,
            },
            Err(_) => Some(Received::Closed),
        };
        metrics.duration = started.elapsed();
        let outcome = match received {
            None => {
                self.kill().await;
                Err(platform_error(
                    error_types::TIMED_OUT,
                    format!(
                        "the function did not finish within {:.3}s and was stopped",
                        request.timeout.as_secs_f64()
                    ),
                ))
            }
            Some(Received::Line(line)) => match serde_json::from_slice::<Reply>(&line) {
                Ok(reply) if reply.kind == "result" && reply.id.as_deref() == Some(&request.id) => {
                    match reply.error {
                        Some(error) => Err(error),
                        None => Ok(reply.ok.unwrap_or(Value::Null)),
                    }
                }
                _ => {
                    self.kill().await;
                    Err(platform_error(
                        error_types::PROTOCOL,
                        "the runtime sent an unexpected reply",
                    ))
                }
            },
            Some(Received::TooLong) => {
                self.kill().await;
                Err(platform_error(
                    error_types::RESULT_TOO_LARGE,
                    format!("the result is over {} bytes", self.driver.config.max_result_bytes),
                ))
            }
            Some(Received::Closed) => Err(self.died().await),
        };
        let segment = self.logs.next_segment(SETTLE).await;
        if let Some(cpu_before) = cpu_before {
            metrics.cpu_time = self.cpu_time().map(|after| after.saturating_sub(cpu_before));
        }
        metrics.memory_peak_bytes = match &self.cgroup {
            Some(cgroup) => cgroup.peak_memory(),
            None => self.pid.and_then(crate::process::proc_peak_memory),
        };
        self.last_used = Instant::now();
        let (mut logs, mut truncated) = (segment.text, segment.truncated);
        if let Some(init) = init_logs.filter(|s| !s.text.is_empty()) {
            logs = init.text + &logs;
            truncated |= init.truncated;
        }
        Invocation { outcome, logs, logs_truncated: truncated, metrics }
    }

    /// Marks an instance started ahead of demand (`minWarm`): its first invocation is warm.
    pub(crate) fn started_ahead(&mut self) {
        self.cold = false;
    }

    fn cpu_time(&self) -> Option<Duration> {
        match &self.cgroup {
            Some(cgroup) => cgroup.cpu_time(),
            None => self.pid.and_then(crate::process::proc_cpu_time),
        }
    }

    /// The instance's control connection closed: find out why and make sure it is gone.
    async fn died(&mut self) -> InvocationError {
        let status =
            tokio::time::timeout(SETTLE, self.child.wait()).await.ok().and_then(Result::ok);
        self.kill().await;
        death_error(status, oom_kills(status, self.cgroup.as_ref(), self.oom_baseline))
    }

    /// Kills the instance and everything it started.
    pub async fn kill(&mut self) {
        self.alive = false;
        kill_tree(&mut self.child, self.pid, self.cgroup.as_ref()).await;
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Some(cgroup) = &self.cgroup {
            cgroup.kill_all();
        }
        kill_group(&mut self.child, self.pid, self.cgroup.is_some());
        let _ = self.child.start_kill();
        let _ = fs::remove_dir_all(&self.dir);
        // Dropping the cgroup waits (bounded) for the killed processes to leave it, which takes
        // milliseconds; doing it here rather than on a thread means no cgroup outlives its
        // instance, not even when the process exits right after.
        self.cgroup.take();
    }
}

/// The parts of an instance that exist before it has connected.
struct Pending {
    child: tokio::process::Child,
    logs: LogCapture,
    cgroup: Option<Cgroup>,
    pid: Option<u32>,
    oom_baseline: Option<u64>,
}

impl Pending {
    async fn kill(&mut self) {
        kill_tree(&mut self.child, self.pid, self.cgroup.as_ref()).await;
    }

    /// The start ran past the init timeout: the instance is killed and the start is `TimedOut`.
    async fn start_timed_out(
        mut self,
        started: Instant,
        handler: &str,
        limit: Duration,
    ) -> Result<StartOutcome, Error> {
        // Killed first: the log reader flushes what it holds back when the pipe closes.
        self.kill().await;
        let logs = self.logs.next_segment(SETTLE).await;
        let error = platform_error(
            error_types::TIMED_OUT,
            format!("loading handler {handler} took longer than {limit:?}"),
        );
        Ok(Err(StartFailure { error, logs, duration: started.elapsed() }))
    }

    async fn failed_start(mut self, started: Instant, what: &str) -> Result<StartOutcome, Error> {
        let status = tokio::time::timeout(Duration::from_millis(200), self.child.wait())
            .await
            .ok()
            .and_then(Result::ok);
        self.kill().await;
        let logs = self.logs.next_segment(SETTLE).await;
        if status.and_then(|s| s.code()) == Some(SANDBOX_FAILED) {
            return Err(Error::SpawnInstance(std::io::Error::other(format!(
                "the sandbox could not be set up: {}",
                logs.text.trim()
            ))));
        }
        let mut error =
            death_error(status, oom_kills(status, self.cgroup.as_ref(), self.oom_baseline));
        if error.type_ == error_types::RUNTIME_EXITED {
            error.message = format!("{what}: {}", error.message);
        }
        Ok(Err(StartFailure { error, logs, duration: started.elapsed() }))
    }
}

/// The structured error of a start that failed because of the function's code or handler;
/// any other error stays the driver's.
fn user_fault(error: Error) -> Result<InvocationError, Error> {
    match error {
        Error::InvalidCode(message) => Ok(platform_error(error_types::INVALID_CODE, message)),
        e @ Error::InvalidHandler { .. } => {
            Ok(platform_error(error_types::INIT_FAILED, e.to_string()))
        }
        other => Err(other),
    }
}

/// Exit code of the sandbox wrapper when it could not join the cgroup or set the rlimit.
const SANDBOX_FAILED: i32 = 125;

async fn kill_tree(child: &mut tokio::process::Child, pid: Option<u32>, cgroup: Option<&Cgroup>) {
    if let Some(cgroup) = cgroup {
        cgroup.kill_all();
    }
    kill_group(child, pid, cgroup.is_some());
    let _ = child.start_kill();
    let _ = tokio::time::timeout(SETTLE, child.wait()).await;
}

/// SIGKILLs the instance's process group (the instance leads it), unless that could hit
/// someone else's: once the leader is reaped and the group empty, its id may be handed out
/// again (and the executor may run as root). With a cgroup, which has just killed every member,
/// a reaped leader means nothing is left to reach, so the signal is skipped. Without one the
/// group is still signalled, the only way to reach members left behind; the id is not reused
/// while one lives, so only an already empty group leaves a (narrow) window.
fn kill_group(child: &mut tokio::process::Child, pid: Option<u32>, has_cgroup: bool) {
    let reaped = matches!(child.try_wait(), Ok(Some(_)));
    if let Some(pid) = pid
        && !(reaped && has_cgroup)
    {
        crate::process::kill_group(pid as i32);
    }
}

/// OOM kills that ended the instance: its own cgroup's, or, without one, those of the enclosing
/// cgroup since `baseline` when the instance died of SIGKILL (the OOM killer's signal).
fn oom_kills(status: Option<ExitStatus>, cgroup: Option<&Cgroup>, baseline: Option<u64>) -> u64 {
    use std::os::unix::process::ExitStatusExt;
    match (cgroup, baseline) {
        (Some(cgroup), _) => cgroup.oom_kills(),
        (None, Some(baseline)) if status.and_then(|s| s.signal()) == Some(9) => {
            crate::sandbox::enclosing_oom_kills().unwrap_or(baseline).saturating_sub(baseline)
        }
        (None, _) => 0,
    }
}

fn death_error(status: Option<ExitStatus>, oom_kills: u64) -> InvocationError {
    use std::os::unix::process::ExitStatusExt;
    if oom_kills > 0 {
        return platform_error(
            error_types::OUT_OF_MEMORY,
            "the function went over its memory limit and was killed",
        );
    }
    let how = match status {
        Some(s) => match (s.code(), s.signal()) {
            (Some(code), _) => format!("exit code {code}"),
            (None, Some(signal)) => format!("signal {signal}"),
            _ => s.to_string(),
        },
        None => "an unknown status".to_owned(),
    };
    platform_error(error_types::RUNTIME_EXITED, format!("the runtime exited with {how}"))
}

fn bootstrap(driver: &Driver, language: Language) -> Result<String, Error> {
    driver.bootstraps.get(&language).map(|p| p.display().to_string()).ok_or_else(|| {
        Error::MissingInterpreter {
            program: "bootstrap".into(),
            language: language.as_str(),
            reason: "no bootstrap for the language".into(),
        }
    })
}

/// The region an instance reports (`AWS_REGION`, its ARN) when the function's `env` names
/// none.
pub const DEFAULT_REGION: &str = "us-east-1";

/// The account id in every ARN an instance sees: twelve digits, as AWS's, standing for no
/// account at all.
pub const ACCOUNT_ID: &str = "000000000000";

/// What AWS Lambda calls an instance's function and logs, as its context and environment
/// report them.
#[derive(Clone, Debug, PartialEq, Eq)]
struct LambdaNames {
    region: String,
    /// `arn:aws:lambda:<region>:<account>:function:<name>`.
    arn: String,
    /// `/aws/lambda/<name>`.
    log_group: String,
    /// `<yyyy>/<mm>/<dd>/[<version>]<instance id>`, dated when the instance starts (UTC).
    log_stream: String,
}

impl LambdaNames {
    fn of(spec: &FunctionSpec, instance_id: &str, now: SystemTime) -> Self {
        // The function may pick its region through `env`; then ARN and both variables agree.
        let region = ["AWS_REGION", "AWS_DEFAULT_REGION"]
            .iter()
            .find_map(|k| spec.env.get(*k).filter(|v| !v.is_empty()))
            .cloned()
            .unwrap_or_else(|| DEFAULT_REGION.to_owned());
        let days = now.duration_since(UNIX_EPOCH).map(|d| d.as_secs() / 86_400).unwrap_or(0);
        let (year, month, day) = civil_date(days);
        Self {
            arn: format!("arn:aws:lambda:{region}:{ACCOUNT_ID}:function:{}", spec.name),
            log_group: format!("/aws/lambda/{}", spec.name),
            log_stream: format!("{year:04}/{month:02}/{day:02}/[{}]{instance_id}", spec.version),
            region,
        }
    }
}

/// The proleptic Gregorian (year, month, day) of `days` since 1970-01-01.
fn civil_date(days: u64) -> (u64, u64, u64) {
    // Count from 0000-03-01 so that the leap day ends each 400-year era and each year.
    let shifted = days + 719_468;
    let era = shifted / 146_097;
    let day_of_era = shifted % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 { month_from_march + 3 } else { month_from_march - 9 };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// The directories an instance's environment names.
struct InstanceDirs<'a> {
    code: &'a Path,
    tmp: &'a Path,
    /// Where the bootstrap lives (`LAMBDA_RUNTIME_DIR`).
    runtime: &'a Path,
    socket: &'a Path,
}

/// The whole environment of an instance: the function's variables and the platform's. Nothing
/// is inherited from the executor. Two kinds of platform variables: defaults the function's
/// `env` may replace (`PATH`, `LANG`, `TZ`, `AWS_REGION`, `AWS_DEFAULT_REGION`), and reserved
/// ones that win over the function's of the same name (the rest: `LAMBDA_*`, `AWS_LAMBDA_*`,
/// `_HANDLER`, `HOME`, `TMPDIR`, `KUBEFAAS_*`). `AWS_EXECUTION_ENV` is the bootstrap's, which
/// knows its interpreter's version.
fn platform_env(
    spec: &FunctionSpec,
    names: &LambdaNames,
    dirs: &InstanceDirs<'_>,
) -> Vec<(String, String)> {
    let memory_mb = (spec.limits.memory_bytes / (1024 * 1024)).to_string();
    let mut env: Vec<(String, String)> = vec![
        ("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()),
        ("LANG".into(), "C.UTF-8".into()),
        ("TZ".into(), ":UTC".into()),
        ("AWS_REGION".into(), names.region.clone()),
        ("AWS_DEFAULT_REGION".into(), names.region.clone()),
    ];
    if spec.language == Language::Go {
        let procs = spec.limits.cpu_millis.div_ceil(1000).max(1);
        env.push(("GOMAXPROCS".into(), procs.to_string()));
    }
    env.extend(spec.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    let dir = |p: &Path| p.display().to_string();
    env.extend([
        ("HOME".to_owned(), dir(dirs.tmp)),
        ("TMPDIR".to_owned(), dir(dirs.tmp)),
        ("LAMBDA_TASK_ROOT".to_owned(), dir(dirs.code)),
        ("LAMBDA_RUNTIME_DIR".to_owned(), dir(dirs.runtime)),
        ("_HANDLER".to_owned(), spec.handler.clone()),
        ("KUBEFAAS_FUNCTION_NAME".to_owned(), spec.name.clone()),
        ("KUBEFAAS_FUNCTION_VERSION".to_owned(), spec.version.clone()),
        ("KUBEFAAS_MEMORY_LIMIT_MB".to_owned(), memory_mb.clone()),
        ("AWS_LAMBDA_FUNCTION_NAME".to_owned(), spec.name.clone()),
        ("AWS_LAMBDA_FUNCTION_VERSION".to_owned(), spec.version.clone()),
        ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE".to_owned(), memory_mb),
        ("AWS_LAMBDA_LOG_GROUP_NAME".to_owned(), names.log_group.clone()),
        ("AWS_LAMBDA_LOG_STREAM_NAME".to_owned(), names.log_stream.clone()),
        ("KUBEFAAS_CONTROL_SOCKET".to_owned(), dir(dirs.socket)),
    ]);
    env
}

async fn send<T: Serialize>(writer: &mut OwnedWriteHalf, message: &T) -> Result<(), Error> {
    let mut line =
        serde_json::to_vec(message).map_err(|e| Error::Control(std::io::Error::other(e)))?;
    line.push(b'\n');
    writer.write_all(&line).await.map_err(Error::Control)
}

/// Reads one line of at most `cap` bytes.
async fn read_line(reader: &mut BufReader<OwnedReadHalf>, cap: usize) -> std::io::Result<Received> {
    let mut line = Vec::new();
    let n = (&mut *reader).take(cap as u64).read_until(b'\n', &mut line).await?;
    if line.last() == Some(&b'\n') {
        return Ok(Received::Line(line));
    }
    if n as u64 >= cap as u64 {
        return Ok(Received::TooLong);
    }
    Ok(Received::Closed)
}

/// Removes an instance directory unless the instance started.
struct DirGuard(Option<PathBuf>);

impl DirGuard {
    fn defuse(mut self) {
        self.0 = None;
    }
}

impl Drop for DirGuard {
    fn drop(&mut self) {
        if let Some(dir) = &self.0 {
            let _ = fs::remove_dir_all(dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_date_matches_known_days() {
        assert_eq!(civil_date(0), (1970, 1, 1));
        assert_eq!(civil_date(59), (1970, 3, 1));
        assert_eq!(civil_date(11_016), (2000, 2, 29));
        assert_eq!(civil_date(19_782), (2024, 2, 29));
        assert_eq!(civil_date(20_088), (2024, 12, 31));
        assert_eq!(civil_date(20_089), (2025, 1, 1));
    }

    fn spec_with(env: &[(&str, &str)]) -> FunctionSpec {
        let code = crate::Code::File { name: "main.py".into(), contents: Vec::new() };
        let mut spec = FunctionSpec::new("orders", Language::Python, "main.handler", code)
            .unwrap_or_else(|e| panic!("{e}"));
        spec.version = "3".into();
        spec.env = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        spec
    }

    #[test]
    fn names_are_aws_shaped_and_follow_the_functions_region() {
        let day = UNIX_EPOCH + Duration::from_secs(20_089 * 86_400 + 3_600);
        let names = LambdaNames::of(&spec_with(&[]), "abc123", day);
        assert_eq!(names.arn, "arn:aws:lambda:us-east-1:000000000000:function:orders");
        assert_eq!(names.log_group, "/aws/lambda/orders");
        assert_eq!(names.log_stream, "2025/01/01/[3]abc123");

        let names = LambdaNames::of(&spec_with(&[("AWS_DEFAULT_REGION", "eu-west-1")]), "i", day);
        assert_eq!(names.region, "eu-west-1");
        assert!(names.arn.starts_with("arn:aws:lambda:eu-west-1:"));
        let both = [("AWS_REGION", "ap-south-1"), ("AWS_DEFAULT_REGION", "eu-west-1")];
        assert_eq!(LambdaNames::of(&spec_with(&both), "i", day).region, "ap-south-1");
    }

    #[test]
    fn reserved_variables_win_over_the_functions_and_defaults_do_not() {
        let spec = spec_with(&[
            ("TZ", "Europe/Prague"),
            ("AWS_LAMBDA_FUNCTION_NAME", "spoofed"),
            ("_HANDLER", "other.handler"),
        ]);
        let names = LambdaNames::of(&spec, "i", SystemTime::now());
        let dirs = InstanceDirs {
            code: Path::new("/c"),
            tmp: Path::new("/t"),
            runtime: Path::new("/r"),
            socket: Path::new("/s"),
        };
        // Later entries win, as they do for the spawned command.
        let env: std::collections::HashMap<_, _> =
            platform_env(&spec, &names, &dirs).into_iter().collect();
        assert_eq!(env["TZ"], "Europe/Prague");
        assert_eq!(env["AWS_LAMBDA_FUNCTION_NAME"], "orders");
        assert_eq!(env["_HANDLER"], "main.handler");
        assert_eq!(env["LAMBDA_RUNTIME_DIR"], "/r");
        assert_eq!(env["AWS_REGION"], DEFAULT_REGION);
        assert_eq!(env["AWS_LAMBDA_LOG_GROUP_NAME"], "/aws/lambda/orders");
    }
}
