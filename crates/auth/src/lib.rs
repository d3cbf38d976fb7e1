//! Who is calling. Devices and backends present a JWT whose claims name
//! the user (`sub`), the tenant (`tid`), the user's role (`role`) and an
//! expiry (`exp`). Development installs sign with a shared HS256 secret;
//! production installs verify RS256 or EdDSA signatures against the keys in
//! a JWKS file the business publishes, so Natter never holds a signing key.
//! A token not yet valid (`nbf`) is refused; so are, when the install says
//! so, one from another issuer (`iss`), for another audience (`aud`), or
//! one that expires further ahead than the install allows: a stolen token
//! is good for that long at most.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use natter_core::{DESK_USER, Role, TenantId, UserId};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// A verified caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub tenant: TenantId,
    pub user: UserId,
    pub role: Role,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("token is expired")]
    Expired,
    #[error("token signature or algorithm is not accepted: {0}")]
    BadSignature(String),
    #[error("token is malformed: {0}")]
    Malformed(String),
    #[error("token names key {0:?}, which is not in the key set")]
    UnknownKey(String),
    #[error("token claim `{claim}` is invalid: {reason}")]
    BadClaim { claim: &'static str, reason: String },
    #[error("cannot load keys: {0}")]
    Keys(String),
}

impl AuthError {
    /// A stable machine-readable reason for error details.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Expired => "TOKEN_EXPIRED",
            AuthError::BadSignature(_) => "TOKEN_SIGNATURE_INVALID",
            AuthError::Malformed(_) => "TOKEN_MALFORMED",
            AuthError::UnknownKey(_) => "TOKEN_KEY_UNKNOWN",
            AuthError::BadClaim { .. } => "TOKEN_CLAIM_INVALID",
            AuthError::Keys(_) => "TOKEN_KEYS_UNAVAILABLE",
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    tid: String,
    role: String,
    exp: u64,
}

/// Verifies tokens against one HS256 secret or a JWKS key set shared by
/// every tenant, and against key sets bound to one tenant each: a token
/// for a tenant with keys of its own is verified with those alone, so one
/// business cannot mint tokens for another. The keys can be replaced
/// while the verifier is in use (rotation without a restart).
pub struct Verifier {
    ring: RwLock<Arc<KeyRing>>,
    leeway_seconds: u64,
    policy: Policy,
}

#[derive(Clone, Default)]
struct KeyRing {
    /// For tenants without keys of their own.
    shared: Option<Keys>,
    tenants: HashMap<String, Keys>,
}

/// Only the claim that picks the keys, read before the signature is.
#[derive(Deserialize)]
struct TenantClaim {
    tid: String,
}

/// What a token must say beyond a valid signature, as the install sets it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// The `iss` every token must carry, if any.
    pub issuer: Option<String>,
    /// An audience every token's `aud` must include, if any.
    pub audience: Option<String>,
    /// How far ahead a token may expire, in seconds, if limited.
    pub max_lifetime_seconds: Option<u64>,
}

#[derive(Clone)]
enum Keys {
    Secret(DecodingKey),
    /// By key id; a set with one key also verifies tokens without `kid`.
    Set(HashMap<String, (DecodingKey, Algorithm)>),
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ring = self.ring();
        let shared = match &ring.shared {
            None => "none".to_owned(),
            Some(Keys::Secret(_)) => "hs256 secret".to_owned(),
            Some(Keys::Set(set)) => format!("{} jwks keys", set.len()),
        };
        f.debug_struct("Verifier")
            .field("shared", &shared)
            .field("tenants", &ring.tenants.len())
            .finish()
    }
}

impl Verifier {
    /// Verifies HS256 tokens signed with `secret`.
    pub fn hs256(secret: &[u8]) -> Result<Self, AuthError> {
        if secret.len() < 32 {
            return Err(AuthError::Keys(
                "an HS256 secret must be at least 32 bytes".into(),
            ));
        }
        Ok(Self::with_shared(Some(Keys::Secret(
            DecodingKey::from_secret(secret),
        ))))
    }

