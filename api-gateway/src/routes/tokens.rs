//! API tokens: creation, listing and revocation through the API, for holders of an
//! all-namespaces token (or anyone when authentication is off, as in local use).

use axum::{
    Extension, Json,
    extract::{Path, State},
    http::StatusCode,
};
use kubefaas_core::{tokens::ALL_NAMESPACES, validation::is_dns1123_label};

use crate::{
    AppState, AuthMode,
    error::{ApiError, ApiResult, ErrorBody},
    extract::{ApiJson, Principal},
    model::{CreateToken, TokenCreated, TokenInfo, TokenList},
};
use uuid::Uuid;

/// Most namespaces one token may name.
const MAX_TOKEN_NAMESPACES: usize = 100;

/// Refuses callers without a token for all namespaces (anyone may, with authentication off).
fn require_admin(state: &AppState, principal: &Principal, action: &str) -> ApiResult<()> {
    let admin = match (&principal.token, state.settings.auth) {
        (_, AuthMode::None) => true,
        (Some(token), AuthMode::Token) => token.namespaces.iter().any(|n| n == ALL_NAMESPACES),
        (None, AuthMode::Token) => false,
    };
    if admin {
        Ok(())
    } else {
        Err(ApiError::forbidden(format!("only a token for all namespaces (*) may {action}")))
    }
}

/// Creates an API token. The secret is in this answer only; it is stored as a hash.
#[utoipa::path(post, path = "/tokens", tag = "tokens", request_body = CreateToken,
    responses(
        (status = 201, description = "Created; `token` is shown only here", body = TokenCreated),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, description = "Only a token for all namespaces (`*`) may create tokens", body = ErrorBody),
        (status = 415, body = ErrorBody), (status = 429, body = ErrorBody), (status = 503, body = ErrorBody),
    ))]
pub(crate) async fn create(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiJson(body): ApiJson<CreateToken>,
) -> ApiResult<(StatusCode, Json<TokenCreated>)> {
    require_admin(&state, &principal, "create tokens")?;
    if body.name.trim().is_empty() || body.name.chars().count() > 253 {
        return Err(ApiError::field("name", "must be 1 to 253 characters"));
    }
    if body.name.chars().any(char::is_control) {
        return Err(ApiError::field("name", "must not contain control characters"));
    }
    if body.namespaces.is_empty() {
        return Err(ApiError::field("namespaces", "name at least one namespace, or *"));
    }
    if let Some(bad) = body.namespaces.iter().find(|n| *n != ALL_NAMESPACES && !is_dns1123_label(n))
    {
        return Err(ApiError::field("namespaces", format!("{bad:?} is not a namespace name")));
    }
    if body.namespaces.len() > MAX_TOKEN_NAMESPACES {
        return Err(ApiError::field(
            "namespaces",
            format!("name at most {MAX_TOKEN_NAMESPACES}, or *"),
        ));
    }
    if let Some(at) = body.expires_at
        && at <= chrono::Utc::now()
    {
        return Err(ApiError::field("expires_at", format!("{at} is not in the future")));
    }
    let created = state.store.create_token(&body.name, &body.namespaces, body.expires_at).await?;
    let row = created.row;
    Ok((
        StatusCode::CREATED,
        Json(TokenCreated {
            id: row.id,
            name: row.name,
            token: created.secret,
            token_prefix: row.token_prefix,
            namespaces: row.namespaces,
            created_at: row.created_at,
            expires_at: row.expires_at,
        }),
    ))
}

/// Every API token, newest first, revoked and expired ones included; never a secret or hash.
#[utoipa::path(get, path = "/tokens", tag = "tokens",
    responses(
        (status = 200, body = TokenList),
        (status = 401, body = ErrorBody),
        (status = 403, description = "Only a token for all namespaces (`*`) may list tokens", body = ErrorBody),
        (status = 429, body = ErrorBody), (status = 503, body = ErrorBody),
    ))]
pub(crate) async fn list(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
) -> ApiResult<Json<TokenList>> {
    require_admin(&state, &principal, "list tokens")?;
    let now = chrono::Utc::now();
    let rows = state.store.list_tokens().await?;
    Ok(Json(TokenList { tokens: rows.iter().map(|row| TokenInfo::of(row, now)).collect() }))
}

/// Revokes an API token. It stops working at once on this gateway replica and within the
/// token cache's lifetime (10 s) on the others.
#[utoipa::path(delete, path = "/tokens/{id}", tag = "tokens",
    params(("id" = Uuid, Path, description = "Token id")),
    responses(
        (status = 200, description = "Revoked", body = TokenInfo),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, description = "Only a token for all namespaces (`*`) may revoke tokens", body = ErrorBody),
        (status = 404, description = "No active token has this id", body = ErrorBody),
        (status = 429, body = ErrorBody), (status = 503, body = ErrorBody),
    ))]
pub(crate) async fn revoke(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<Json<TokenInfo>> {
    require_admin(&state, &principal, "revoke tokens")?;
    let uuid = Uuid::parse_str(&id)
        .map_err(|_| ApiError::field("id", format!("{id:?} is not a token id (a UUID)")))?;
    let row = state.store.revoke_token(uuid).await?.ok_or_else(|| {
        ApiError::not_found(format!("no active token has id {id} (unknown, or revoked already)"))
    })?;
    state.tokens.forget(&row.token_prefix);
    Ok(Json(TokenInfo::of(&row, chrono::Utc::now())))
}
