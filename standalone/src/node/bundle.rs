//! Containers on this machine: what of the host a container sees ([`HostView`]), its bundle
//! (a root file system of empty mount points and symlinks, a synthesized `/etc`, and
//! `config.json` from `oci.rs`) and the `runc` that runs it ([`Runtime`]).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use super::oci::{self, Mount};
use super::spec::Security;

/// Host directories a container sees, read-only: the system's programs and libraries. A
/// symlink (`/bin -> usr/bin` on merged-/usr systems) is copied as a symlink.
const SYSTEM_DIRS: &[&str] = &["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"];

/// Where the watchdog appears in every container.
pub(crate) const WATCHDOG_PATH: &str = "/kubefaas/kubefaas-watchdog";

/// One system entry of the root file system.
#[derive(Clone, Debug, PartialEq, Eq)]
enum SystemEntry {
    Dir(PathBuf),
    Symlink(PathBuf, PathBuf),
}

/// What of the host every container sees: the system directories, the install prefixes of the
/// interpreters (which may live elsewhere, e.g. `~/.pyenv/versions/3.x`: only that prefix is
/// shown, never the directory around it), and the CA certificates. Found once when the agent
/// starts.
#[derive(Clone, Debug, Default)]
pub(crate) struct HostView {
    system: Vec<SystemEntry>,
    /// Interpreter prefixes outside the system directories.
    prefixes: Vec<PathBuf>,
    /// `PATH` inside containers: the interpreters' directories, then the system's.
    pub(crate) path: String,
    /// `/etc/ssl/certs`, when the host has it (public certificates, so HTTPS calls work).
    certificates: Option<PathBuf>,
    /// The host's DNS resolvers (`/etc/resolv.conf`): containers share its network.
    resolv_conf: String,
}

/// Each interpreter the runtimes use, and a command that prints its `bin` directory and its
/// install prefixes, one a line.
const INTERPRETERS: &[(&str, &[&str])] = &[
    (
        "python3",
        &[
            "-c",
            "import os, sys; print(os.path.dirname(sys.executable)); print(sys.base_prefix); print(sys.prefix)",
        ],
    ),
    (
        "node",
        &[
            "-p",
            "const p = require('path'); p.dirname(process.execPath) + '\\n' + p.resolve(process.execPath, '../..')",
        ],
    ),
    ("go", &["env", "GOROOT"]),
    ("/usr/local/go/bin/go", &["env", "GOROOT"]),
    ("/usr/lib/go/bin/go", &["env", "GOROOT"]),
];

impl HostView {
    /// Looks at this host: which system directories exist and where the interpreters are.
    pub(crate) async fn detect() -> Self {
        let mut system = Vec::new();
        for dir in SYSTEM_DIRS.iter().map(PathBuf::from) {
            match std::fs::read_link(&dir) {
                Ok(target) => system.push(SystemEntry::Symlink(dir, target)),
                Err(_) if dir.is_dir() => system.push(SystemEntry::Dir(dir)),
                Err(_) => {}
            }
        }
        let mut bins: Vec<String> = Vec::new();
        let mut prefixes: BTreeSet<PathBuf> = BTreeSet::new();
        for (program, args) in INTERPRETERS {
            let output = tokio::time::timeout(
                Duration::from_secs(30),
                tokio::process::Command::new(program)
                    .args(*args)
                    .stdin(Stdio::null())
                    .stderr(Stdio::null())
                    .output(),
            )
            .await;
            let Ok(Ok(output)) = output else { continue };
            if !output.status.success() {
                continue;
            }
            let text = String::from_utf8_lossy(&output.stdout).into_owned();
            let mut lines: Vec<PathBuf> = text
                .lines()
                .map(str::trim)
                .filter(|l| l.starts_with('/'))
                .map(PathBuf::from)
                .collect();
            if program.ends_with("go") {
                // GOROOT: the toolchain is its bin directory.
                lines.insert(0, lines.first().map(|g| g.join("bin")).unwrap_or_default());
            }
            let Some((bin, installs)) = lines.split_first() else { continue };
            let bin = bin.display().to_string();
            if !bins.contains(&bin) {
                bins.push(bin);
            }
            prefixes.extend(installs.iter().cloned());
        }
        let shown =
            |p: &Path| system.iter().any(|e| matches!(e, SystemEntry::Dir(d) if p.starts_with(d)));
        // Only prefixes the system directories do not show already, and none inside another.
        let mut outside: Vec<PathBuf> = Vec::new();
        for prefix in prefixes.into_iter().filter(|p| !shown(p) && p != Path::new("/")) {
            if !outside.iter().any(|o| prefix.starts_with(o)) {
                outside.push(prefix);
            }
        }
        bins.extend(["/usr/local/bin", "/usr/bin", "/bin"].map(String::from));
        bins.dedup();
        let certificates = Some(PathBuf::from("/etc/ssl/certs")).filter(|p| p.is_dir());
        let resolv_conf = std::fs::read_to_string("/etc/resolv.conf")
            .unwrap_or_else(|_| "nameserver 127.0.0.53\n".into());
        Self { system, prefixes: outside, path: bins.join(":"), certificates, resolv_conf }
    }

