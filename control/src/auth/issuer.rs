//! Ferry as an OIDC issuer: deliveries to a destination with an `audience` carry a short-lived
//! JWT (ES256) naming the sending resource, signed by Ferry's own key, so a subscriber can
//! verify that Ferry sent it — and Ferry's own ingress accepts those tokens from other nodes
//! and from itself (a PingSource's events to a broker). The public key is served at
//! `/.well-known/jwks.json`, discovery at `/.well-known/openid-configuration`.
//!
//! The key is made on the first start and kept in the resource store (`!SigningKey//ferry`),
//! so every node of a cluster signs and verifies with the same one.

use super::AuthError;
use crate::resource::{Metadata, Resource};
use crate::store::ResourceStore;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const KIND: &str = "!SigningKey";

/// A minted token's key id, subject and audience.
type MintKey = (String, String, String);
const NAME: &str = "ferry";
/// How long the signing key is used before the store is looked at again (a key another node
/// made at the same first start replaces this node's within this long).
const KEY_RECHECK: Duration = Duration::from_secs(10);
/// How long a minted token is valid.
const TOKEN_LIFETIME_SECS: i64 = 300;
/// A cached token is used again while it has at least this long left.
const REUSE_MARGIN_SECS: i64 = 60;

/// What the store keeps: the PKCS#8 private key and its key id.
#[derive(Serialize, Deserialize)]
struct Stored {
    kid: String,
    pkcs8: String,
}

/// The signing key, ready to sign and verify.
pub(crate) struct SigningKey {
    pub kid: String,
    encoding: EncodingKey,
    pub decoding: DecodingKey,
    /// The public key as a JWK.
    jwk: Value,
}

impl SigningKey {
    fn from_stored(s: &Stored) -> Result<Self, String> {
        let pkcs8 = URL_SAFE_NO_PAD
            .decode(&s.pkcs8)
            .map_err(|e| format!("signing key: {e}"))?;
        let rng = ring::rand::SystemRandom::new();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &pkcs8, &rng)
            .map_err(|e| format!("signing key: {e}"))?;
        // The uncompressed point: 0x04, X (32 bytes), Y (32 bytes).
        let point = pair.public_key().as_ref();
        if point.len() != 65 {
            return Err("signing key: not a P-256 public key".into());
        }
        let x = URL_SAFE_NO_PAD.encode(&point[1..33]);
        let y = URL_SAFE_NO_PAD.encode(&point[33..65]);
        let decoding =
            DecodingKey::from_ec_components(&x, &y).map_err(|e| format!("signing key: {e}"))?;
        Ok(Self {
            kid: s.kid.clone(),
            encoding: EncodingKey::from_ec_der(&pkcs8),
            decoding,
            jwk: json!({"kty": "EC", "crv": "P-256", "x": x, "y": y, "kid": s.kid,
                        "alg": "ES256", "use": "sig"}),
        })
    }
}

/// The issuer: its name (`iss`), its key, the tokens it minted lately.
pub struct Issuer {
    pub(crate) name: String,
    /// The key and when the store was last looked at for it.
    key: Mutex<Option<(Arc<SigningKey>, Instant)>>,
    /// By key id, subject and audience: a token of a replaced key is not handed out again.
    minted: Mutex<HashMap<MintKey, (String, i64)>>,
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    iat: i64,
    nbf: i64,
    exp: i64,
}

impl Issuer {
    pub(crate) fn new(name: String) -> Self {
        Self {
            name,
            key: Mutex::new(None),
            minted: Mutex::new(HashMap::new()),
        }
    }

