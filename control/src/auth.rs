//! Who may do what (`ferry serve --auth tokens`).
//!
//! A request carries `Authorization: Bearer <token>`; the token names an [`Identity`]: a
//! subject (the token's name), a [`Role`] and optionally the one namespace it is limited to.
//! Each request is classified into an [`Action`] in a [`Scope`] (the control API by its path,
//! the ingress by the broker it posts to) and the role decides:
//!
//! | role | read resources | event contents (`tail`, dead letters, logs) | apply/delete, replay/purge | post events | tokens |
//! |---|---|---|---|---|---|
//! | `admin` | yes | yes | yes | yes | yes |
//! | `editor` | yes | yes | yes | yes | no |
//! | `viewer` | yes | no | no | no | no |
//! | `producer` | brokers only (their address) | no | no | yes | no |
//!
//! A token limited to a namespace is refused anything outside it, including lists of every
//! namespace (`-A`) and `/metrics`. `/healthz` and `/readyz` need no token.
//!
//! - [`tokens`]: tokens made, listed and revoked through the API, stored hashed.
//! - [`guard`]: the middleware that answers 401 and 403 (counted, logged without the token).
//! - [`api`]: the tokens' routes under `/api/v1/tokens`.

pub mod api;
pub mod guard;
pub mod issuer;
pub mod jwt;
pub mod tokens;

use crate::plane::ControlPlane;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;

pub use guard::{guard, Guard, Listener};

/// `--auth`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Every request is allowed (the quick start on loopback).
    #[default]
    None,
    /// Every request needs a token (`/healthz` and `/readyz` excepted).
    Tokens,
}

impl std::str::FromStr for AuthMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(Self::None),
            "tokens" => Ok(Self::Tokens),
            _ => Err(format!("{s:?}: use none or tokens")),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Editor,
    Viewer,
    Producer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Editor => "editor",
            Role::Viewer => "viewer",
            Role::Producer => "producer",
        }
    }

    fn allows(self, action: Action) -> bool {
        use Action::*;
        match self {
            Role::Admin => true,
            Role::Editor => !matches!(action, Administer),
            Role::Viewer => matches!(action, Discover | Read | ReadBroker),
            Role::Producer => matches!(action, Discover | ReadBroker | Produce),
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "admin" => Ok(Self::Admin),
            "editor" => Ok(Self::Editor),
            "viewer" => Ok(Self::Viewer),
            "producer" => Ok(Self::Producer),
            _ => Err(format!("{s:?}: use admin, editor, viewer or producer")),
        }
    }
}

/// What a request does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// The resource types (`api-resources`).
    Discover,
    /// Resources, their status, metrics.
    Read,
    /// A broker (its address): what a producer needs to send.
    ReadBroker,
    /// Event contents: a broker's events, dead letters, logs.
    ReadContents,
    /// Apply, delete, replay, purge.
    Write,
    /// Post events to a broker or sink.
    Produce,
    /// Tokens, and anything not classified.
    Administer,
}

impl Action {
    fn describe(self) -> &'static str {
        match self {
            Action::Discover => "list resource types",
            Action::Read => "read resources",
            Action::ReadBroker => "read brokers",
            Action::ReadContents => "read event contents",
            Action::Write => "change resources",
            Action::Produce => "send events",
            Action::Administer => "administer Ferry",
        }
    }
}

/// Where an action applies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope<'a> {
    /// Every namespace, or none in particular (`-A`, `/metrics`, tokens).
    Cluster,
    Namespace(&'a str),
}

/// What a request's credentials were.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// A Ferry token (or the admin token given by file).
    Token,
    /// A JWT: Ferry's own (a delivery) or the configured issuer's.
    Jwt,
}

/// Who sent a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The token's name, or the JWT's `sub`.
    pub subject: String,
    pub role: Role,
    /// The only namespace this identity may act in, if limited.
    pub namespace: Option<String>,
    pub via: Via,
}

impl Identity {
    /// Whether this identity may do `action` in `scope`; the refusal says why.
    pub fn check(&self, action: Action, scope: &Scope<'_>) -> Result<(), String> {
        self.check_role(action)?;
        match (&self.namespace, scope) {
            (None, _) => Ok(()),
            (Some(own), Scope::Namespace(ns)) if own == ns => Ok(()),
            (Some(own), Scope::Namespace(ns)) => Err(format!(
                "{} is limited to namespace {own} and may not {} in namespace {ns}",
                self.describe(),
                action.describe()
            )),
            (Some(own), Scope::Cluster) => Err(format!(
                "{} is limited to namespace {own} and may not {} across namespaces",
                self.describe(),
                action.describe()
            )),
        }
    }

    /// Whether this identity's role allows `action` anywhere.
    pub fn check_role(&self, action: Action) -> Result<(), String> {
        if self.role.allows(action) {
            return Ok(());
        }
        Err(format!(
            "{} (role {}) may not {}",
            self.describe(),
            self.role.as_str(),
            action.describe()
        ))
    }

