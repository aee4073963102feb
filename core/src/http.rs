//! Outbound HTTP(S) clients.
//!
//! Every kubefaas binary that speaks HTTP to something other than the Kubernetes API builds its
//! client here. TLS is rustls on the `ring` provider, the one the Kubernetes client already uses,
//! so the platform carries a single cryptography library and needs no C toolchain beyond what
//! `ring` builds. Server certificates are checked against the operating system's trust store.

use std::sync::Once;

/// A `reqwest` client builder whose TLS is ready to use.
///
/// `reqwest` is built without a default crypto provider (to avoid a second one); building a
/// client without a process-wide provider installed would panic. This installs `ring` as that
/// provider once, unless the process installed one of its own first.
pub fn client_builder() -> reqwest::ClientBuilder {
    static PROVIDER: Once = Once::new();
    PROVIDER.call_once(|| {
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            // An error means another thread installed one in between: that one is used.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
    });
    reqwest::Client::builder()
}

/// `builder` trusting the certificates of the PEM bundle `pem` besides the system's (a private
/// CA). An error says what is wrong with the bundle.
pub fn trust_extra_cas(
    builder: reqwest::ClientBuilder,
    pem: &[u8],
) -> Result<reqwest::ClientBuilder, String> {
    let certificates = reqwest::Certificate::from_pem_bundle(pem).map_err(|e| {
        let mut message = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(cause) = source {
            message.push_str(&format!(": {cause}"));
            source = cause.source();
        }
        format!("CA bundle: {message}")
    })?;
    if certificates.is_empty() {
        return Err("CA bundle holds no certificate".to_owned());
    }
    Ok(builder.tls_certs_merge(certificates))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_bundle_without_certificates_is_refused() {
        for bundle in [&b""[..], b"not a certificate"] {
            let error = trust_extra_cas(client_builder(), bundle).unwrap_err();
            assert!(error.contains("CA bundle"), "{error}");
        }
    }

    #[test]
    fn a_client_with_tls_builds_without_a_provider_installed_by_the_caller() {
        let client = client_builder().https_only(true).build();
        assert!(client.is_ok(), "{client:?}");
        assert!(rustls::crypto::CryptoProvider::get_default().is_some());
    }
}
