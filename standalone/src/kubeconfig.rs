//! The kubeconfig written for clients: one cluster at `http://ADDR` (plain HTTP, no
//! credentials: the server is meant for loopback), one user, one context, namespace `default`.

use std::path::Path;

use crate::error::Error;

/// The kubeconfig text for a server at `address` (`host:port`).
pub fn render(address: &str) -> String {
    format!(
        "apiVersion: v1\n\
         kind: Config\n\
         clusters:\n\
         - name: kubefaas-standalone\n  \
           cluster:\n    \
             server: http://{address}\n\
         users:\n\
         - name: kubefaas-standalone\n  \
           user: {{}}\n\
         contexts:\n\
         - name: kubefaas-standalone\n  \
           context:\n    \
             cluster: kubefaas-standalone\n    \
             user: kubefaas-standalone\n    \
             namespace: default\n\
         current-context: kubefaas-standalone\n"
    )
}

/// Writes the kubeconfig to `path` (atomically: a temporary file renamed into place).
pub fn write(path: &Path, address: &str) -> Result<(), Error> {
    let err = |source| Error::WriteKubeconfig { path: path.display().to_string(), source };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(err)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, render(address)).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}
