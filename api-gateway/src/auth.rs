//! Bearer-token authentication and the per-token rate limit.
//!
//! Tokens are stored only as SHA-256 hashes (see `kubefaas_core::tokens`). A presented token's
//! public prefix finds the candidate rows; the full hash is then compared in constant time with
//! `subtle`. Rows are cached for [`TOKEN_CACHE_TTL`], so a revoked token stops working within
//! that time and the hot path costs no database round trip.
//!
//! The rate limit is a token bucket per API token (one shared bucket when authentication is
//! off). It is a few lines here rather than a dependency: the crates that do this well pull in
//! clocks, concurrent maps and feature flags we do not need for one mutex-guarded map.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use axum::{
    extract::{Request, State},
    http::header,
    middleware::Next,
    response::{IntoResponse, Response},
};
use kubefaas_core::{
    store::Store,
    tokens::{self, TokenRow},
};
use subtle::ConstantTimeEq;

use crate::{AppState, AuthMode, error::ApiError, extract::Principal};

/// How long looked-up token rows are trusted before the database is asked again.
pub(crate) const TOKEN_CACHE_TTL: Duration = Duration::from_secs(10);

/// Most cached prefixes; beyond it the cache is cleared (it only saves round trips).
const TOKEN_CACHE_MAX: usize = 10_000;

/// Cached token rows by prefix, with the time they were read.
type TokenCache = HashMap<String, (Instant, Arc<Vec<Arc<TokenRow>>>)>;

/// Verifies bearer tokens against the store, with a short-lived cache.
#[derive(Debug)]
pub(crate) struct Tokens {
    store: Store,
    cache: Mutex<TokenCache>,
}

impl Tokens {
    /// A verifier over `store`.
    pub(crate) fn new(store: Store) -> Self {
        Self { store, cache: Mutex::default() }
    }

    /// The active token matching `secret`, `Ok(None)` when there is none.
    pub(crate) async fn verify(&self, secret: &str) -> Result<Option<Arc<TokenRow>>, ApiError> {
        let Some(prefix) = tokens::prefix_of(secret) else {
            return Ok(None);
        };
        let (rows, fresh) = self.rows(prefix).await?;
        let presented = tokens::hash(secret);
        let now = chrono::Utc::now();
        // Every candidate is compared, so the time taken does not depend on which one matched.
        let mut found = None;
        for row in rows.iter() {
            if bool::from(row.token_hash.as_slice().ct_eq(presented.as_slice())) {
                found = Some(Arc::clone(row));
            }
        }
        let found = found.filter(|row| row.is_active(now));
        // Use is recorded when the rows are read afresh: at most once per cache lifetime per
        // token, off the request's path.
        if fresh && let Some(row) = &found {
            let (store, id) = (self.store.clone(), row.id);
            tokio::spawn(async move {
                if let Err(error) = store.token_used(id).await {
                    tracing::warn!(token = %id, %error, "recording a token's use failed");
                }
            });
        }
        Ok(found)
    }

    /// The rows of `prefix`, and whether they were just read from the database.
    async fn rows(&self, prefix: &str) -> Result<(Arc<Vec<Arc<TokenRow>>>, bool), ApiError> {
        if let Some((at, rows)) = self.lock().get(prefix)
            && at.elapsed() < TOKEN_CACHE_TTL
        {
            return Ok((Arc::clone(rows), false));
        }
        let rows: Arc<Vec<Arc<TokenRow>>> = Arc::new(
            self.store.tokens_with_prefix(prefix).await?.into_iter().map(Arc::new).collect(),
        );
        let mut cache = self.lock();
        if cache.len() >= TOKEN_CACHE_MAX {
            cache.clear();
        }
        cache.insert(prefix.to_owned(), (Instant::now(), Arc::clone(&rows)));
        Ok((rows, true))
    }

