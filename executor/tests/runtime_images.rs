//! The runtime images cannot be built here (no container engine), so this checks what can be
//! checked without one: every file a Dockerfile copies from its build context exists, the
//! watchdog image builds this crate's binary, and each runtime image runs it as a non-root user
//! for a catalogue runtime.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::{Path, PathBuf};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

/// Dockerfile instructions with continuation lines joined and comments dropped.
fn instructions(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || (line.is_empty() && current.is_empty()) {
            continue;
        }
        if let Some(part) = line.strip_suffix('\\') {
            current.push_str(part);
            current.push(' ');
        } else {
            current.push_str(line);
            out.push(std::mem::take(&mut current));
        }
    }
    out
}

/// Sources of the `COPY` instructions that read the build context (not another stage).
fn context_copies(instructions: &[String]) -> Vec<String> {
    let mut sources = Vec::new();
    for instruction in instructions {
        let Some(args) = instruction.strip_prefix("COPY ") else { continue };
        if args.starts_with("--from=") {
            continue;
        }
        let words: Vec<&str> = args.split_whitespace().filter(|w| !w.starts_with("--")).collect();
        sources.extend(words[..words.len() - 1].iter().map(|w| (*w).to_owned()));
    }
    sources
}

fn read(dockerfile: &Path) -> Vec<String> {
    instructions(&std::fs::read_to_string(dockerfile).unwrap())
}

/// A runtime image: built with `runtime-images/<runtime>` as context, on top of the watchdog
/// image, running the watchdog as a non-root user for a catalogue runtime.
fn check(runtime: &str) {
    let dir = repo_root().join("runtime-images").join(runtime);
    let path = dir.join("Dockerfile");
    let instructions = read(&path);
    for source in context_copies(&instructions) {
        assert!(
            dir.join(&source).exists(),
            "{}: COPY source {source} does not exist",
            path.display()
        );
    }
    assert!(
        instructions.iter().any(|i| i == "FROM ${WATCHDOG_IMAGE} AS watchdog"),
        "{}: takes the watchdog from its image",
        path.display()
    );
    let final_stage = instructions.iter().rposition(|i| i.starts_with("FROM ")).unwrap();
    let tail = &instructions[final_stage..];
    let user =
        tail.iter().rev().find_map(|i| i.strip_prefix("USER ")).expect("a USER in the final stage");
    let uid = user.split(':').next().unwrap().trim();
    assert!(uid != "0" && uid != "root", "{}: runs as non-root, not {user}", path.display());
    let entrypoint = tail.iter().find_map(|i| i.strip_prefix("ENTRYPOINT ")).expect("ENTRYPOINT");
    assert!(entrypoint.contains("/usr/local/bin/kubefaas-watchdog"), "{entrypoint}");
    assert!(
        tail.iter().any(
            |i| i == "COPY --from=watchdog /kubefaas-watchdog /usr/local/bin/kubefaas-watchdog"
        ),
        "{}: the final stage gets the watchdog binary",
        path.display()
    );
    let runtime_env = format!("KUBEFAAS_RUNTIME={runtime}");
    assert!(
        tail.iter().any(|i| i.contains(&runtime_env)),
        "{}: sets {runtime_env}",
        path.display()
    );
    assert!(kubefaas_core::runtime::lookup(runtime).is_some());
}

#[test]
fn watchdog_dockerfile_copies_files_that_exist_and_builds_the_watchdog_binary() {
    let root = repo_root();
    let path = root.join("runtime-images/watchdog/Dockerfile");
    let instructions = read(&path);
    let sources = context_copies(&instructions);
    assert!(!sources.is_empty());
    for source in sources {
        assert!(root.join(&source).exists(), "COPY source {source} does not exist");
    }
    let cargo = std::fs::read_to_string(root.join("executor/Cargo.toml")).unwrap();
    assert!(cargo.contains("name = \"kubefaas-watchdog\""), "the crate builds the watchdog");
    assert!(instructions.iter().any(|i| i.contains("--bin kubefaas-watchdog")));
    assert!(
        instructions.iter().any(|i| i.ends_with(" /kubefaas-watchdog")),
        "published at /kubefaas-watchdog"
    );
}

#[test]
fn python_dockerfile_references_files_that_exist_and_runs_the_watchdog_as_non_root() {
    check("python");
}

#[test]
fn nodejs_dockerfile_references_files_that_exist_and_runs_the_watchdog_as_non_root() {
    check("nodejs");
}

#[test]
fn go_dockerfile_references_files_that_exist_and_runs_the_watchdog_as_non_root() {
    check("go");
}
