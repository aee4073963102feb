//! Limits and isolation of instances on one machine: cgroups (v1 or v2, whichever the host
//! has writable), rlimits where no cgroup is writable, and PID/mount/IPC/UTS namespaces where
//! the host allows them.
//!
//! The instance is put into its cgroup *before* the interpreter starts, so every byte it
//! allocates is charged and no child can escape: the driver starts `/bin/sh`, which writes its
//! own pid into the cgroups, applies any rlimit, and `exec`s `unshare` (if namespaces are in
//! force) and then the interpreter. That small re-exec step keeps the crate free of `unsafe`
//! (no `pre_exec`).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::Error;

/// Resource limits of one instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Limits {
    /// Memory limit in bytes (no swap on top).
    pub memory_bytes: u64,
    /// CPU quota in thousandths of a core (`100` is `100m`, a tenth of a core).
    pub cpu_millis: u64,
    /// Most processes and threads the instance may have.
    pub pids: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self { memory_bytes: 128 * 1024 * 1024, cpu_millis: 100, pids: 256 }
    }
}

/// How one kind of limit is enforced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mechanism {
    /// A cgroup v1 controller.
    CgroupV1,
    /// The cgroup v2 unified hierarchy.
    CgroupV2,
    /// A process rlimit (memory: `RLIMIT_AS`, which counts address space, not resident memory).
    Rlimit,
    /// Not enforced on this host.
    None,
}

/// What the sandbox enforces on this host, found out once when the driver starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SandboxReport {
    /// How the memory limit is enforced.
    pub memory: Mechanism,
    /// How the CPU quota is enforced.
    pub cpu: Mechanism,
    /// How the process count is limited.
    pub pids: Mechanism,
    /// Whether instances get their own PID, mount, IPC and UTS namespaces.
    pub namespaces: bool,
}

/// Which sandbox the driver should use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SandboxMode {
    /// Use whatever the host allows: cgroups, else rlimits; namespaces if possible.
    #[default]
    Auto,
    /// Never use cgroups, only the rlimit fallback (and namespaces if possible): what a host
    /// without writable cgroups gets, on purpose.
    Rlimits,
    /// No limits or namespaces: the surrounding container enforces them (inside runtime pods).
    Off,
}

/// The cgroup hierarchy the driver creates instance cgroups in.
#[derive(Clone, Debug)]
enum Hierarchy {
    /// One parent directory per controller (`memory`, `cpu`, `cpuacct`, `pids`); controllers
    /// mounted together share a directory.
    V1 { memory: PathBuf, cpu: Option<PathBuf>, cpuacct: Option<PathBuf>, pids: Option<PathBuf> },
    /// One parent directory with the memory, cpu and pids controllers enabled for children.
    V2 { parent: PathBuf },
}

/// The host's sandbox facilities, detected once.
#[derive(Clone, Debug)]
pub(crate) struct Sandbox {
    hierarchy: Option<Hierarchy>,
    unshare: Option<PathBuf>,
    report: SandboxReport,
}

impl Sandbox {
    /// Detects what this host allows. Never fails: what is not available is reported as such.
    pub(crate) fn detect(mode: SandboxMode) -> Self {
        if mode == SandboxMode::Off {
            return Self {
                hierarchy: None,
                unshare: None,
                report: SandboxReport {
                    memory: Mechanism::None,
                    cpu: Mechanism::None,
                    pids: Mechanism::None,
                    namespaces: false,
                },
            };
        }
        let hierarchy = if mode == SandboxMode::Rlimits { None } else { detect_hierarchy() };
        let unshare = detect_unshare();
        let report = match &hierarchy {
            Some(Hierarchy::V1 { cpu, pids, .. }) => SandboxReport {
                memory: Mechanism::CgroupV1,
                cpu: if cpu.is_some() { Mechanism::CgroupV1 } else { Mechanism::None },
                pids: if pids.is_some() { Mechanism::CgroupV1 } else { Mechanism::None },
                namespaces: unshare.is_some(),
            },
            Some(Hierarchy::V2 { .. }) => SandboxReport {
                memory: Mechanism::CgroupV2,
                cpu: Mechanism::CgroupV2,
                pids: Mechanism::CgroupV2,
                namespaces: unshare.is_some(),
            },
            None => SandboxReport {
                memory: Mechanism::Rlimit,
                cpu: Mechanism::None,
                pids: Mechanism::None,
                namespaces: unshare.is_some(),
            },
        };
        tracing::info!(?report, "instance sandbox");
        Self { hierarchy, unshare, report }
    }