    /// The read-only mounts of the host's system, interpreters and certificates, and the
    /// container's own `/etc` (`etc`).
    fn mounts(&self, etc: &Path) -> Vec<Mount> {
        let mut mounts = Vec::new();
        for entry in &self.system {
            if let SystemEntry::Dir(dir) = entry {
                mounts.push(Mount::bind_ro(dir, &dir.display().to_string()));
            }
        }
        for prefix in &self.prefixes {
            mounts.push(Mount::bind_ro(prefix, &prefix.display().to_string()));
        }
        mounts.push(Mount::bind_ro(etc, "/etc"));
        if let Some(certificates) = &self.certificates {
            mounts.push(Mount::bind_ro(certificates, "/etc/ssl/certs"));
        }
        mounts
    }
}

/// The files of the container's `/etc`: users and groups that name the container's ids (and
/// nothing of the host's), name resolution through the host's resolvers, its host name.
fn etc_files(
    security: &Security,
    hostname: &str,
    ip: std::net::Ipv4Addr,
    resolv_conf: &str,
) -> Vec<(&'static str, String)> {
    let mut passwd = String::from("root:x:0:0:root:/root:/usr/sbin/nologin\n");
    let mut group = String::from("root:x:0:\n");
    if security.uid != 0 {
        passwd.push_str(&format!(
            "function:x:{}:{}:kubefaas function:/tmp:/usr/sbin/nologin\n",
            security.uid, security.gid
        ));
    }
    for gid in std::iter::once(security.gid).chain(security.groups.iter().copied()) {
        if gid != 0 {
            group.push_str(&format!("group{gid}:x:{gid}:\n"));
        }
    }
    passwd.push_str("nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n");
    group.push_str("nogroup:x:65534:\n");
    vec![
        ("passwd", passwd),
        ("group", group),
        (
            "hosts",
            format!("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n{ip}\t{hostname}\n"),
        ),
        ("hostname", format!("{hostname}\n")),
        ("resolv.conf", resolv_conf.to_owned()),
        ("nsswitch.conf", "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n".into()),
    ]
}

/// One container's bundle to write.
#[derive(Debug)]
pub(crate) struct Bundle<'a> {
    /// The bundle directory (`config.json`, `rootfs/`, `etc/`).
    pub(crate) dir: PathBuf,
    pub(crate) host: &'a HostView,
    pub(crate) ip: std::net::Ipv4Addr,
    /// The watchdog program on the host, shown at [`WATCHDOG_PATH`].
    pub(crate) watchdog: &'a Path,
    /// Mounts of the pod's volumes, after the system's.
    pub(crate) volumes: Vec<Mount>,
    /// A private `/tmp` of this size when no volume is mounted there.
    pub(crate) tmp_bytes: Option<u64>,
}