    /// Drops the cached rows of `prefix`, so a token just revoked stops working here at once.
    pub(crate) fn forget(&self, prefix: &str) {
        self.lock().remove(prefix);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TokenCache> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Requests per second and burst of the per-token rate limit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateLimit {
    /// Sustained requests per second.
    pub per_second: f64,
    /// Requests allowed at once after a quiet period.
    pub burst: u32,
}

impl RateLimit {
    /// 1,000 requests per second, bursts of 2,000: a guard against a runaway client, far above
    /// what one person or a sequential benchmark sends (a warm synchronous call takes a few
    /// milliseconds). Backpressure for real load is the queue's, not this.
    pub const DEFAULT: Self = Self { per_second: 1000.0, burst: 2000 };
}

/// Token buckets, one per key.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    limit: RateLimit,
    buckets: Mutex<HashMap<String, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Most buckets kept; beyond it, full (idle) buckets are dropped.
const MAX_BUCKETS: usize = 100_000;

impl RateLimiter {
    /// A limiter with `limit` for every key.
    pub(crate) fn new(limit: RateLimit) -> Self {
        Self { limit, buckets: Mutex::default() }
    }

    /// Takes one request from `key`'s bucket. `Err` holds the seconds until one is available.
    pub(crate) fn check(&self, key: &str) -> Result<(), u64> {
        self.check_at(key, Instant::now())
    }

    fn check_at(&self, key: &str, now: Instant) -> Result<(), u64> {
        let burst = f64::from(self.limit.burst.max(1));
        let rate = self.limit.per_second.max(f64::MIN_POSITIVE);
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(key) {
            buckets.retain(|_, b| {
                b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * rate < burst
            });
        }
        let bucket = buckets.entry(key.to_owned()).or_insert(Bucket { tokens: burst, at: now });
        let refill = now.saturating_duration_since(bucket.at).as_secs_f64() * rate;
        bucket.tokens = (bucket.tokens + refill).min(burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - bucket.tokens) / rate).ceil() as u64)
        }
    }
}

/// Middleware of every API route: authenticates (when on), applies the rate limit and records
/// the [`Principal`] for the namespace check.
pub(crate) async fn authenticate(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let principal = match state.settings.auth {
        AuthMode::None => Principal::default(),
        AuthMode::Token => match bearer(&request) {
            None => {
                return ApiError::unauthorized(
                    "missing API token: send Authorization: Bearer <token> (AWS SDKs: the token as the session token)",
                )
                .into_response();
            }
            Some(secret) => match state.tokens.verify(secret).await {
                Ok(Some(token)) => Principal { token: Some(token) },
                Ok(None) => {
                    return ApiError::unauthorized("invalid, expired or revoked API token")
                        .into_response();
                }
                Err(error) => return error.into_response(),
            },
        },
    };
    if let Some(limiter) = &state.rate_limiter {
        let key =
            principal.token.as_ref().map_or_else(|| "anonymous".to_owned(), |t| t.id.to_string());
        if let Err(wait) = limiter.check(&key) {
            state.metrics.rate_limited();
            return ApiError::rate_limited(wait).into_response();
        }
    }
    request.extensions_mut().insert(principal);
    next.run(request).await
}

/// The presented token: `Authorization: Bearer <token>`, else `X-Amz-Security-Token` (how an
/// AWS SDK sends the session token it is configured with; see `routes::lambda`).
fn bearer(request: &Request) -> Option<&str> {
    let authorization = request.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    if let Some((scheme, token)) = authorization.and_then(|v| v.split_once(' '))
        && scheme.eq_ignore_ascii_case("bearer")
    {
        return Some(token.trim()).filter(|t| !t.is_empty());
    }
    let session = request.headers().get(AWS_SESSION_TOKEN)?.to_str().ok()?.trim();
    Some(session).filter(|t| !t.is_empty())
}

/// The header AWS SDKs send their session token in.
const AWS_SESSION_TOKEN: &str = "x-amz-security-token";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_refills_at_its_rate() {
        let limiter = RateLimiter::new(RateLimit { per_second: 2.0, burst: 3 });
        let start = Instant::now();
        for _ in 0..3 {
            assert_eq!(limiter.check_at("a", start), Ok(()));
        }
        assert_eq!(limiter.check_at("a", start), Err(1));
        assert_eq!(limiter.check_at("b", start), Ok(()), "keys have their own buckets");
        assert_eq!(limiter.check_at("a", start + Duration::from_millis(500)), Ok(()));
        assert!(limiter.check_at("a", start + Duration::from_millis(500)).is_err());
    }
}
