//! Writes the CustomResourceDefinitions generated from the Rust types into a directory
//! (`make crds` runs it with `crds/`), or prints them all to stdout when no directory is given.

use std::{env, fs, path::PathBuf, process::ExitCode};

use kubefaas_core::resources::{crd_file_name, crd_yaml, crds};

fn main() -> ExitCode {
    let out = env::args_os().nth(1).map(PathBuf::from);
    for crd in crds() {
        let yaml = match crd_yaml(&crd) {
            Ok(yaml) => yaml,
            Err(err) => {
                eprintln!("error: cannot serialise {}: {err}", crd_file_name(&crd));
                return ExitCode::FAILURE;
            }
        };
        match &out {
            Some(dir) => {
                let path = dir.join(crd_file_name(&crd));
                if let Err(err) = fs::write(&path, yaml) {
                    eprintln!("error: cannot write {}: {err}", path.display());
                    return ExitCode::FAILURE;
                }
                println!("wrote {}", path.display());
            }
            None => print!("---\n{yaml}"),
        }
    }
    ExitCode::SUCCESS
}
