//! The tokens' API (admin only, like everything under `/api/v1/tokens`):
//!
//! | request | does |
//! |---|---|
//! | `POST /api/v1/tokens` `{"name", "role", "namespace"?, "expires"?}` | makes a token; the answer's `token` is the only time it is shown |
//! | `GET /api/v1/tokens` | every token's name, role, namespace, expiry, creation (no secret) |
//! | `DELETE /api/v1/tokens/{name}` | revokes it |
//! | `GET /.well-known/jwks.json` | Ferry's issuer's public key (no token needed) |
//! | `GET /.well-known/openid-configuration` | OIDC discovery of that issuer (no token needed) |

use super::tokens::{self, NewToken};
use super::{Auth, AuthError};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use serde_json::{json, Value};
use std::sync::Arc;

impl IntoResponse for AuthError {
    fn into_response(self) -> Response {
        let status = match &self {
            AuthError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AuthError::Exists(_) => StatusCode::CONFLICT,
            AuthError::NotFound(_) => StatusCode::NOT_FOUND,
            AuthError::Store(_) | AuthError::File { .. } | AuthError::Metrics(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        (status, Json(json!({ "error": self.to_string() }))).into_response()
    }
}

/// Ferry's issuer's public keys (no token needed).
pub const JWKS_PATH: &str = "/.well-known/jwks.json";
/// OIDC discovery of Ferry's issuer (no token needed).
pub const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";

pub fn router(auth: Arc<Auth>) -> Router {
    Router::new()
        .route("/api/v1/tokens", get(list).post(create))
        .route("/api/v1/tokens/{name}", delete(revoke))
        .route(JWKS_PATH, get(jwks))
        .route(DISCOVERY_PATH, get(discovery))
        .with_state(auth)
}

async fn jwks(State(auth): State<Arc<Auth>>) -> Response {
    match auth.jwks() {
        Ok(keys) => Json(keys).into_response(),
        // Auth off: no key was made.
        Err(e) => (StatusCode::NOT_FOUND, Json(json!({ "error": e }))).into_response(),
    }
}

async fn discovery(State(auth): State<Arc<Auth>>) -> Json<Value> {
    let issuer = auth.issuer_name().trim_end_matches('/');
    Json(json!({
        "issuer": issuer,
        "jwks_uri": format!("{issuer}{JWKS_PATH}"),
        "id_token_signing_alg_values_supported": ["ES256"],
        "subject_types_supported": ["public"],
        "response_types_supported": ["id_token"],
    }))
}

async fn create(
    State(auth): State<Arc<Auth>>,
    body: Result<Json<NewToken>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<Value>), AuthError> {
    let Json(new) = body.map_err(|e| AuthError::BadRequest(e.body_text()))?;
    let (token, info) = tokens::create(auth.control().store(), new).await?;
    tracing::info!(name = %info.name, role = info.role.as_str(), "token created");
    let mut body = serde_json::to_value(&info).unwrap_or_default();
    body["token"] = Value::String(token);
    Ok((StatusCode::CREATED, Json(body)))
}

async fn list(State(auth): State<Arc<Auth>>) -> Result<Json<Value>, AuthError> {
    let items = tokens::list(auth.control().store())?;
    Ok(Json(json!({ "items": items })))
}

async fn revoke(
    State(auth): State<Arc<Auth>>,
    Path(name): Path<String>,
) -> Result<Json<Value>, AuthError> {
    tokens::revoke(auth.control().store(), &name).await?;
    tracing::info!(%name, "token revoked");
    Ok(Json(json!({ "revoked": name })))
}