impl Bundle<'_> {
    /// Writes the bundle for `container` (whose `mounts` are filled here).
    pub(crate) fn write(&self, mut container: oci::Container<'_>) -> std::io::Result<()> {
        let rootfs = self.dir.join("rootfs");
        let etc = self.dir.join("etc");
        // A restart writes the bundle again from scratch.
        match std::fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        std::fs::create_dir_all(&rootfs)?;
        // Mount points inside read-only mounts must exist before: /etc/ssl/certs, the watchdog.
        std::fs::create_dir_all(etc.join("ssl/certs"))?;
        for entry in &self.host.system {
            if let SystemEntry::Symlink(link, target) = entry {
                let name = link.strip_prefix("/").unwrap_or(link);
                std::os::unix::fs::symlink(target, rootfs.join(name))?;
            }
        }
        for (name, text) in
            etc_files(container.security, &container.hostname, self.ip, &self.host.resolv_conf)
        {
            std::fs::write(etc.join(name), text)?;
        }
        let watchdog = rootfs.join(WATCHDOG_PATH.trim_start_matches('/'));
        if let Some(parent) = watchdog.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&watchdog, b"")?;
        let mut mounts = self.host.mounts(&etc);
        mounts.push(Mount::bind_ro(self.watchdog, WATCHDOG_PATH));
        if let Some(bytes) = self.tmp_bytes {
            mounts.push(Mount::tmpfs("/tmp", bytes, false));
        }
        mounts.extend(self.volumes.iter().cloned());
        container.mounts = mounts;
        let config = oci::config(&container, &rootfs);
        let json = serde_json::to_vec_pretty(&config).map_err(std::io::Error::other)?;
        std::fs::write(self.dir.join("config.json"), json)
    }
}

/// `runc`, with this agent's own state directory.
#[derive(Clone, Debug)]
pub(crate) struct Runtime {
    pub(crate) runc: PathBuf,
    /// runc's `--root`: container state of this agent only.
    pub(crate) state: PathBuf,
}

impl Runtime {
    /// `runc` (the configured program, else on the `PATH`, else Debian's `/usr/sbin/runc`) if
    /// this agent can use it; else why not, for the pods' status.
    pub(crate) fn find(configured: Option<&Path>, state: PathBuf) -> Result<Self, String> {
        let runc = match configured {
            Some(path) => path.to_owned(),
            None => std::env::var_os("PATH")
                .into_iter()
                .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
                .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
                .map(|d| d.join("runc"))
                .find(|p| p.is_file())
                .ok_or(
                    "runc is not installed (Debian: apt-get install runc; scripts/deps.sh does it)",
                )?,
        };
        if !runc.is_file() {
            return Err(format!("runc {} does not exist", runc.display()));
        }
        if !rustix::process::geteuid().is_root() {
            return Err(
                "the node agent runs containers with runc as root; it runs as another user".into(),
            );
        }
        Ok(Self { runc, state })
    }

    /// `runc run` of the bundle in `dir` as container `id`, in the foreground: it exits with
    /// the container's program and passes its standard output and error through.
    pub(crate) fn run(&self, dir: &Path, id: &str) -> Vec<String> {
        [
            self.runc.display().to_string(),
            "--root".into(),
            self.state.display().to_string(),
            "run".into(),
            "--no-new-keyring".into(),
            "--bundle".into(),
            dir.display().to_string(),
            id.to_owned(),
        ]
        .into()
    }

    /// Sends `signal` (`TERM`, `KILL`) to the container's program; a container that is gone is
    /// not an error.
    pub(crate) async fn kill(&self, id: &str, signal: &str) {
        self.quietly(&["kill", id, signal]).await;
    }

    /// Removes the container (killing what is left), so its id can be used again.
    pub(crate) async fn delete(&self, id: &str) {
        self.quietly(&["delete", "--force", id]).await;
    }

    async fn quietly(&self, args: &[&str]) {
        let run = tokio::process::Command::new(&self.runc)
            .arg("--root")
            .arg(&self.state)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .status();
        let _ = tokio::time::timeout(Duration::from_secs(10), run).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etc_names_the_containers_user_and_nothing_of_the_hosts() {
        let security =
            Security { uid: 1000, gid: 1001, groups: vec![2000], no_new_privileges: true };
        let files = etc_files(
            &security,
            "p",
            std::net::Ipv4Addr::new(127, 1, 0, 2),
            "nameserver 9.9.9.9\n",
        );
        let file = |name: &str| files.iter().find(|(n, _)| *n == name).unwrap().1.clone();
        assert!(file("passwd").contains("function:x:1000:1001:"));
        assert!(file("group").contains("group2000:x:2000:"));
        assert!(file("hosts").contains("127.1.0.2\tp"));
        assert_eq!(file("resolv.conf"), "nameserver 9.9.9.9\n");
        assert!(!files.iter().any(|(n, _)| *n == "shadow"));
    }
}