    pub(crate) fn report(&self) -> &SandboxReport {
        &self.report
    }

    pub(crate) fn enabled(&self) -> bool {
        self.report.memory != Mechanism::None
    }

    /// Creates the cgroup of a new instance, with `limits` applied.
    pub(crate) fn create_cgroup(&self, id: &str, limits: Limits) -> Result<Option<Cgroup>, Error> {
        let Some(hierarchy) = &self.hierarchy else { return Ok(None) };
        let cgroup = match hierarchy {
            Hierarchy::V1 { memory, cpu, cpuacct, pids } => {
                let mut dirs = Vec::new();
                let mut add = |parent: &Path| -> PathBuf {
                    let dir = parent.join(id);
                    if !dirs.contains(&dir) {
                        dirs.push(dir.clone());
                    }
                    dir
                };
                let memory = add(memory);
                let cpu = cpu.as_deref().map(&mut add);
                let cpuacct = cpuacct.as_deref().map(&mut add);
                let pids = pids.as_deref().map(&mut add);
                let cgroup = Cgroup { dirs, kind: CgroupKind::V1 { memory, cpu, cpuacct, pids } };
                for dir in &cgroup.dirs {
                    fs::create_dir(dir).map_err(|source| cg(dir, source))?;
                }
                cgroup
            }
            Hierarchy::V2 { parent } => {
                let dir = parent.join(id);
                fs::create_dir(&dir).map_err(|source| cg(&dir, source))?;
                Cgroup { dirs: vec![dir.clone()], kind: CgroupKind::V2 { dir } }
            }
        };
        // From here on, dropping `cgroup` on an error removes what was created.
        cgroup.apply(limits)?;
        Ok(Some(cgroup))
    }

    /// The program and arguments that start `command` inside the sandbox: a shell that joins
    /// the cgroup (or applies the rlimit) and `exec`s into `unshare` and the command.
    pub(crate) fn wrap(
        &self,
        cgroup: Option<&Cgroup>,
        limits: Limits,
        command: Vec<String>,
    ) -> Vec<String> {
        if !self.enabled() {
            return command;
        }
        let procs: Vec<String> = cgroup
            .map(|c| c.dirs.iter().map(|d| d.join("cgroup.procs").display().to_string()).collect())
            .unwrap_or_default();
        let rlimit_kib = if cgroup.is_none() && self.report.memory == Mechanism::Rlimit {
            (limits.memory_bytes / 1024).to_string()
        } else {
            "-".to_owned()
        };
        let mut argv = vec![
            "/bin/sh".to_owned(),
            "-c".to_owned(),
            WRAPPER_SCRIPT.to_owned(),
            "kubefaas-sandbox".to_owned(),
            procs.join(":"),
            rlimit_kib,
        ];
        if let Some(unshare) = &self.unshare {
            argv.push(unshare.display().to_string());
            argv.extend(UNSHARE_FLAGS.iter().map(|s| (*s).to_owned()));
            argv.push("--".to_owned());
        }
        argv.extend(command);
        argv
    }
}

/// Joins the cgroups named in `$1` (colon-separated `cgroup.procs` files), applies the address
/// space rlimit in `$2` (KiB, `-` for none), then becomes the rest of the arguments. Exit code
/// 125 tells the driver that the sandbox, not the function, failed.
const WRAPPER_SCRIPT: &str = r#"procs=$1; as=$2; shift 2
IFS=:
for f in $procs; do echo $$ > "$f" || exit 125; done
unset IFS
if [ "$as" != - ]; then ulimit -v "$as" || exit 125; fi
exec "$@""#;