    /// Verifies RS256 and EdDSA tokens against the keys of a JWKS document.
    pub fn jwks(document: &str) -> Result<Self, AuthError> {
        Ok(Self::with_shared(Some(key_set(document)?)))
    }

    /// No shared keys: only tenants given keys with
    /// [`with_tenant_jwks`](Self::with_tenant_jwks) are served.
    pub fn tenants_only() -> Self {
        Self::with_shared(None)
    }

    fn with_shared(shared: Option<Keys>) -> Self {
        Self {
            ring: RwLock::new(Arc::new(KeyRing {
                shared,
                tenants: HashMap::new(),
            })),
            leeway_seconds: 30,
            policy: Policy::default(),
        }
    }

    /// Tokens for `tenant` are verified against this JWKS document's keys,
    /// and no others.
    pub fn with_tenant_jwks(mut self, tenant: &str, document: &str) -> Result<Self, AuthError> {
        let keys =
            key_set(document).map_err(|e| AuthError::Keys(format!("tenant {tenant}: {e}")))?;
        let ring = self
            .ring
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Arc::make_mut(ring).tenants.insert(tenant.to_owned(), keys);
        Ok(self)
    }

    /// Takes `other`'s keys, keeping this verifier's policy: for keys
    /// reloaded from their files.
    pub fn replace_keys(&self, other: Verifier) {
        *self
            .ring
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = other.ring();
    }

    fn ring(&self) -> Arc<KeyRing> {
        self.ring
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// The keys of a JWKS document.
fn key_set(document: &str) -> Result<Keys, AuthError> {
    let set: JwkSet = serde_json::from_str(document).map_err(|e| AuthError::Keys(e.to_string()))?;
    let mut keys = HashMap::new();
    for (i, jwk) in set.keys.iter().enumerate() {
        let algorithm = match &jwk.algorithm {
            jsonwebtoken::jwk::AlgorithmParameters::RSA(_) => Algorithm::RS256,
            jsonwebtoken::jwk::AlgorithmParameters::OctetKeyPair(_) => Algorithm::EdDSA,
            _ => {
                return Err(AuthError::Keys(format!(
                    "key {i}: only RSA (RS256) and OKP (EdDSA) keys are accepted"
                )));
            }
        };
        let key =
            DecodingKey::from_jwk(jwk).map_err(|e| AuthError::Keys(format!("key {i}: {e}")))?;
        let kid = jwk.common.key_id.clone().unwrap_or_default();
        keys.insert(kid, (key, algorithm));
    }
    if keys.is_empty() {
        return Err(AuthError::Keys("the key set has no keys".into()));
    }
    Ok(Keys::Set(keys))
}

impl Verifier {
    /// Refuses tokens that do not meet `policy`.
    #[must_use]
    pub fn with_policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }

    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        self.verify_until(token).map(|(identity, _)| identity)
    }