    fn describe(&self) -> String {
        match self.via {
            Via::Token => format!("token {:?}", self.subject),
            Via::Jwt => format!("JWT subject {:?}", self.subject),
        }
    }

    /// The namespace this identity comes from, for `allow-same-namespace`: a token's
    /// namespace (`None`: a token of every namespace), a JWT's from a subject
    /// `system:serviceaccount:NAMESPACE:NAME` (Kubernetes' and Ferry's own senders).
    pub fn home(&self) -> Home<'_> {
        match (self.via, &self.namespace) {
            (Via::Token, None) => Home::Everywhere,
            (Via::Token, Some(ns)) => Home::In(ns),
            (Via::Jwt, _) => self
                .subject
                .strip_prefix("system:serviceaccount:")
                .and_then(|rest| rest.split(':').next())
                .map_or(Home::Nowhere, Home::In),
        }
    }
}

/// Where an identity belongs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Home<'a> {
    Everywhere,
    In(&'a str),
    Nowhere,
}

/// The audience of an addressable (Knative's form: `group/kind/namespace/name`, kind in lower
/// case): a token sent to it must name it in `aud`.
pub fn audience(group: &str, kind: &str, namespace: &str, name: &str) -> String {
    format!("{group}/{}/{namespace}/{name}", kind.to_ascii_lowercase())
}

/// The subject a Ferry resource sends as (its deliveries' tokens, EventPolicies' `from.ref`):
/// `system:serviceaccount:NAMESPACE:ferry-KIND-NAME`, kind in lower case.
pub fn subject_of(kind: &str, namespace: &str, name: &str) -> String {
    format!(
        "system:serviceaccount:{namespace}:ferry-{}-{name}",
        kind.to_ascii_lowercase()
    )
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("{0}")]
    BadRequest(String),
    #[error("token {0:?} exists: revoke it first")]
    Exists(String),
    #[error("token {0:?} not found")]
    NotFound(String),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("{path}: {source}")]
    File {
        path: String,
        source: std::io::Error,
    },
}

/// Why a request's credentials were not accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No, bad, unknown, revoked or expired credentials: 401.
    Unauthenticated(String),
    /// The credentials could not be checked now (the token store failed): 503.
    Unavailable(String),
}

impl From<String> for Refusal {
    fn from(s: String) -> Self {
        Refusal::Unauthenticated(s)
    }
}

/// How the server authenticates.
#[derive(Clone, Debug, Default)]
pub struct AuthConfig {
    pub mode: AuthMode,
    /// The admin token is this file's contents (`--admin-token-file`), instead of one Ferry
    /// makes.
    pub admin_token_file: Option<PathBuf>,
    /// JWTs of another issuer.
    pub jwt: jwt::JwtConfig,
    /// Ferry's own `iss` (`--oidc-issuer`).
    pub issuer: String,
}

/// The server's authenticator: the mode, the tokens (in the resource store), the metric of
/// refusals.
pub struct Auth {
    mode: AuthMode,
    control: Arc<ControlPlane>,
    /// SHA-256 of the admin token given by file, if one was.
    file_admin: Option<[u8; 32]>,
    refused: prometheus::IntCounterVec,
    jwt: jwt::JwtConfig,
    keys: jwt::Keys,
    issuer: issuer::Issuer,
}

