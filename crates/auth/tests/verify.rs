use jsonwebtoken::{Algorithm, EncodingKey, Header};
use natter_auth::{AuthError, Identity, Signer, Verifier};
use natter_core::{Role, TenantId, UserId};
use serde_json::json;

const SECRET: &[u8] = b"a-development-secret-of-32-bytes!!";

// A test-only Ed25519 key pair: the private key in PKCS#8 PEM, the public
// key as the JWKS `x` value.
const ED_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIBY1IacCS4jzvBW3bEJiksvXkaIczpNpbscip6KuA13Q
-----END PRIVATE KEY-----";
const ED_PUBLIC_X: &str = "JA-gZLVGrXO4mrz4EvB7hk_2TATofcPEfZ0YBUPH9eA";
// Another business's test-only pair.
const ED_OTHER_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIEWu1DauA0WhsR0uB/R/hcIHfe/zid22uSQ3K8+r1QPI
-----END PRIVATE KEY-----";
const ED_OTHER_PUBLIC_X: &str = "Zam7xcEVHyM7sCdgzPdw_z5GvOZspPvkAWd5ftnuHxA";

fn alice() -> Identity {
    Identity {
        tenant: TenantId::new("acme").expect("tenant"),
        user: UserId::new("alice").expect("user"),
        role: Role::Customer,
    }
}

fn far_future() -> u64 {
    4_000_000_000
}

#[test]
fn hs256_tokens_round_trip() {
    let token = Signer::hs256(SECRET).token(&alice(), 60).unwrap();
    assert_eq!(
        Verifier::hs256(SECRET).unwrap().verify(&token).unwrap(),
        alice()
    );
}

#[test]
fn expired_forged_and_garbage_tokens_are_refused() {
    let verifier = Verifier::hs256(SECRET).unwrap();
    let expired = Signer::hs256(SECRET)
        .token_expiring_at(&alice(), 1_000)
        .unwrap();
    assert_eq!(verifier.verify(&expired).unwrap_err(), AuthError::Expired);

    let forged = Signer::hs256(b"another-secret-that-is-32-bytes-long")
        .token(&alice(), 60)
        .unwrap();
    assert_eq!(
        verifier.verify(&forged).unwrap_err().reason(),
        "TOKEN_SIGNATURE_INVALID"
    );
    assert_eq!(
        verifier.verify("not.a.token").unwrap_err().reason(),
        "TOKEN_MALFORMED"
    );
}

#[test]
fn claims_are_validated() {
    let key = EncodingKey::from_secret(SECRET);
    let verifier = Verifier::hs256(SECRET).unwrap();
    let sign = |claims: serde_json::Value| {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key).unwrap()
    };
    let bad_role = sign(json!({"sub": "a", "tid": "acme", "role": "admin", "exp": far_future()}));
    assert!(matches!(
        verifier.verify(&bad_role).unwrap_err(),
        AuthError::BadClaim { claim: "role", .. }
    ));
    let no_tenant = sign(json!({"sub": "a", "role": "agent", "exp": far_future()}));
    assert_eq!(
        verifier.verify(&no_tenant).unwrap_err().reason(),
        "TOKEN_MALFORMED"
    );
    let spaced_user =
        sign(json!({"sub": "a b", "tid": "acme", "role": "agent", "exp": far_future()}));
    assert!(matches!(
        verifier.verify(&spaced_user).unwrap_err(),
        AuthError::BadClaim { claim: "sub", .. }
    ));
    // The desk's own user sends what only the desk may (payment requests):
    // no token may name it, whatever its role.
    for role in ["service", "agent", "customer"] {
        let desk = sign(json!({"sub": "desk", "tid": "acme", "role": role, "exp": far_future()}));
        assert!(matches!(
            verifier.verify(&desk).unwrap_err(),
            AuthError::BadClaim { claim: "sub", .. }
        ));
    }
}

#[test]
fn short_secrets_are_refused() {
    assert!(Verifier::hs256(b"short").is_err());
}

#[test]
fn eddsa_tokens_verify_against_a_jwks_and_other_algorithms_do_not() {
    let jwks = json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": ED_PUBLIC_X, "kid": "k1", "use": "sig", "alg": "EdDSA"}]});
    let verifier = Verifier::jwks(&jwks.to_string()).unwrap();
    let claims = json!({"sub": "alice", "tid": "acme", "role": "customer", "exp": far_future()});
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some("k1".into());
    let key = EncodingKey::from_ed_pem(ED_PRIVATE.as_bytes()).unwrap();
    let token = jsonwebtoken::encode(&header, &claims, &key).unwrap();
    assert_eq!(verifier.verify(&token).unwrap(), alice());

    header.kid = Some("k2".into());
    let unknown = jsonwebtoken::encode(&header, &claims, &key).unwrap();
    assert_eq!(
        verifier.verify(&unknown).unwrap_err(),
        AuthError::UnknownKey("k2".into())
    );

    // An HS256 token must not be accepted by a verifier of public keys.
    let hs = Signer::hs256(SECRET).token(&alice(), 60).unwrap();
    assert!(verifier.verify(&hs).is_err());
}

