//! API tokens: creation through the API, for holders of an all-namespaces token (or anyone
//! when authentication is off, as in local use).

use axum::{Extension, Json, extract::State, http::StatusCode};
use kubefaas_core::{tokens::ALL_NAMESPACES, validation::is_dns1123_label};

use crate::{
    AppState, AuthMode,
    error::{ApiError, ApiResult, ErrorBody},
    extract::{ApiJson, Principal},
    model::{CreateToken, TokenCreated},
};

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
    let admin = match (&principal.token, state.settings.auth) {
        (_, AuthMode::None) => true,
        (Some(token), AuthMode::Token) => token.namespaces.iter().any(|n| n == ALL_NAMESPACES),
        (None, AuthMode::Token) => false,
    };
    if !admin {
        return Err(ApiError::forbidden("only a token for all namespaces (*) may create tokens"));
    }
    if body.name.trim().is_empty() || body.name.len() > 253 {
        return Err(ApiError::field("name", "must be 1 to 253 characters"));
    }
    if body.namespaces.is_empty() {
        return Err(ApiError::field("namespaces", "name at least one namespace, or *"));
    }
    if let Some(bad) = body.namespaces.iter().find(|n| *n != ALL_NAMESPACES && !is_dns1123_label(n))
    {
        return Err(ApiError::field("namespaces", format!("{bad:?} is not a namespace name")));
    }
    let created = state.store.create_token(&body.name, &body.namespaces, None).await?;
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
        }),
    ))
}