    /// Makes the signing key if the store has none.
    pub(crate) async fn ensure_key(&self, store: &dyn ResourceStore) -> Result<(), AuthError> {
        if store.get(KIND, "", NAME)?.is_some() {
            return Ok(());
        }
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|e| AuthError::BadRequest(format!("making the signing key: {e}")))?;
        let kid: [u8; 9] = rand::random();
        let stored = Stored {
            kid: URL_SAFE_NO_PAD.encode(kid),
            pkcs8: URL_SAFE_NO_PAD.encode(pkcs8.as_ref()),
        };
        let spec = serde_json::to_value(&stored)
            .map_err(|e| AuthError::BadRequest(format!("encoding the signing key: {e}")))?;
        store
            .put(&Resource {
                api_version: "ferry.dev/v1".into(),
                kind: KIND.into(),
                metadata: Metadata {
                    name: NAME.into(),
                    namespace: String::new(),
                    labels: Default::default(),
                    annotations: Default::default(),
                    uid: String::new(),
                    generation: 1,
                    creation_timestamp: chrono::Utc::now().to_rfc3339(),
                    generate_name: None,
                    generated: false,
                },
                spec,
                status: Value::Null,
            })
            .await?;
        Ok(())
    }

    /// The key in the store (another node may have made it first: the store's wins), looked
    /// up again at most every [`KEY_RECHECK`]; `None` while no key is made (auth off). An
    /// error: the store could not be read.
    pub(crate) fn key(&self, store: &dyn ResourceStore) -> Result<Option<Arc<SigningKey>>, String> {
        let mut cached = self.key.lock().map_err(|_| "signing key lock poisoned")?;
        if let Some((k, checked)) = cached.as_ref() {
            if checked.elapsed() < KEY_RECHECK {
                return Ok(Some(k.clone()));
            }
        }
        let Some(record) = store.get(KIND, "", NAME).map_err(|e| e.to_string())? else {
            return Ok(None);
        };
        let stored: Stored =
            serde_json::from_value(record.spec).map_err(|e| format!("signing key: {e}"))?;
        let key = match cached.as_ref() {
            Some((k, _)) if k.kid == stored.kid => k.clone(),
            _ => Arc::new(SigningKey::from_stored(&stored)?),
        };
        *cached = Some((key.clone(), Instant::now()));
        Ok(Some(key))
    }

    fn made_key(&self, store: &dyn ResourceStore) -> Result<Arc<SigningKey>, String> {
        self.key(store)?
            .ok_or_else(|| "Ferry's signing key is not made yet".to_string())
    }

    /// A token saying `subject` sends to `audience`, valid five minutes (reused while a
    /// minute is left).
    pub(crate) fn mint(
        &self,
        store: &dyn ResourceStore,
        subject: &str,
        audience: &str,
    ) -> Result<String, String> {
        let now = chrono::Utc::now().timestamp();
        let key = self.made_key(store)?;
        let cache_key = (key.kid.clone(), subject.to_string(), audience.to_string());
        if let Ok(minted) = self.minted.lock() {
            if let Some((token, exp)) = minted.get(&cache_key) {
                if exp - now >= REUSE_MARGIN_SECS {
                    return Ok(token.clone());
                }
            }
        }
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(key.kid.clone());
        let exp = now + TOKEN_LIFETIME_SECS;
        let claims = Claims {
            iss: &self.name,
            sub: subject,
            aud: audience,
            iat: now,
            nbf: now,
            exp,
        };
        let token = jsonwebtoken::encode(&header, &claims, &key.encoding)
            .map_err(|e| format!("signing a token: {e}"))?;
        if let Ok(mut minted) = self.minted.lock() {
            // Bounded: entries are per (sender, destination) pair; old ones go when it grows.
            if minted.len() > 10_000 {
                minted.retain(|_, (_, e)| *e - now >= REUSE_MARGIN_SECS);
            }
            minted.insert(cache_key, (token.clone(), exp));
        }
        Ok(token)
    }

    /// `/.well-known/jwks.json`.
    pub(crate) fn jwks(&self, store: &dyn ResourceStore) -> Result<Value, String> {
        let key = self.made_key(store)?;
        Ok(json!({ "keys": [key.jwk] }))
    }
}
