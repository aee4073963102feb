//! Flags checked before anything is contacted: clear errors, no gateway needed.

#![allow(clippy::unwrap_used)]

use std::process::Command;

fn kubefaas(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kubefaas"))
        .args(args)
        .env_remove("KUBEFAAS_CA_FILE")
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn a_ca_file_that_is_missing_or_holds_no_certificate_is_named_in_the_error() {
    let (ok, stderr) = kubefaas(&["--ca-file", "/no/such/ca.pem", "fn", "list"]);
    assert!(!ok && stderr.contains("--ca-file /no/such/ca.pem"), "{stderr}");

    let junk = std::env::temp_dir().join(format!("kubefaas-junk-ca-{}.pem", std::process::id()));
    std::fs::write(&junk, "not a certificate").unwrap();
    let (ok, stderr) = kubefaas(&["--ca-file", junk.to_str().unwrap(), "fn", "list"]);
    std::fs::remove_file(&junk).unwrap();
    assert!(!ok && stderr.contains("CA bundle"), "{stderr}");
}
