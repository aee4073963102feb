//! Tests of the Helm chart in `charts/kubefaas`; the crate
//! has no code of its own. `tests/chart.rs` lints and renders the chart with the Helm SDK
//! (`helm.py` beside this crate, run by the Python of `make deps`'s `.venv/tests`), then checks
//! the rendered objects against the `k8s-openapi` types, the RBAC mapping in the chart's
//! README, the labels the executor puts on runtime pods and the flags the binaries accept.
