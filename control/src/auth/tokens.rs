//! API tokens: `ferry.<name>.<secret>`, the secret 32 random bytes (base64url). The store
//! keeps, under `!Token//<name>` (a key the control plane does not take for a resource), the
//! token's role, namespace, expiry and the SHA-256 of its secret — never the token. A secret
//! of 256 random bits needs no slow hash: no dictionary can guess it.

use super::{AuthError, Identity, Refusal, Role};
use crate::resource::{dns_label_problem, Metadata, Resource};
use crate::store::ResourceStore;
use base64::Engine;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::Path;

/// The store's kind for tokens (its `!` keeps it out of the resources).
const KIND: &str = "!Token";
const PREFIX: &str = "ferry.";
/// Shortest admin token accepted from `--admin-token-file`.
pub const MIN_GIVEN_LEN: usize = 16;

/// A token to make.
#[derive(Clone, Debug, Deserialize)]
pub struct NewToken {
    pub name: String,
    pub role: Role,
    #[serde(default)]
    pub namespace: Option<String>,
    /// RFC 3339; none: never expires.
    #[serde(default)]
    pub expires: Option<DateTime<Utc>>,
}

/// A token as listed: everything but the secret.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenInfo {
    pub name: String,
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<DateTime<Utc>>,
    pub created: DateTime<Utc>,
}

/// What the store keeps.
#[derive(Serialize, Deserialize)]
struct Stored {
    #[serde(flatten)]
    info: TokenInfo,
    /// Hex SHA-256 of the secret.
    sha256: String,
}

pub(crate) fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Makes a token; returns it (the only time it is seen) and what is stored of it.
pub async fn create(
    store: &dyn ResourceStore,
    new: NewToken,
) -> Result<(String, TokenInfo), AuthError> {
    if let Some(p) = dns_label_problem(&new.name) {
        return Err(AuthError::BadRequest(format!("name {:?}: {p}", new.name)));
    }
    if let Some(ns) = &new.namespace {
        if let Some(p) = dns_label_problem(ns) {
            return Err(AuthError::BadRequest(format!("namespace {ns:?}: {p}")));
        }
        if new.role == Role::Admin {
            return Err(AuthError::BadRequest(
                "an admin token cannot be limited to a namespace (use editor)".into(),
            ));
        }
    }
    let now = Utc::now();
    if new.expires.is_some_and(|e| e <= now) {
        return Err(AuthError::BadRequest(
            "expires: must be in the future".into(),
        ));
    }
    if store.get(KIND, "", &new.name)?.is_some() {
        return Err(AuthError::Exists(new.name));
    }
    let secret_bytes: [u8; 32] = rand::random();
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret_bytes);
    let info = TokenInfo {
        name: new.name.clone(),
        role: new.role,
        namespace: new.namespace,
        expires: new.expires,
        created: now,
    };
    let stored = Stored {
        info: info.clone(),
        sha256: hex(&digest(&secret)),
    };
    let spec = serde_json::to_value(&stored)
        .map_err(|e| AuthError::BadRequest(format!("encoding the token: {e}")))?;
    store
        .put(&Resource {
            api_version: "ferry.dev/v1".into(),
            kind: KIND.into(),
            metadata: Metadata {
                name: new.name.clone(),
                namespace: String::new(),
                labels: Default::default(),
                annotations: Default::default(),
                uid: String::new(),
                generation: 1,
                creation_timestamp: now.to_rfc3339(),
                generate_name: None,
                generated: false,
            },
            spec,
            status: serde_json::Value::Null,
        })
        .await?;
    Ok((format!("{PREFIX}{}.{secret}", new.name), info))
}

fn decode(r: Resource) -> Option<Stored> {
    serde_json::from_value(r.spec).ok()
}

/// Every token, by name.
pub fn list(store: &dyn ResourceStore) -> Result<Vec<TokenInfo>, AuthError> {
    Ok(store
        .list(KIND, None)?
        .into_iter()
        .filter_map(decode)
        .map(|s| s.info)
        .collect())
}

/// Deletes a token; later requests with it are refused.
pub async fn revoke(store: &dyn ResourceStore, name: &str) -> Result<(), AuthError> {
    if store.get(KIND, "", name)?.is_none() {
        return Err(AuthError::NotFound(name.to_string()));
    }
    store.delete(KIND, "", name).await?;
    Ok(())
}

