//! Token keys from the settings: bound to tenants, and read again from
//! their files so that a rotation takes effect without a restart.

use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use natter_server::Settings;
use natter_server::settings::TenantKeys;

// Test-only Ed25519 pairs: PKCS#8 PEM, and the public key as JWKS `x`.
const OLD_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIBCFF/Nw+tiBvqdMYH/fGLHBpMYM2VL29AzVX9PBG514
-----END PRIVATE KEY-----";
const OLD_PUBLIC_X: &str = "vOS3wL8115aWGErXmuFIOyb1g53yryFdBiPGNHvU93U";
const NEW_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIJtgka7vU0suca+56zMkl/IIvZw2SXDBQQ3eXHuhnkmc
-----END PRIVATE KEY-----";
const NEW_PUBLIC_X: &str = "8TKeBEEBRylZ8o0z3qdpCyv4Wi6XTNvk5Mo-z6W35aQ";

fn jwks(x: &str) -> String {
    serde_json::json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": x, "alg": "EdDSA"}]})
        .to_string()
}

fn token(private: &str, tenant: &str) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
        + 600;
    let claims = serde_json::json!({"sub": "crm", "tid": tenant, "role": "service", "exp": exp});
    let key = EncodingKey::from_ed_pem(private.as_bytes()).expect("a key");
    jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), &claims, &key).expect("a token")
}

#[tokio::test]
async fn tenant_keys_come_from_their_files_and_rotate_without_a_restart() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let acme = dir.path().join("acme.json");
    std::fs::write(&acme, jwks(OLD_PUBLIC_X)).expect("write the keys");
    let mut settings = Settings::default();
    settings.auth.tenants.insert(
        "acme".into(),
        TenantKeys {
            jwks_file: acme.clone(),
        },
    );
    settings.auth.keys_reload_seconds = 1;
    settings.validate().expect("tenant keys alone are enough");

    let infra_verifier = std::sync::Arc::new(settings.verifier().expect("the keys load"));
    let reload = tokio::spawn(natter_server::settings::reload_keys(
        settings.clone(),
        std::sync::Arc::downgrade(&infra_verifier),
    ));
    let verifier = infra_verifier.as_ref();
    assert!(verifier.verify(&token(OLD_PRIVATE, "acme")).is_ok());
    let refused = verifier.verify(&token(OLD_PRIVATE, "globex")).unwrap_err();
    assert_eq!(
        refused.reason(),
        "TOKEN_CLAIM_INVALID",
        "no keys for globex"
    );

    // The business rotates its key: the file changes in place.
    std::fs::write(&acme, jwks(NEW_PUBLIC_X)).expect("rotate");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while verifier.verify(&token(NEW_PRIVATE, "acme")).is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new key never took effect"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        verifier.verify(&token(OLD_PRIVATE, "acme")).is_err(),
        "the old key is gone"
    );

    // A broken file leaves the last good keys in place.
    std::fs::write(&acme, "not json").expect("break the file");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(verifier.verify(&token(NEW_PRIVATE, "acme")).is_ok());

    drop(infra_verifier);
    tokio::time::timeout(Duration::from_secs(5), reload)
        .await
        .expect("the reload stops once the verifier is gone")
        .expect("the reload task");
}