/// Own PID namespace (the instance sees only its processes, `/proc` remounted), mount, IPC and
/// UTS namespaces. `--kill-child` takes the whole namespace down with `unshare`. The network
/// namespace is deliberately shared: functions call other services.
const UNSHARE_FLAGS: &[&str] =
    &["--pid", "--fork", "--kill-child", "--mount-proc", "--mount", "--ipc", "--uts"];

fn cg(path: &Path, source: io::Error) -> Error {
    Error::Cgroup { path: path.to_owned(), source }
}

#[derive(Debug)]
enum CgroupKind {
    V1 {
        memory: PathBuf,
        cpu: Option<PathBuf>,
        cpuacct: Option<PathBuf>,
        pids: Option<PathBuf>,
    },
    V2 {
        dir: PathBuf,
    },
    /// A leftover of a driver that died; only killed and removed.
    Stale,
}

/// The cgroup of one instance. Dropping it kills what is left inside and removes it.
#[derive(Debug)]
pub(crate) struct Cgroup {
    dirs: Vec<PathBuf>,
    kind: CgroupKind,
}

/// cgroup v1 and v2 both use this CFS period.
const CPU_PERIOD_US: u64 = 100_000;

impl Cgroup {
    fn write(path: &Path, value: &str) -> Result<(), Error> {
        fs::write(path, value).map_err(|source| cg(path, source))
    }

