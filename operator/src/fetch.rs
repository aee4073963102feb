//! Downloads of `spec.code.url`.
//!
//! The operator fetches the code once, checks it against `spec.code.sha256` and stores it in the
//! function's code ConfigMap like any other code; executors and runtime pods never reach the
//! address. A download is bounded in size (the same bound as code carried inside a Function,
//! since it ends up in a ConfigMap) and in time, follows a few redirects, and is rejected unless
//! its SHA-256 matches, so plain `http://` is as safe as `https://` for integrity.
//!
//! Addresses often carry credentials (signed query strings, `user:password@`): messages name the
//! address without its query, fragment and user information.
//!
//! Whoever may create a Function chooses the address, and the operator runs inside the cluster
//! with more network reach than they may have. So by default it connects only to public
//! addresses: a name must resolve to at least one public address (only those are used), an
//! address written in the URL must be public, and every redirect is checked the same way.
//! Loopback, private (RFC 1918, IPv6 unique local), link-local (cloud metadata services live
//! there), shared (RFC 6598), unspecified, multicast and documentation ranges are refused.
//! [`FetchConfig::allow_private_addresses`] lifts this for artifact servers inside the network.
//! Through an HTTP(S) proxy configured in the environment the proxy resolves names, and only
//! the address in the URL is checked here.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use reqwest::{
    StatusCode, Url,
    dns::{Addrs, Name, Resolve, Resolving},
    header::CONTENT_LENGTH,
    redirect,
};
use sha2::{Digest, Sha256};

/// How downloads are made.
#[derive(Clone, Debug)]
pub struct FetchConfig {
    /// Bound on one whole download: connecting, redirects and the body.
    pub timeout: Duration,
    /// Largest body accepted, in bytes.
    pub max_bytes: usize,
    /// Extra certificate authorities (PEM) trusted besides the system's, for servers with a
    /// private CA.
    pub extra_ca_pem: Option<Vec<u8>>,
    /// Whether addresses that are not public (loopback, private, link-local, …) may be
    /// downloaded from (see the module docs). Off by default.
    pub allow_private_addresses: bool,
}

impl Default for FetchConfig {
    /// One minute, the platform's code size bound, the system's CAs only.
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(60),
            max_bytes: kubefaas_core::validation::Limits::default().max_code_bytes,
            extra_ca_pem: None,
            allow_private_addresses: false,
        }
    }
}

/// Why code could not be had from its address. Every message names the address (redacted).
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The client could not be built (a bad CA bundle).
    #[error("code download client: {0}")]
    Client(String),
    /// The address does not parse.
    #[error("{url:?} is not a valid address")]
    Address {
        /// The address as given (the spec's validation has already vetted its shape).
        url: String,
    },
    /// Connecting, TLS, redirects, or reading the body failed, or the time ran out.
    #[error("downloading {url}: {reason}")]
    Transfer {
        /// The redacted address.
        url: String,
        /// What went wrong, with its causes.
        reason: String,
    },
    /// The address is not public and private addresses are not allowed.
    #[error("downloading {url}: {reason}")]
    NotPublic {
        /// The redacted address.
        url: String,
        /// Which address, and how to allow it.
        reason: String,
    },
    /// The server answered with an error status.
    #[error("downloading {url}: the server answered {status}")]
    Status {
        /// The redacted address.
        url: String,
        /// Its answer.
        status: StatusCode,
    },
    /// The body is larger than allowed.
    #[error("downloading {url}: the code is larger than {limit} bytes")]
    TooLarge {
        /// The redacted address.
        url: String,
        /// The bound.
        limit: usize,
    },
    /// The body is not what `spec.code.sha256` says.
    #[error("downloaded {url}: its SHA-256 is {actual}, but spec.code.sha256 is {expected}")]
    Mismatch {
        /// The redacted address.
        url: String,
        /// `spec.code.sha256`.
        expected: String,
        /// What was downloaded.
        actual: String,
    },
}