    /// The caller and when its token expires (Unix seconds): a session
    /// lasts no longer than its token.
    pub fn verify_until(&self, token: &str) -> Result<(Identity, u64), AuthError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| AuthError::Malformed(e.to_string()))?;
        let ring = self.ring();
        let tenant = jsonwebtoken::dangerous::insecure_decode_claims::<TenantClaim>(token)
            .map_err(|e| AuthError::Malformed(e.to_string()))?
            .tid;
        let keys = ring
            .tenants
            .get(&tenant)
            .or(ring.shared.as_ref())
            .ok_or_else(|| AuthError::BadClaim {
                claim: "tid",
                reason: "no keys verify tokens of this tenant".into(),
            })?;
        let (key, algorithm) = match keys {
            Keys::Secret(key) => (key, Algorithm::HS256),
            Keys::Set(set) => {
                let kid = header.kid.clone().unwrap_or_default();
                let only = (set.len() == 1 && kid.is_empty())
                    .then(|| set.values().next())
                    .flatten();
                let (key, algorithm) = only
                    .or_else(|| set.get(&kid))
                    .ok_or(AuthError::UnknownKey(kid))?;
                (key, *algorithm)
            }
        };
        if header.alg != algorithm {
            return Err(AuthError::BadSignature(format!(
                "expected {algorithm:?}, token says {:?}",
                header.alg
            )));
        }
        let mut validation = Validation::new(algorithm);
        validation.leeway = self.leeway_seconds;
        validation.validate_nbf = true;
        let mut required = vec!["exp", "sub"];
        match &self.policy.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        if let Some(issuer) = &self.policy.issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        let data = jsonwebtoken::decode::<Claims>(token, key, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            let bad = |claim, reason: &str| AuthError::BadClaim {
                claim,
                reason: reason.to_owned(),
            };
            match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::ImmatureSignature => bad("nbf", "the token is not valid yet"),
                ErrorKind::InvalidIssuer => bad("iss", "not the issuer this install trusts"),
                ErrorKind::InvalidAudience => bad("aud", "not for this install"),
                ErrorKind::MissingRequiredClaim(claim) if claim == "iss" => {
                    bad("iss", "is required")
                }
                ErrorKind::MissingRequiredClaim(claim) if claim == "aud" => {
                    bad("aud", "is required")
                }
                ErrorKind::InvalidSignature | ErrorKind::InvalidAlgorithm => {
                    AuthError::BadSignature(e.to_string())
                }
                _ => AuthError::Malformed(e.to_string()),
            }
        })?;
        let exp = data.claims.exp;
        if let Some(max) = self.policy.max_lifetime_seconds
            && exp > unix_now()?.saturating_add(max + self.leeway_seconds)
        {
            return Err(AuthError::BadClaim {
                claim: "exp",
                reason: format!("expires more than {max} s ahead; ask for a shorter-lived token"),
            });
        }
        Ok((identity(data.claims)?, exp))
    }
}

fn identity(claims: Claims) -> Result<Identity, AuthError> {
    let bad = |claim, reason: String| AuthError::BadClaim { claim, reason };
    if claims.sub == DESK_USER {
        return Err(bad("sub", format!("{DESK_USER:?} is the desk's own user")));
    }
    Ok(Identity {
        tenant: TenantId::new(claims.tid).map_err(|e| bad("tid", e.reason))?,
        user: UserId::new(claims.sub).map_err(|e| bad("sub", e.reason))?,
        role: Role::parse(&claims.role).map_err(|e| bad("role", e.reason))?,
    })
}

/// Mints HS256 tokens: for development installs and tests, and the
/// reference for how a business backend mints its own.
#[derive(Clone)]
pub struct Signer {
    key: EncodingKey,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(hs256)")
    }
}

impl Signer {
    pub fn hs256(secret: &[u8]) -> Self {
        Self {
            key: EncodingKey::from_secret(secret),
        }
    }

    /// A token for `identity` that expires `ttl_seconds` from now.
    pub fn token(&self, identity: &Identity, ttl_seconds: u64) -> Result<String, AuthError> {
        self.token_expiring_at(identity, unix_now()? + ttl_seconds)
    }

    /// A token for `identity` with an explicit `exp` (Unix seconds).
    pub fn token_expiring_at(&self, identity: &Identity, exp: u64) -> Result<String, AuthError> {
        let claims = Claims {
            sub: identity.user.to_string(),
            tid: identity.tenant.to_string(),
            role: identity.role.as_str().to_owned(),
            exp,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.key)
            .map_err(|e| AuthError::Keys(e.to_string()))
    }
}

fn unix_now() -> Result<u64, AuthError> {
    Ok(SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|e| AuthError::Keys(e.to_string()))?
        .as_secs())
}