    fn apply(&self, limits: Limits) -> Result<(), Error> {
        // The kernel refuses quotas under 1 ms per period.
        let quota = (limits.cpu_millis * CPU_PERIOD_US / 1000).max(1000);
        match &self.kind {
            CgroupKind::V1 { memory, cpu, pids, .. } => {
                let bytes = limits.memory_bytes.to_string();
                Self::write(&memory.join("memory.limit_in_bytes"), &bytes)?;
                let memsw = memory.join("memory.memsw.limit_in_bytes");
                if memsw.exists() {
                    Self::write(&memsw, &bytes)?;
                }
                if let Some(cpu) = cpu {
                    Self::write(&cpu.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
                    Self::write(&cpu.join("cpu.cfs_quota_us"), &quota.to_string())?;
                }
                if let Some(pids) = pids {
                    Self::write(&pids.join("pids.max"), &limits.pids.to_string())?;
                }
            }
            CgroupKind::Stale => {}
            CgroupKind::V2 { dir } => {
                Self::write(&dir.join("memory.max"), &limits.memory_bytes.to_string())?;
                let swap = dir.join("memory.swap.max");
                if swap.exists() {
                    Self::write(&swap, "0")?;
                }
                Self::write(&dir.join("cpu.max"), &format!("{quota} {CPU_PERIOD_US}"))?;
                Self::write(&dir.join("pids.max"), &limits.pids.to_string())?;
            }
        }
        Ok(())
    }

    /// CPU time used by everything in the cgroup so far.
    pub(crate) fn cpu_time(&self) -> Option<Duration> {
        match &self.kind {
            CgroupKind::V1 { cpuacct, .. } => {
                let ns = read_u64(&cpuacct.as_ref()?.join("cpuacct.usage"))?;
                Some(Duration::from_nanos(ns))
            }
            CgroupKind::V2 { dir } => {
                let usec = read_key(&dir.join("cpu.stat"), "usage_usec")?;
                Some(Duration::from_micros(usec))
            }
            CgroupKind::Stale => None,
        }
    }

    /// Starts a new peak-memory measurement, where the kernel allows it (v1 only; on v2 the
    /// peak covers the instance's life).
    pub(crate) fn reset_peak(&self) {
        if let CgroupKind::V1 { memory, .. } = &self.kind {
            let _ = fs::write(memory.join("memory.max_usage_in_bytes"), "0");
        }
    }

    /// Peak memory usage since the last [`reset_peak`](Self::reset_peak).
    pub(crate) fn peak_memory(&self) -> Option<u64> {
        match &self.kind {
            CgroupKind::V1 { memory, .. } => read_u64(&memory.join("memory.max_usage_in_bytes")),
            CgroupKind::V2 { dir } => read_u64(&dir.join("memory.peak")),
            CgroupKind::Stale => None,
        }
    }

    /// How many times the kernel's OOM killer killed a process of this cgroup.
    pub(crate) fn oom_kills(&self) -> u64 {
        match &self.kind {
            CgroupKind::V1 { memory, .. } => {
                read_key(&memory.join("memory.oom_control"), "oom_kill").unwrap_or(0)
            }
            CgroupKind::V2 { dir } => read_key(&dir.join("memory.events"), "oom_kill").unwrap_or(0),
            CgroupKind::Stale => 0,
        }
    }

    /// Processes still in the cgroup.
    fn pids(&self) -> Vec<i32> {
        self.dirs
            .iter()
            .flat_map(|d| {
                fs::read_to_string(d.join("cgroup.procs"))
                    .unwrap_or_default()
                    .lines()
                    .filter_map(|l| l.trim().parse().ok())
                    .collect::<Vec<i32>>()
            })
            .collect()
    }

    /// SIGKILLs everything in the cgroup, including processes that left the instance's process
    /// group.
    pub(crate) fn kill_all(&self) {
        for dir in &self.dirs {
            let kill = dir.join("cgroup.kill");
            if kill.exists() {
                let _ = fs::write(kill, "1");
            }
        }
        for pid in self.pids() {
            crate::process::kill(pid);
        }
    }

    /// Kills what is left and removes the cgroup, waiting up to `wait` for the processes to go.
    pub(crate) fn remove(&self, wait: Duration) {
        let until = Instant::now() + wait;
        loop {
            self.kill_all();
            let mut left = false;
            for dir in &self.dirs {
                match fs::remove_dir(dir) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(_) => left = true,
                }
            }
            if !left {
                return;
            }
            if Instant::now() >= until {
                tracing::warn!(dirs = ?self.dirs, "instance cgroup could not be removed");
                return;
            }
            // Exiting processes leave the cgroup asynchronously; this polls with a bound.
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        self.remove(Duration::from_secs(2));
    }
}

/// OOM kills so far in the memory cgroup this process runs in, as the container runtime mounts
/// it (cgroup v1 `memory.oom_control`, v2 `memory.events`). In a runtime container the instance
/// has no cgroup of its own (the container's is its limit), and the kernel's OOM killer picks
/// the instance, not the watchdog: the container keeps running and is never reported
/// `OOMKilled`, so this counter is how the death is told apart from another SIGKILL.
pub(crate) fn enclosing_oom_kills() -> Option<u64> {
    read_key(Path::new("/sys/fs/cgroup/memory/memory.oom_control"), "oom_kill")
        .or_else(|| read_key(Path::new("/sys/fs/cgroup/memory.events"), "oom_kill"))
}

fn read_u64(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The value of `key` in a flat keyed file (`key value` lines).
fn read_key(path: &Path, key: &str) -> Option<u64> {
    let text = fs::read_to_string(path).ok()?;
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// One line of `/proc/self/mountinfo` that mounts a cgroup file system.
#[derive(Debug, PartialEq, Eq)]
struct CgroupMount {
    /// Path inside the hierarchy that is mounted (usually `/`).
    root: String,
    mount_point: PathBuf,
    /// `cgroup2`, or the v1 controllers of the mount.
    controllers: Option<Vec<String>>,
}

fn parse_mountinfo(text: &str) -> Vec<CgroupMount> {
    let mut mounts = Vec::new();
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else { continue };
        let fields: Vec<&str> = left.split(' ').collect();
        let right: Vec<&str> = right.split(' ').collect();
        let (Some(root), Some(point), Some(fstype)) = (fields.get(3), fields.get(4), right.first())
        else {
            continue;
        };
        let controllers = match *fstype {
            "cgroup2" => None,
            "cgroup" => {
                let opts = right.get(2).copied().unwrap_or("");
                Some(opts.split(',').map(str::to_owned).collect())
            }
            _ => continue,
        };
        mounts.push(CgroupMount {
            root: (*root).to_owned(),
            mount_point: PathBuf::from(point.replace("\\040", " ")),
            controllers,
        });
    }
    mounts
}

/// This process's cgroup per hierarchy: `("", path)` for v2, `(controllers, path)` for v1.
fn parse_proc_cgroup(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ':');
            let _id = parts.next()?;
            Some((parts.next()?.to_owned(), parts.next()?.to_owned()))
        })
        .collect()
}

