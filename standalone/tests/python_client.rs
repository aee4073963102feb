//! The official Python `kubernetes` client lists and watches a custom resource. It runs from the
//! virtualenv `make deps` makes (`KUBEFAAS_TEST_PYTHON`, set by the Makefile); without it the
//! test fails and says how to get it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Harness, PATIENCE};

#[tokio::test]
async fn python_client_lists_and_watches_functions_needs_make_deps_venv() {
    let python = std::env::var("KUBEFAAS_TEST_PYTHON").expect(
        "KUBEFAAS_TEST_PYTHON is not set: run with `make test`, or `make deps` and set it to \
         .venv/tests/bin/python",
    );
    let h = Harness::start().await;
    h.install_crds().await;
    let script = common::repo().join("standalone/tests/python/list_and_watch.py");
    let run = tokio::process::Command::new(&python).arg(script).arg(&h.kubeconfig).output();
    let out = tokio::time::timeout(PATIENCE, run).await.expect("the script finishes").unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        ["listed py-first", "watched ADDED py-second", "not found 404"]
    );
}
