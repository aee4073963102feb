//! End-to-end tests of kubefaas on a real Kubernetes cluster, with the platform installed by its
//! Helm chart (`make cluster-test` starts the cluster, builds and loads the images, installs the
//! chart and runs them). The tests live in `tests/`; this library is empty. They are not part
//! of `make test`: without a cluster they fail, as every integration test here does.