/// Where instance cgroups go below a mount: below this process's own cgroup, so they nest in
/// whatever limits the executor itself runs under, in a `kubefaas` group shared by the drivers
/// of that cgroup.
fn own_dir(mount: &CgroupMount, own: &str) -> PathBuf {
    let rel = own.strip_prefix(&mount.root).unwrap_or(own).trim_start_matches('/');
    mount.mount_point.join(rel).join("kubefaas")
}

/// The group of this driver process's instances inside the shared `kubefaas` group. Groups of
/// drivers that died (their pid is gone) are removed first, so a crashed executor leaves no
/// cgroups behind for long.
fn driver_dir(shared: &Path) -> PathBuf {
    sweep_dead_drivers(shared);
    shared.join(format!("driver-{}", std::process::id()))
}

fn sweep_dead_drivers(shared: &Path) {
    let Ok(entries) = fs::read_dir(shared) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix("driver-").and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let dir = entry.path();
        if let Ok(instances) = fs::read_dir(&dir) {
            for instance in instances.flatten() {
                if instance.path().is_dir() {
                    let stale = Cgroup { dirs: vec![instance.path()], kind: CgroupKind::Stale };
                    stale.remove(Duration::from_millis(500));
                }
            }
        }
        let _ = fs::remove_dir(&dir);
    }
}

fn detect_hierarchy() -> Option<Hierarchy> {
    let mounts = parse_mountinfo(&fs::read_to_string("/proc/self/mountinfo").ok()?);
    let own = parse_proc_cgroup(&fs::read_to_string("/proc/self/cgroup").ok()?);
    let v1 = detect_v1(&mounts, &own);
    if v1.is_some() {
        return v1;
    }
    detect_v2(&mounts, &own)
}

fn detect_v1(mounts: &[CgroupMount], own: &[(String, String)]) -> Option<Hierarchy> {
    let parent_of = |controller: &str| -> Option<PathBuf> {
        let mount = mounts
            .iter()
            .find(|m| m.controllers.as_ref().is_some_and(|c| c.iter().any(|x| x == controller)))?;
        let path = own
            .iter()
            .find(|(c, _)| c.split(',').any(|x| x == controller))
            .map(|(_, p)| p.as_str())
            .unwrap_or("/");
        let dir = driver_dir(&own_dir(mount, path));
        writable_dir(&dir).then_some(dir)
    };
    let memory = parent_of("memory")?;
    Some(Hierarchy::V1 {
        memory,
        cpu: parent_of("cpu"),
        cpuacct: parent_of("cpuacct"),
        pids: parent_of("pids"),
    })
}