impl Auth {
    /// Reads `--admin-token-file` (if given) and registers `ferry_auth_refused_total`.
    pub fn new(
        config: &AuthConfig,
        control: Arc<ControlPlane>,
        registry: &prometheus::Registry,
    ) -> Result<Arc<Self>, AuthError> {
        let file_admin = match &config.admin_token_file {
            None => None,
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| AuthError::File {
                    path: path.display().to_string(),
                    source,
                })?;
                let token = text.trim();
                if token.len() < tokens::MIN_GIVEN_LEN {
                    return Err(AuthError::BadRequest(format!(
                        "{}: an admin token must be at least {} characters",
                        path.display(),
                        tokens::MIN_GIVEN_LEN
                    )));
                }
                Some(tokens::digest(token))
            }
        };
        let refused = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "ferry_auth_refused_total",
                "Requests refused: 401 (unauthenticated) or 403 (forbidden), by listener",
            ),
            &["listener", "reason"],
        )?;
        registry.register(Box::new(refused.clone()))?;
        Ok(Arc::new(Self {
            mode: config.mode,
            control,
            file_admin,
            refused,
            jwt: config.jwt.clone(),
            keys: jwt::Keys::default(),
            issuer: issuer::Issuer::new(config.issuer.clone()),
        }))
    }

    /// Reads or fetches the configured issuer's keys (`--jwks`), at start.
    pub async fn load_jwks(&self) -> Result<(), String> {
        match &self.jwt.jwks {
            None => Ok(()),
            Some(source) => self.keys.refresh(source).await.map(|_| ()),
        }
    }

    /// Reads or fetches the issuer's keys again every so often until `stop` (a failure keeps
    /// the keys in use and is logged).
    pub async fn refresh_jwks(self: Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        let Some(source) = self.jwt.jwks.clone() else {
            return;
        };
        let every = if source.starts_with("http") {
            jwt::REFRESH_URL
        } else {
            jwt::REFRESH_FILE
        };
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            if let Err(e) = self.keys.refresh(&source).await {
                tracing::warn!(error = %e, "the issuer's keys were not refreshed");
            }
        }
    }

    /// Ferry's own issuer (`iss` of the tokens its deliveries carry).
    pub fn issuer_name(&self) -> &str {
        &self.issuer.name
    }

    /// `/.well-known/jwks.json`.
    pub fn jwks(&self) -> Result<serde_json::Value, String> {
        self.issuer.jwks(self.control.store())
    }

    /// The `aud` of JWTs for the control API.
    pub fn api_audience(&self) -> &str {
        &self.jwt.api_audience
    }

    pub fn mode(&self) -> AuthMode {
        self.mode
    }

    pub(crate) fn control(&self) -> &Arc<ControlPlane> {
        &self.control
    }

    /// The identity a bearer token stands for; the error says why not (never the token).
    pub fn authenticate(
        &self,
        token: &str,
        audience: &str,
        api: bool,
    ) -> Result<Identity, Refusal> {
        if let Some(admin) = &self.file_admin {
            if tokens::digest(token.trim()) == *admin {
                return Ok(Identity {
                    subject: "admin".into(),
                    role: Role::Admin,
                    namespace: None,
                    via: Via::Token,
                });
            }
        }
        if jwt::looks_like_jwt(token) {
            // A store that cannot be read is not a bad token: 503, not 401.
            let own = self
                .issuer
                .key(self.control.store())
                .map_err(Refusal::Unavailable)?;
            return jwt::verify(token, audience, &self.jwt, &self.keys, own.as_deref(), api)
                .map_err(Refusal::Unauthenticated);
        }
        tokens::verify(self.control.store(), token, chrono::Utc::now())
    }

    /// With auth on, no admin token given by file and no token stored yet: makes the admin
    /// token and writes it to `<data_dir>/admin-token` (mode 0600). Returns that path.
    pub async fn bootstrap(
        &self,
        data_dir: &std::path::Path,
    ) -> Result<Option<PathBuf>, AuthError> {
        if self.mode != AuthMode::Tokens {
            return Ok(None);
        }
        self.issuer.ensure_key(self.control.store()).await?;
        if self.file_admin.is_some() {
            return Ok(None);
        }
        if !tokens::list(self.control.store())?.is_empty() {
            return Ok(None);
        }
        let (token, _) = tokens::create(
            self.control.store(),
            tokens::NewToken {
                name: "admin".into(),
                role: Role::Admin,
                namespace: None,
                expires: None,
            },
        )
        .await?;
        let path = data_dir.join("admin-token");
        tokens::write_private(&path, &token)?;
        Ok(Some(path))
    }

    /// Counts (the caller logs) a refusal.
    pub fn count_refusal(&self, listener: Listener, reason: &str) {
        self.refused
            .with_label_values(&[listener.as_str(), reason])
            .inc();
    }
}

/// Deliveries' tokens: minted by Ferry's issuer.
impl dispatcher::outbound::TokenSource for Auth {
    fn token(&self, subject: &str, audience: &str) -> Result<String, String> {
        self.issuer.mint(self.control.store(), subject, audience)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(role: Role, namespace: Option<&str>) -> Identity {
        Identity {
            subject: "t".into(),
            role,
            namespace: namespace.map(str::to_string),
            via: Via::Token,
        }
    }

    #[test]
    fn roles_allow_what_the_table_says() {
        use Action::*;
        let all = [
            Discover,
            Read,
            ReadBroker,
            ReadContents,
            Write,
            Produce,
            Administer,
        ];
        let allowed = |role| {
            all.iter()
                .filter(|a| id(role, None).check(**a, &Scope::Cluster).is_ok())
                .copied()
                .collect::<Vec<_>>()
        };
        assert_eq!(allowed(Role::Admin), all);
        assert_eq!(
            allowed(Role::Editor),
            [Discover, Read, ReadBroker, ReadContents, Write, Produce]
        );
        assert_eq!(allowed(Role::Viewer), [Discover, Read, ReadBroker]);
        assert_eq!(allowed(Role::Producer), [Discover, ReadBroker, Produce]);
    }

    #[test]
    fn a_namespaced_identity_stays_in_its_namespace() {
        let shop = id(Role::Editor, Some("shop"));
        assert!(shop.check(Action::Write, &Scope::Namespace("shop")).is_ok());
        let other = shop
            .check(Action::Write, &Scope::Namespace("default"))
            .unwrap_err();
        assert!(other.contains("limited to namespace shop"), "{other}");
        assert!(shop.check(Action::Read, &Scope::Cluster).is_err());
        let role = id(Role::Viewer, None)
            .check(Action::ReadContents, &Scope::Namespace("x"))
            .unwrap_err();
        assert!(role.contains("role viewer"), "{role}");
    }
}