/// Downloads code; cheap to clone (one connection pool).
#[derive(Clone, Debug)]
pub struct CodeFetcher {
    http: reqwest::Client,
    max_bytes: usize,
    allow_private_addresses: bool,
}

/// What the operator flag is, for messages that say how to allow a private address.
const ALLOW_FLAG: &str = "--code-allow-private-addresses";

/// Whether `ip` is an address of the public internet (see the module docs for what is not).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_public_v4(v4),
            None => is_public_v6(v6),
        },
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        // Shared address space (carrier-grade NAT, often cluster-internal), RFC 6598.
        || (a == 100 && (64..128).contains(&b))
        // IETF protocol assignments, and benchmarking (RFC 2544).
        || (a == 192 && b == 0 && c == 0)
        || (a == 198 && (18..20).contains(&b))
        // Reserved for future use.
        || a >= 240)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        // Unique local fc00::/7 and link-local fe80::/10.
        || (first & 0xfe00) == 0xfc00
        || (first & 0xffc0) == 0xfe80
        // Documentation 2001:db8::/32.
        || (first == 0x2001 && ip.segments()[1] == 0x0db8))
}

/// Why `url` may not be fetched when private addresses are not allowed: its host is an
/// address that is not public. Names are checked when they are resolved ([`PublicOnly`]).
fn refused_address(url: &Url) -> Option<String> {
    let host = url.host_str()?;
    let ip: IpAddr = host.trim_start_matches('[').trim_end_matches(']').parse().ok()?;
    (!is_public(ip)).then(|| format!("{ip} is not a public address ({ALLOW_FLAG} allows it)"))
}

/// A resolver that hands out only the public addresses of a name.
struct PublicOnly;

impl Resolve for PublicOnly {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let public: Vec<SocketAddr> =
                found.iter().copied().filter(|a| is_public(a.ip())).collect();
            if public.is_empty() {
                let shown: Vec<String> = found.iter().map(|a| a.ip().to_string()).collect();
                return Err(format!(
                    "{host} resolves to no public address ({}; {ALLOW_FLAG} allows them)",
                    shown.join(", ")
                )
                .into());
            }
            Ok(Box::new(public.into_iter()) as Addrs)
        })
    }
}

/// Redirects followed before giving up.
const MAX_REDIRECTS: usize = 5;

impl CodeFetcher {
    /// A fetcher with `config`.
    pub fn new(config: &FetchConfig) -> Result<Self, FetchError> {
        let mut builder = kubefaas_core::http::client_builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("kubefaas-operator/", env!("CARGO_PKG_VERSION")));
        let allow_private = config.allow_private_addresses;
        builder = builder.redirect(redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() > MAX_REDIRECTS {
                return attempt.error(format!("more than {MAX_REDIRECTS} redirects"));
            }
            match (allow_private, refused_address(attempt.url())) {
                (false, Some(reason)) => attempt.error(format!("redirected: {reason}")),
                _ => attempt.follow(),
            }
        }));
        if !allow_private {
            builder = builder.dns_resolver(PublicOnly);
        }
        if let Some(pem) = &config.extra_ca_pem {
            builder =
                kubefaas_core::http::trust_extra_cas(builder, pem).map_err(FetchError::Client)?;
        }
        let http = builder.build().map_err(|e| FetchError::Client(chain(&e)))?;
        Ok(Self {
            http,
            max_bytes: config.max_bytes,
            allow_private_addresses: config.allow_private_addresses,
        })
    }

    /// The body at `url`, if its SHA-256 is `expected` (lower-case hex).
    pub async fn fetch(&self, url: &str, expected: &str) -> Result<Vec<u8>, FetchError> {
        let parsed = Url::parse(url).map_err(|_| FetchError::Address { url: url.to_owned() })?;
        let shown = redacted(&parsed);
        let transfer = |error: reqwest::Error| FetchError::Transfer {
            url: shown.clone(),
            reason: chain(&error),
        };
        if !self.allow_private_addresses
            && let Some(reason) = refused_address(&parsed)
        {
            return Err(FetchError::NotPublic { url: shown, reason });
        }

        let mut response = self.http.get(parsed.clone()).send().await.map_err(transfer)?;
        let status = response.status();
        if !status.is_success() {
            return Err(FetchError::Status { url: shown, status });
        }
        let too_large = || FetchError::TooLarge { url: shown.clone(), limit: self.max_bytes };
        let announced = response
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if announced.is_some_and(|n| n > self.max_bytes as u64) {
            return Err(too_large());
        }

        let mut body = Vec::with_capacity(
            announced.map_or(0, |n| usize::try_from(n).unwrap_or(0)).min(self.max_bytes),
        );
        let mut digest = Sha256::new();
        while let Some(chunk) = response.chunk().await.map_err(transfer)? {
            if body.len() + chunk.len() > self.max_bytes {
                return Err(too_large());
            }
            digest.update(&chunk);
            body.extend_from_slice(&chunk);
        }
        let actual = hex::encode(digest.finalize());
        if actual != expected {
            return Err(FetchError::Mismatch { url: shown, expected: expected.to_owned(), actual });
        }
        Ok(body)
    }
}