fn detect_v2(mounts: &[CgroupMount], own: &[(String, String)]) -> Option<Hierarchy> {
    let mount = mounts.iter().find(|m| m.controllers.is_none())?;
    let path = own.iter().find(|(c, _)| c.is_empty()).map(|(_, p)| p.as_str()).unwrap_or("/");
    let shared = own_dir(mount, path);
    let available = fs::read_to_string(shared.parent()?.join("cgroup.controllers")).ok()?;
    let needed = ["memory", "cpu", "pids"];
    if !needed.iter().all(|c| available.split_whitespace().any(|a| a == *c)) {
        return None;
    }
    let parent = driver_dir(&shared);
    if !writable_dir(&parent) {
        return None;
    }
    // Children get the controllers only if every level delegates them. (The executor's own
    // cgroup cannot: it has processes, and v2 forbids controllers there; this works whenever
    // the own cgroup already delegates them to its children.)
    for level in [&shared, &parent] {
        fs::write(level.join("cgroup.subtree_control"), "+memory +cpu +pids").ok()?;
    }
    Some(Hierarchy::V2 { parent })
}

/// Creates `dir` if needed and checks a child cgroup can be made in it.
fn writable_dir(dir: &Path) -> bool {
    // Unique per call: detections running at once in one process must not share a probe (the
    // second `create_dir` of one name fails, and a controller would wrongly count as absent).
    static PROBES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    if fs::create_dir_all(dir).is_err() {
        return false;
    }
    let n = PROBES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let probe = dir.join(format!("probe-{}-{n}", std::process::id()));
    let ok = fs::create_dir(&probe).is_ok();
    let _ = fs::remove_dir(&probe);
    ok
}

