//! JWTs as credentials (Knative's OIDC model): a request may carry a JWT instead of a Ferry
//! token. It is verified against Ferry's own key (tokens Ferry mints for its deliveries) or
//! the configured issuer's keys (`--jwks`, a JWKS file or URL; RS256 or ES256), its `aud`
//! must name what it is sent to (a broker's audience, or `--jwt-api-audience` for the control
//! API), `exp` and `nbf` are honoured (30 s of leeway), and `iss` must match `--jwt-issuer`
//! when given. The identity is the `sub` claim; on the control API, the claims
//! `ferry.dev/role` and `ferry.dev/namespace` give its role and namespace (no role claim: a
//! producer).

use super::issuer::SigningKey;
use super::{Identity, Role, Via};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use std::sync::RwLock;
use std::time::Duration;

/// Leeway for `exp` and `nbf`, for clocks a little apart.
const LEEWAY_SECS: u64 = 30;
/// How often the JWKS is read again (a file) or fetched again (a URL).
pub const REFRESH_FILE: Duration = Duration::from_secs(10);
pub const REFRESH_URL: Duration = Duration::from_secs(300);

/// `--jwks`, `--jwt-issuer`, `--jwt-api-audience`.
#[derive(Clone, Debug, Default)]
pub struct JwtConfig {
    /// A JWKS file, or an http(s) URL to fetch it from.
    pub jwks: Option<String>,
    /// The `iss` the configured issuer's tokens must carry.
    pub issuer: Option<String>,
    /// The `aud` of tokens for the control API.
    pub api_audience: String,
}

/// Whether `token` is shaped like a JWT (three base64url parts, a JSON header).
pub fn looks_like_jwt(token: &str) -> bool {
    token.starts_with("eyJ") && token.matches('.').count() == 2
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    #[serde(default, rename = "ferry.dev/role")]
    role: Option<String>,
    #[serde(default, rename = "ferry.dev/namespace")]
    namespace: Option<String>,
}

/// The configured issuer's keys.
#[derive(Default)]
pub(crate) struct Keys {
    set: RwLock<Option<JwkSet>>,
}

impl Keys {
    /// Reads (a file) or fetches (a URL) the JWKS; on failure the keys in use stay.
    pub(crate) async fn refresh(&self, source: &str) -> Result<usize, String> {
        let text = if source.starts_with("http://") || source.starts_with("https://") {
            let resp = reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .map_err(|e| e.to_string())?
                .get(source)
                .send()
                .await
                .map_err(|e| format!("fetching {source}: {e}"))?;
            if !resp.status().is_success() {
                return Err(format!("fetching {source}: {}", resp.status()));
            }
            resp.text()
                .await
                .map_err(|e| format!("fetching {source}: {e}"))?
        } else {
            tokio::fs::read_to_string(source)
                .await
                .map_err(|e| format!("reading {source}: {e}"))?
        };
        let set: JwkSet =
            serde_json::from_str(&text).map_err(|e| format!("{source}: not a JWKS: {e}"))?;
        let n = set.keys.len();
        if let Ok(mut s) = self.set.write() {
            *s = Some(set);
        }
        Ok(n)
    }

    /// The key for a token's `kid` (or the only key, for a token without one).
    fn find(&self, kid: Option<&str>, alg: Algorithm) -> Result<DecodingKey, String> {
        let guard = self
            .set
            .read()
            .map_err(|_| "keys lock poisoned".to_string())?;
        let set = guard
            .as_ref()
            .ok_or("no issuer keys are configured (--jwks)")?;
        let jwk = match kid {
            Some(kid) => set
                .find(kid)
                .ok_or_else(|| format!("no key {kid:?} in the issuer's JWKS"))?,
            None if set.keys.len() == 1 => &set.keys[0],
            None => return Err("the token names no key (kid) and the JWKS has several".into()),
        };
        if let Some(a) = jwk.common.key_algorithm {
            if a.to_string() != format!("{alg:?}") {
                return Err(format!("key {kid:?} is for {a}, the token is {alg:?}"));
            }
        }
        DecodingKey::from_jwk(jwk).map_err(|e| format!("key {kid:?}: {e}"))
    }
}

/// Verifies `token` for `audience`: Ferry's own tokens (signed with `ferry_key`; never for the
/// control API, `api`) and the configured issuer's.
pub(crate) fn verify(
    token: &str,
    audience: &str,
    config: &JwtConfig,
    keys: &Keys,
    ferry_key: Option<&SigningKey>,
    api: bool,
) -> Result<Identity, String> {
    let header = jsonwebtoken::decode_header(token).map_err(|e| format!("not a valid JWT: {e}"))?;
    if !matches!(header.alg, Algorithm::RS256 | Algorithm::ES256) {
        return Err(format!(
            "JWTs signed with {:?} are not accepted (RS256, ES256)",
            header.alg
        ));
    }
    let mut validation = Validation::new(header.alg);
    validation.set_audience(&[audience]);
    validation.validate_nbf = true;
    validation.leeway = LEEWAY_SECS;
    validation.set_required_spec_claims(&["exp", "aud", "sub"]);
    let own = ferry_key.filter(|k| header.kid.as_deref() == Some(k.kid.as_str()));
    let key = match own {
        // Ferry mints tokens for deliveries only: one presented to the control API was
        // handed to a subscriber, not given to a person. Its `iss` is not checked: the key
        // is the trust, and nodes may name the issuer differently.
        Some(_) if api => {
            return Err(
                "tokens Ferry signs for deliveries are not accepted by the control API".into(),
            )
        }
        Some(k) => k.decoding.clone(),
        None => {
            if let Some(iss) = &config.issuer {
                validation.set_issuer(&[iss]);
            }
            keys.find(header.kid.as_deref(), header.alg)?
        }
    };
    let data = jsonwebtoken::decode::<Claims>(token, &key, &validation).map_err(|e| {
        use jsonwebtoken::errors::ErrorKind;
        match e.kind() {
            ErrorKind::ExpiredSignature => "the JWT has expired".to_string(),
            ErrorKind::ImmatureSignature => "the JWT is not valid yet (nbf)".to_string(),
            ErrorKind::InvalidAudience => format!("the JWT is not for this audience ({audience})"),
            ErrorKind::InvalidIssuer => "the JWT's issuer is not trusted".to_string(),
            ErrorKind::InvalidSignature => "the JWT's signature does not verify".to_string(),
            _ => format!("the JWT is not valid: {e}"),
        }
    })?;
    let claims = data.claims;
    let role = match (api, claims.role.as_deref()) {
        (true, Some(r)) => r
            .parse::<Role>()
            .map_err(|e| format!("claim ferry.dev/role: {e}"))?,
        _ => Role::Producer,
    };
    if role == Role::Admin && claims.namespace.is_some() {
        return Err("an admin JWT cannot be limited to a namespace".into());
    }
    Ok(Identity {
        subject: claims.sub,
        role,
        namespace: if api { claims.namespace } else { None },
        via: Via::Jwt,
    })
}