/// `url` without user information, query or fragment.
fn redacted(url: &Url) -> String {
    let mut shown = url.clone();
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    let hidden = shown.query().is_some();
    shown.set_query(None);
    shown.set_fragment(None);
    if hidden { format!("{shown}?…") } else { shown.to_string() }
}

/// An error and its causes, most general first, without the address reqwest puts in its own
/// message (it may carry credentials; the caller names the redacted one).
fn chain(error: &reqwest::Error) -> String {
    let mut text = if error.is_timeout() {
        "timed out".to_owned()
    } else if error.is_connect() {
        "could not connect".to_owned()
    } else if error.is_redirect() {
        "redirect refused".to_owned()
    } else if error.is_body() || error.is_decode() {
        "reading the body failed".to_owned()
    } else {
        "request failed".to_owned()
    };
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // hyper's wrappers ("client error (Connect)") say nothing the kinds above do not.
        if !text.ends_with(&cause_text) && !cause_text.starts_with("client error (") {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use std::{net::SocketAddr, sync::Arc};

    use axum::{
        Router,
        body::Body,
        http::{HeaderValue, Response, header},
        response::Redirect,
        routing::get,
    };
    use futures::StreamExt;
    use tokio::net::{TcpListener, TcpStream};
    use tokio_rustls::{TlsAcceptor, rustls, server::TlsStream};

    use super::*;

    const CODE: &[u8] = b"def handler(event, context):\n    return event\n";

    fn sha256(bytes: &[u8]) -> String {
        hex::encode(Sha256::digest(bytes))
    }

    /// A body of unknown length (sent chunked), whatever the headers say.
    fn streamed(bytes: Vec<u8>) -> Body {
        Body::from_stream(futures::stream::iter([Ok::<_, std::io::Error>(bytes)]))
    }

    /// `/code.py` is [`CODE`], `/big` streams 4 KiB without a length, `/big-announced`
    /// announces 1 MiB, `/moved` redirects to `/code.py`, `/loop` to itself, `/hang` never
    /// answers; anything else is 404.
    fn site() -> Router {
        Router::new()
            .route("/code.py", get(|| async { CODE }))
            .route("/big", get(|| async { streamed(vec![b'x'; 4096]) }))
            .route(
                "/big-announced",
                get(|| async {
                    // The first bytes, then nothing: the length alone must refuse it.
                    let first = futures::stream::iter([Ok::<_, std::io::Error>(vec![b'x'; 16])]);
                    let body = Body::from_stream(first.chain(futures::stream::pending()));
                    let mut response = Response::new(body);
                    response
                        .headers_mut()
                        .insert(header::CONTENT_LENGTH, HeaderValue::from_static("1048576"));
                    response
                }),
            )
            .route("/moved", get(|| async { Redirect::to("/code.py") }))
            .route("/loop", get(|| async { Redirect::to("/loop") }))
            .route("/hang", get(std::future::pending::<&'static str>))
    }

    /// Serves [`site`] over plain HTTP.
    async fn serve() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, site()).await });
        addr
    }

    /// Accepts TLS connections; failed handshakes are dropped.
    struct TlsListener {
        tcp: TcpListener,
        acceptor: TlsAcceptor,
    }

    impl axum::serve::Listener for TlsListener {
        type Io = TlsStream<TcpStream>;
        type Addr = SocketAddr;

        async fn accept(&mut self) -> (Self::Io, Self::Addr) {
            loop {
                let Ok((stream, addr)) = self.tcp.accept().await else { continue };
                if let Ok(stream) = self.acceptor.accept(stream).await {
                    return (stream, addr);
                }
            }
        }

        fn local_addr(&self) -> std::io::Result<SocketAddr> {
            self.tcp.local_addr()
        }
    }

    /// Serves [`site`] over HTTPS with `acceptor`.
    async fn serve_tls(acceptor: TlsAcceptor) -> SocketAddr {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(TlsListener { tcp, acceptor }, site()).await });
        addr
    }

    /// A fetcher for the test servers, which listen on loopback.
    fn fetcher(max_bytes: usize, extra_ca_pem: Option<Vec<u8>>) -> CodeFetcher {
        CodeFetcher::new(&FetchConfig {
            timeout: Duration::from_secs(2),
            max_bytes,
            extra_ca_pem,
            allow_private_addresses: true,
        })
        .unwrap()
    }

    #[test]
    fn only_public_addresses_count_as_public() {
        for public in ["8.8.8.8", "1.1.1.1", "2606:4700::1111", "::ffff:8.8.8.8"] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "192.0.2.1",
            "240.0.0.1",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "ff02::1",
            "2001:db8::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
    }

    #[tokio::test]
    async fn private_addresses_are_refused_by_default_by_address_and_by_name() {
        let addr = serve().await;
        let strict = CodeFetcher::new(&FetchConfig::default()).unwrap();
        let by_address =
            strict.fetch(&format!("http://{addr}/code.py"), &sha256(CODE)).await.unwrap_err();
        assert!(matches!(by_address, FetchError::NotPublic { .. }), "{by_address}");
        let message = by_address.to_string();
        assert!(message.contains("127.0.0.1") && message.contains(ALLOW_FLAG), "{message}");

        let by_name = strict
            .fetch(&format!("http://localhost:{}/code.py", addr.port()), &sha256(CODE))
            .await
            .unwrap_err()
            .to_string();
        assert!(by_name.contains("no public address") && by_name.contains(ALLOW_FLAG), "{by_name}");

        for (url, refused) in [
            ("http://169.254.169.254/latest/meta-data/", true),
            ("http://[fd00::1]/x", true),
            ("http://[::ffff:10.0.0.1]/x", true),
            ("https://8.8.8.8/x", false),
            ("https://artifacts.example/x", false),
        ] {
            let checked = refused_address(&Url::parse(url).unwrap());
            assert_eq!(checked.is_some(), refused, "{url}: {checked:?}");
        }
    }

    #[tokio::test]
    async fn code_whose_digest_matches_is_returned() {
        let addr = serve().await;
        let got = fetcher(1024, None)
            .fetch(&format!("http://{addr}/code.py"), &sha256(CODE))
            .await
            .unwrap();
        assert_eq!(got, CODE);
    }

    #[tokio::test]
    async fn a_redirect_is_followed_but_not_forever() {
        let addr = serve().await;
        let got = fetcher(1024, None)
            .fetch(&format!("http://{addr}/moved"), &sha256(CODE))
            .await
            .unwrap();
        assert_eq!(got, CODE);
        let error = fetcher(1024, None).fetch(&format!("http://{addr}/loop"), &sha256(CODE)).await;
        assert!(matches!(error, Err(FetchError::Transfer { .. })), "{error:?}");
        assert!(error.unwrap_err().to_string().contains("redirects"));
    }

    #[tokio::test]
    async fn a_digest_mismatch_is_rejected_naming_both_digests() {
        let addr = serve().await;
        let wrong = sha256(b"something else");
        let error =
            fetcher(1024, None).fetch(&format!("http://{addr}/code.py"), &wrong).await.unwrap_err();
        let message = error.to_string();
        assert!(matches!(error, FetchError::Mismatch { .. }), "{message}");
        assert!(message.contains(&wrong) && message.contains(&sha256(CODE)), "{message}");
        assert!(message.contains("spec.code.sha256"), "{message}");
    }

    #[tokio::test]
    async fn bodies_over_the_bound_are_refused_whether_announced_or_not() {
        let addr = serve().await;
        for path in ["big", "big-announced"] {
            let error = fetcher(1024, None)
                .fetch(&format!("http://{addr}/{path}"), &sha256(b""))
                .await
                .unwrap_err();
            assert!(matches!(error, FetchError::TooLarge { limit: 1024, .. }), "{path}: {error}");
        }
    }

    #[tokio::test]
    async fn an_error_status_and_an_unreachable_server_are_reported() {
        let addr = serve().await;
        let error = fetcher(1024, None)
            .fetch(&format!("http://{addr}/missing.py"), &sha256(CODE))
            .await
            .unwrap_err();
        assert!(
            matches!(error, FetchError::Status { status: StatusCode::NOT_FOUND, .. }),
            "{error}"
        );

        // A port nobody listens on: bind one, note it, close it.
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
        let error = fetcher(1024, None)
            .fetch(&format!("http://{closed}/code.py"), &sha256(CODE))
            .await
            .unwrap_err();
        assert!(error.to_string().contains("could not connect"), "{error}");
    }

    #[tokio::test]
    async fn a_server_that_never_answers_times_out() {
        let addr = serve().await;
        let started = tokio::time::Instant::now();
        let error = fetcher(1024, None)
            .fetch(&format!("http://{addr}/hang"), &sha256(CODE))
            .await
            .unwrap_err();
        assert!(error.to_string().contains("timed out"), "{error}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[tokio::test]
    async fn credentials_in_the_address_stay_out_of_messages() {
        let addr = serve().await;
        let url = format!("http://robot:hunter2@{addr}/missing.py?X-Signature=secret#frag");
        let message = fetcher(1024, None).fetch(&url, &sha256(CODE)).await.unwrap_err().to_string();
        assert!(message.contains(&format!("http://{addr}/missing.py?…")), "{message}");
        for secret in ["robot", "hunter2", "secret", "frag"] {
            assert!(!message.contains(secret), "{secret} leaked: {message}");
        }
    }

    /// A CA, and an acceptor for 127.0.0.1 with a certificate it signed.
    fn private_ca() -> (String, TlsAcceptor) {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let server_key = KeyPair::generate().unwrap();
        let server = CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .unwrap()
            .signed_by(&server_key, &ca)
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![server.der().clone()],
                rustls::pki_types::PrivateKeyDer::try_from(server_key.serialize_der()).unwrap(),
            )
            .unwrap();
        (ca.pem(), TlsAcceptor::from(Arc::new(config)))
    }

    #[tokio::test]
    async fn https_works_with_a_trusted_ca_and_fails_with_an_unknown_one() {
        let (ca_pem, acceptor) = private_ca();
        let addr = serve_tls(acceptor).await;
        let url = format!("https://{addr}/code.py");

        let got = fetcher(1024, Some(ca_pem.into_bytes())).fetch(&url, &sha256(CODE)).await;
        assert_eq!(got.unwrap(), CODE);

        let error = fetcher(1024, None).fetch(&url, &sha256(CODE)).await.unwrap_err();
        assert!(matches!(error, FetchError::Transfer { .. }), "{error}");
        assert!(error.to_string().to_lowercase().contains("certificate"), "{error}");
    }

    #[test]
    fn a_bad_ca_bundle_is_refused_at_start() {
        let error = CodeFetcher::new(&FetchConfig {
            extra_ca_pem: Some(b"not a certificate".to_vec()),
            ..FetchConfig::default()
        })
        .unwrap_err();
        assert!(error.to_string().contains("CA bundle"), "{error}");
    }
}