fn detect_unshare() -> Option<PathBuf> {
    let path =
        ["/usr/bin/unshare", "/bin/unshare"].into_iter().map(PathBuf::from).find(|p| p.exists())?;
    let mut cmd = std::process::Command::new(&path);
    cmd.args(UNSHARE_FLAGS)
        .arg("--")
        .arg("/bin/true")
        .env_clear()
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let ok = cmd.status().is_ok_and(|s| s.success());
    ok.then_some(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
30 25 0:26 / /sys/fs/cgroup/memory rw,relatime shared:9 - cgroup cgroup rw,memory
31 25 0:27 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:10 - cgroup cgroup rw,cpu,cpuacct
32 25 0:28 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
33 25 0:29 / /proc rw - proc proc rw";

    #[test]
    fn mountinfo_lists_v1_controllers_and_the_v2_mount() {
        let mounts = parse_mountinfo(MOUNTINFO);
        assert_eq!(mounts.len(), 3);
        assert_eq!(mounts[1].mount_point, PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"));
        assert_eq!(
            mounts[1].controllers.as_deref(),
            Some(&["rw".to_owned(), "cpu".to_owned(), "cpuacct".to_owned()][..])
        );
        assert_eq!(mounts[2].controllers, None);
    }

    #[test]
    fn instance_cgroups_nest_below_the_own_cgroup() {
        let mounts = parse_mountinfo(MOUNTINFO);
        let own = parse_proc_cgroup("4:memory:/process_api/abc\n0::/\n");
        assert_eq!(own[0], ("memory".to_owned(), "/process_api/abc".to_owned()));
        assert_eq!(
            own_dir(&mounts[0], &own[0].1),
            PathBuf::from("/sys/fs/cgroup/memory/process_api/abc/kubefaas")
        );
    }

    /// A directory tree that looks like a cgroup v2 mount to the file-level logic (it cannot
    /// enforce anything: this checks which files get which values).
    fn fake_v2_mount(name: &str) -> PathBuf {
        let root =
            std::env::temp_dir().join(format!("kubefaas-fake-v2-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&root).unwrap();
        fs::write(root.join("cgroup.controllers"), "cpuset cpu io memory hugetlb pids rdma\n")
            .unwrap();
        root
    }

    #[test]
    fn v2_instance_cgroup_gets_memory_swap_cpu_and_pids_limits() {
        let root = fake_v2_mount("limits");
        let mounts =
            vec![CgroupMount { root: "/".into(), mount_point: root.clone(), controllers: None }];
        let own = parse_proc_cgroup("0::/\n");
        let hierarchy = detect_v2(&mounts, &own).expect("v2 detected");
        let shared = root.join("kubefaas");
        let delegated = fs::read_to_string(shared.join("cgroup.subtree_control")).unwrap();
        assert_eq!(delegated, "+memory +cpu +pids");
        let sandbox = Sandbox {
            hierarchy: Some(hierarchy),
            unshare: None,
            report: SandboxReport {
                memory: Mechanism::CgroupV2,
                cpu: Mechanism::CgroupV2,
                pids: Mechanism::CgroupV2,
                namespaces: false,
            },
        };
        let limits = Limits { memory_bytes: 64 << 20, cpu_millis: 100, pids: 32 };
        // Kernels with swap accounting have the file; the driver zeroes it.
        let dir = shared.join(format!("driver-{}", std::process::id())).join("inst");
        let cgroup = {
            fs::create_dir_all(&dir).unwrap();
            fs::write(dir.join("memory.swap.max"), "max").unwrap();
            let made =
                Cgroup { dirs: vec![dir.clone()], kind: CgroupKind::V2 { dir: dir.clone() } };
            made.apply(limits).unwrap();
            made
        };
        let read = |file: &str| fs::read_to_string(dir.join(file)).unwrap();
        assert_eq!(read("memory.max"), (64u64 << 20).to_string());
        assert_eq!(read("memory.swap.max"), "0");
        assert_eq!(read("cpu.max"), "10000 100000", "100m is 10 ms of every 100 ms");
        assert_eq!(read("pids.max"), "32");
        // The wrapper joins every cgroup directory before exec.
        let argv = sandbox.wrap(Some(&cgroup), limits, vec!["python3".into()]);
        assert_eq!(argv[4], dir.join("cgroup.procs").display().to_string());
        assert_eq!((argv[5].as_str(), argv.last().map(String::as_str)), ("-", Some("python3")));
        fs::write(dir.join("memory.events"), "low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\n").unwrap();
        assert_eq!(cgroup.oom_kills(), 1);
        fs::write(dir.join("cpu.stat"), "usage_usec 2500\nuser_usec 2000\n").unwrap();
        assert_eq!(cgroup.cpu_time(), Some(Duration::from_micros(2500)));
        std::mem::forget(cgroup); // a plain directory cannot be removed like a cgroup
        let _ = fs::remove_dir_all(root);
    }

    #[test]
    fn v2_without_the_memory_controller_is_not_used() {
        let root = fake_v2_mount("no-memory");
        fs::write(root.join("cgroup.controllers"), "cpu io pids\n").unwrap();
        let mounts =
            vec![CgroupMount { root: "/".into(), mount_point: root.clone(), controllers: None }];
        assert!(detect_v2(&mounts, &parse_proc_cgroup("0::/\n")).is_none());
        let _ = fs::remove_dir_all(root);
    }

    #[test]
    fn rlimit_fallback_wraps_with_ulimit_and_no_cgroup() {
        let sandbox = Sandbox {
            hierarchy: None,
            unshare: None,
            report: SandboxReport {
                memory: Mechanism::Rlimit,
                cpu: Mechanism::None,
                pids: Mechanism::None,
                namespaces: false,
            },
        };
        let limits = Limits { memory_bytes: 256 << 20, ..Limits::default() };
        let argv = sandbox.wrap(None, limits, vec!["node".into(), "bootstrap.mjs".into()]);
        assert_eq!(argv[..2], ["/bin/sh".to_owned(), "-c".to_owned()]);
        assert_eq!(argv[4], "", "no cgroup to join");
        assert_eq!(argv[5], (256 * 1024).to_string(), "ulimit -v takes KiB");
        assert_eq!(argv[6..], ["node".to_owned(), "bootstrap.mjs".to_owned()]);
    }

    #[test]
    fn keyed_files_are_read_by_key() {
        let path = std::env::temp_dir().join(format!("kubefaas-keyed-{}", std::process::id()));
        fs::write(&path, "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n").unwrap();
        assert_eq!(read_key(&path, "oom_kill"), Some(3));
        assert_eq!(read_key(&path, "missing"), None);
        let _ = fs::remove_file(path);
    }
}
