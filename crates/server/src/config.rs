//! Config layering: compiled-in defaults, then a TOML file, then `NATTER_*`
//! environment variables (`__` separates nested keys, so
//! `NATTER_GATEWAY__HTTP_ADDR` sets `gateway.http_addr`). Secrets may come
//! from files: a key `x_file` is read into `x` by the service that owns it.

use std::path::Path;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::value::Value;
use serde::Serialize;
use serde::de::DeserializeOwned;
use thiserror::Error;

/// The exit code for a bad configuration (`EX_CONFIG` is 78, but sysexits'
/// `EX_USAGE`, 64, is what operators grep for in orchestrators' events).
pub const EXIT_BAD_CONFIG: i32 = 64;

#[derive(Debug, Error)]
pub enum ConfigError {
    /// A key has a value of the wrong shape, or fails validation.
    #[error("bad config key `{key}`: {message}")]
    Key { key: String, message: String },
    /// The config file named on the command line cannot be read.
    #[error("cannot read config file {path}: {message}")]
    File { path: String, message: String },
}

impl ConfigError {
    pub fn key(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Key {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// Loads `T` from its defaults, the optional TOML file and the environment.
pub fn load_config<T>(file: Option<&Path>) -> Result<T, ConfigError>
where
    T: Serialize + DeserializeOwned + Default,
{
    let mut figment = Figment::from(Serialized::defaults(T::default()));
    if let Some(path) = file {
        if !path.is_file() {
            return Err(ConfigError::File {
                path: path.display().to_string(),
                message: "no such file".into(),
            });
        }
        figment = figment.merge(Toml::file_exact(path));
    }
    figment.merge(settings_env::<T>()).extract().map_err(|e| {
        let key = e.path.join(".");
        let key = if key.is_empty() { "<root>".into() } else { key };
        ConfigError::Key {
            key,
            message: e.kind.to_string(),
        }
    })
}

/// `NATTER_*` variables that name a setting. Others with the prefix (the
/// config file's path, scripts' own variables) are not settings; a typo
/// inside a known section still fails as an unknown key.
fn settings_env<T: Serialize + Default>() -> Env {
    let sections: Vec<String> = match Value::serialize(T::default()) {
        Ok(Value::Dict(_, dict)) => dict.into_keys().collect(),
        _ => Vec::new(),
    };
    Env::prefixed("NATTER_").split("__").filter(move |key| {
        let top = key.as_str().split('.').next().unwrap_or_default();
        sections
            .iter()
            .any(|section| section.eq_ignore_ascii_case(top))
    })
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
    struct Sample {
        grace_seconds: u64,
        nested: Nested,
    }

    #[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
    struct Nested {
        addr: String,
    }

    #[test]
    fn file_values_override_defaults_and_bad_values_name_their_key() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(file, "grace_seconds = 7\n[nested]\naddr = \"127.0.0.1:1\"").unwrap();
        let loaded: Sample = load_config(Some(file.path())).unwrap();
        assert_eq!(loaded.grace_seconds, 7);
        assert_eq!(loaded.nested.addr, "127.0.0.1:1");

        let mut bad = tempfile::NamedTempFile::new().unwrap();
        writeln!(bad, "grace_seconds = \"soon\"").unwrap();
        match load_config::<Sample>(Some(bad.path())) {
            Err(ConfigError::Key { key, .. }) => assert_eq!(key, "grace_seconds"),
            other => panic!("expected a key error, got {other:?}"),
        }
    }

    #[test]
    fn the_example_settings_file_is_complete_and_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/natter.toml");
        let settings: crate::Settings = load_config(Some(&path)).unwrap();
        assert_eq!(settings.bus.replicas, 3);
        assert_eq!(settings.gateway.http_addr, "0.0.0.0:8080");
        // Validation needs the JWKS file itself; everything else must pass.
        let mut without_keys = settings;
        without_keys.auth.jwks_file = Default::default();
        without_keys.auth.hs256_secret = "x".repeat(32).into();
        // So do Stripe's secrets: here from files of our own.
        let dir = tempfile::tempdir().unwrap();
        let (key, secrets) = (dir.path().join("key"), dir.path().join("secrets"));
        std::fs::write(&key, "sk_test_123\n").unwrap();
        std::fs::write(
            &secrets,
            "whsec_first_secret_0123\n\nwhsec_second_secret_012\n",
        )
        .unwrap();
        without_keys.desk.stripe.api_key_file = key;
        without_keys.desk.stripe.webhook_secrets_file = secrets;
        without_keys.validate().unwrap();
        let stripe = without_keys.stripe().unwrap().expect("a key is set");
        assert_eq!(stripe.api_key, "sk_test_123");
        assert_eq!(stripe.webhook_secrets.len(), 2);
        without_keys.desk.stripe.api_key = "sk_test_456".into();
        assert!(without_keys.validate().is_err(), "a key and a key file");
        // The settings print without their secrets.
        without_keys.bus.nats_url = "nats://ann:pa55word@nats-0:4222".into();
        let printed = format!("{without_keys:?}");
        assert!(!printed.contains(&"x".repeat(32)) && !printed.contains("sk_test_456"));
        assert!(
            printed.contains("nats://ann:<redacted>@nats-0:4222"),
            "{printed}"
        );
        assert!(printed.contains("<redacted>"), "{printed}");
    }

    #[test]
    #[allow(
        clippy::result_large_err,
        reason = "figment::Jail fixes the closure's error type"
    )]
    fn environment_overrides_known_keys_and_leaves_other_variables_alone() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("NATTER_BUS__PARTITIONS", "4");
            jail.set_env("NATTER_CONFIG", "/elsewhere.toml");
            jail.set_env("NATTER_INFRA_DIR", "/tmp/infra");
            let settings: crate::Settings = load_config(None).unwrap();
            assert_eq!(settings.bus.partitions, 4);

            jail.set_env("NATTER_BUS__PARTITONS", "4");
            match load_config::<crate::Settings>(None) {
                Err(ConfigError::Key { key, .. }) => assert_eq!(key, "bus.partitons"),
                other => panic!("a typo in a known section must fail, got {other:?}"),
            }
            Ok(())
        });
    }

    #[test]
    fn a_missing_file_is_an_error() {
        let err = load_config::<Sample>(Some(Path::new("/nonexistent/natter.toml"))).unwrap_err();
        assert!(matches!(err, ConfigError::File { .. }));
    }
}