/// The identity `token` stands for at `now`.
pub(crate) fn verify(
    store: &dyn ResourceStore,
    token: &str,
    now: DateTime<Utc>,
) -> Result<Identity, Refusal> {
    let unknown = || Refusal::Unauthenticated("the token is not valid (unknown or revoked)".into());
    let (name, secret) = token
        .strip_prefix(PREFIX)
        .and_then(|rest| rest.split_once('.'))
        .ok_or_else(unknown)?;
    if dns_label_problem(name).is_some() {
        return Err(unknown());
    }
    let stored = match store.get(KIND, "", name) {
        Ok(Some(r)) => decode(r).ok_or_else(unknown)?,
        Ok(None) => return Err(unknown()),
        Err(e) => {
            tracing::error!(error = %e, "reading a token failed");
            return Err(Refusal::Unavailable(
                "tokens cannot be read right now; retry".into(),
            ));
        }
    };
    // Compared in constant time, though a digest's prefix tells an attacker nothing useful.
    let given = hex(&digest(secret));
    let same = given.len() == stored.sha256.len()
        && given
            .bytes()
            .zip(stored.sha256.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if !same {
        return Err(unknown());
    }
    if stored.info.expires.is_some_and(|e| e <= now) {
        return Err(Refusal::Unauthenticated(format!(
            "token {name:?} has expired"
        )));
    }
    Ok(Identity {
        subject: stored.info.name,
        role: stored.info.role,
        namespace: stored.info.namespace,
        via: super::Via::Token,
    })
}

/// Writes `token` to `path`, readable by the owner only (0600), replacing what was there.
pub(crate) fn write_private(path: &Path, token: &str) -> Result<(), AuthError> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let err = |source| AuthError::File {
        path: path.display().to_string(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(err)?;
    // An existing file keeps its mode on open: make it 0600 too.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(err)?;
    file.write_all(format!("{token}\n").as_bytes())
        .map_err(err)?;
    file.sync_all().map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::RocksStore;

    fn new(name: &str, role: Role, namespace: Option<&str>) -> NewToken {
        NewToken {
            name: name.into(),
            role,
            namespace: namespace.map(str::to_string),
            expires: None,
        }
    }

    #[tokio::test]
    async fn a_token_verifies_until_revoked_and_only_its_hash_is_stored() {
        let dir = tempfile::tempdir().unwrap();
        let store = RocksStore::open(dir.path()).unwrap();
        let (token, info) = create(&store, new("shop", Role::Producer, Some("shop")))
            .await
            .unwrap();
        assert_eq!(info.namespace.as_deref(), Some("shop"));
        let id = verify(&store, &token, Utc::now()).unwrap();
        assert_eq!((id.subject.as_str(), id.role), ("shop", Role::Producer));
        let secret = token.rsplit('.').next().unwrap();
        let stored = store.get(KIND, "", "shop").unwrap().unwrap();
        assert!(!stored.spec.to_string().contains(secret));
        // Another secret under the same name is refused.
        assert!(verify(&store, "ferry.shop.AAAA", Utc::now()).is_err());
        assert!(matches!(
            create(&store, new("shop", Role::Viewer, None)).await,
            Err(AuthError::Exists(_))
        ));
        revoke(&store, "shop").await.unwrap();
        assert!(verify(&store, &token, Utc::now()).is_err());
        assert!(matches!(
            revoke(&store, "shop").await,
            Err(AuthError::NotFound(_))
        ));
    }

    #[tokio::test]
    async fn an_expired_token_is_refused_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let store = RocksStore::open(dir.path()).unwrap();
        let mut t = new("soon", Role::Viewer, None);
        t.expires = Some(Utc::now() + chrono::Duration::seconds(60));
        let (token, _) = create(&store, t).await.unwrap();
        assert!(verify(&store, &token, Utc::now()).is_ok());
        let later = Utc::now() + chrono::Duration::seconds(61);
        let err = verify(&store, &token, later).unwrap_err();
        assert!(
            matches!(&err, Refusal::Unauthenticated(m) if m.contains("expired")),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn bad_requests_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = RocksStore::open(dir.path()).unwrap();
        for bad in [
            new("Bad_Name", Role::Viewer, None),
            new("a", Role::Admin, Some("shop")),
            new("b", Role::Viewer, Some("-x")),
        ] {
            assert!(matches!(
                create(&store, bad).await,
                Err(AuthError::BadRequest(_))
            ));
        }
        assert!(list(&store).unwrap().is_empty());
    }
}