/// The install's policy: issuer, audience, not-before and how far ahead a
/// token may expire.
#[test]
fn the_policy_refuses_other_issuers_audiences_early_and_long_lived_tokens() {
    let key = EncodingKey::from_secret(SECRET);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let sign = |extra: serde_json::Value| {
        let mut claims =
            json!({"sub": "alice", "tid": "acme", "role": "customer", "exp": now + 600});
        for (k, v) in extra.as_object().unwrap() {
            claims[k] = v.clone();
        }
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key).unwrap()
    };
    let strict = Verifier::hs256(SECRET)
        .unwrap()
        .with_policy(natter_auth::Policy {
            issuer: Some("https://id.acme.example".into()),
            audience: Some("natter".into()),
            max_lifetime_seconds: Some(3600),
        });
    let claim_of = |e: AuthError| match e {
        AuthError::BadClaim { claim, .. } => claim,
        other => panic!("not a claim error: {other:?}"),
    };

    let good = sign(json!({"iss": "https://id.acme.example", "aud": ["crm", "natter"]}));
    let (identity, exp) = strict.verify_until(&good).unwrap();
    assert_eq!((identity, exp), (alice(), now + 600));

    for (token, claim) in [
        (
            sign(json!({"iss": "https://evil.example", "aud": "natter"})),
            "iss",
        ),
        (sign(json!({"aud": "natter"})), "iss"),
        (
            sign(json!({"iss": "https://id.acme.example", "aud": "other"})),
            "aud",
        ),
        (sign(json!({"iss": "https://id.acme.example"})), "aud"),
        (
            sign(json!({"iss": "https://id.acme.example", "aud": "natter", "nbf": now + 600})),
            "nbf",
        ),
        (
            sign(
                json!({"iss": "https://id.acme.example", "aud": "natter", "exp": now + 7 * 24 * 3600}),
            ),
            "exp",
        ),
    ] {
        assert_eq!(claim_of(strict.verify(&token).unwrap_err()), claim);
    }

    // Without a policy, none of those is asked for, but nbf still holds.
    let lax = Verifier::hs256(SECRET).unwrap();
    assert!(
        lax.verify(&sign(json!({"exp": now + 7 * 24 * 3600})))
            .is_ok()
    );
    assert_eq!(
        claim_of(lax.verify(&sign(json!({"nbf": now + 600}))).unwrap_err()),
        "nbf"
    );
}

/// Keys bound to a tenant sign for that tenant alone: one business cannot
/// mint tokens for another, nor for a tenant without keys when no keys
/// are shared. Replacing the keys (a rotation) takes effect at once.
#[test]
fn tenant_keys_sign_for_their_tenant_alone_and_rotate_in_place() {
    let jwks = |x: &str| {
        json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": x, "alg": "EdDSA"}]}).to_string()
    };
    let sign = |pem: &str, tenant: &str| {
        let claims = json!({"sub": "alice", "tid": tenant, "role": "service", "exp": far_future()});
        let key = EncodingKey::from_ed_pem(pem.as_bytes()).unwrap();
        jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), &claims, &key).unwrap()
    };
    let verifier = Verifier::tenants_only()
        .with_tenant_jwks("acme", &jwks(ED_PUBLIC_X))
        .unwrap()
        .with_tenant_jwks("globex", &jwks(ED_OTHER_PUBLIC_X))
        .unwrap();
    let tenant_of = |token: &str| verifier.verify(token).map(|i| i.tenant.to_string());

    assert_eq!(tenant_of(&sign(ED_PRIVATE, "acme")).unwrap(), "acme");
    assert_eq!(
        tenant_of(&sign(ED_OTHER_PRIVATE, "globex")).unwrap(),
        "globex"
    );
    // Globex's key minting for Acme, and anyone's for a tenant without keys.
    assert_eq!(
        tenant_of(&sign(ED_OTHER_PRIVATE, "acme"))
            .unwrap_err()
            .reason(),
        "TOKEN_SIGNATURE_INVALID"
    );
    assert_eq!(
        tenant_of(&sign(ED_PRIVATE, "initech"))
            .unwrap_err()
            .reason(),
        "TOKEN_CLAIM_INVALID"
    );

    // Acme rotates to Globex's pair (a stand-in for a new key).
    verifier.replace_keys(
        Verifier::tenants_only()
            .with_tenant_jwks("acme", &jwks(ED_OTHER_PUBLIC_X))
            .unwrap(),
    );
    assert_eq!(tenant_of(&sign(ED_OTHER_PRIVATE, "acme")).unwrap(), "acme");
    assert!(
        tenant_of(&sign(ED_PRIVATE, "acme")).is_err(),
        "the old key is gone"
    );
}
