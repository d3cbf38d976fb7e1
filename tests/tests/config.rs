//! Bad settings stop a service before it binds anything, with exit code 64
//! and a message naming the key; `natter config check` says so before a
//! deploy, and prints the effective settings without their secrets.

use std::process::Command;

fn start_with(binary: &str, settings: &str) -> (Option<i32>, String) {
    let (code, _, stderr) = run_with(binary, &[], settings);
    (code, stderr)
}

/// Runs `binary ARGS --config FILE` with `settings` in the file: its exit
/// code, stdout and stderr.
fn run_with(binary: &str, args: &[&str], settings: &str) -> (Option<i32>, String, String) {
    let dir = std::env::temp_dir().join(natter_testkit::unique_name("config"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("natter.toml");
    std::fs::write(&file, settings).expect("settings file");
    let output = Command::new(natter_testkit::binary(binary))
        .args(args)
        .arg("--config")
        .arg(&file)
        .output()
        .expect("run the binary");
    std::fs::remove_dir_all(&dir).expect("clean up");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn each_service_names_the_bad_key_and_exits_64() {
    let secret = "[auth]\nhs256_secret = \"a-secret-that-is-at-least-32-bytes-long\"\n";
    for binary in [
        "natter-gateway",
        "natter-storage",
        "natter-sync",
        "natter-fanout",
    ] {
        let (code, stderr) = start_with(binary, &format!("{secret}[bus]\npartitions = 0\n"));
        assert_eq!(code, Some(64), "{binary}: {stderr}");
        assert!(stderr.contains("bus.partitions"), "{binary}: {stderr}");
    }
    let (code, stderr) = start_with(
        "natter-gateway",
        &format!("{secret}[gateway]\nhttp_addr = \"nowhere\"\n"),
    );
    assert_eq!(code, Some(64));
    assert!(stderr.contains("gateway.http_addr"), "{stderr}");
    let (code, stderr) = start_with("natter-storage", "[auth]\nhs256_secret = \"short\"\n");
    assert_eq!(code, Some(64));
    assert!(stderr.contains("auth.hs256_secret"), "{stderr}");
    let (code, stderr) = start_with("natter-sync", "grace_period_seconds = \"soon\"\n");
    assert_eq!(code, Some(64));
    assert!(stderr.contains("grace_period_seconds"), "{stderr}");
}

#[test]
fn config_check_prints_the_effective_settings_without_secrets() {
    let settings = "[auth]\nhs256_secret = \"a-secret-that-is-at-least-32-bytes-long\"\n\
                    [bus]\nnats_url = \"nats://ann:pa55word@nats-0:4222,nats://t0ken@nats-1:4222\"\n\
                    partitions = 8\n";
    let (code, stdout, stderr) = run_with("natter", &["config", "check"], settings);
    assert_eq!(code, Some(0), "{stderr}");
    let printed: toml::Table = stdout.parse().expect("the settings print as TOML");
    assert_eq!(printed["bus"]["partitions"].as_integer(), Some(8));
    assert_eq!(
        printed["gateway"]["http_addr"].as_str(),
        Some("127.0.0.1:8080")
    );
    assert_eq!(printed["auth"]["hs256_secret"].as_str(), Some("<redacted>"));
    assert_eq!(
        printed["bus"]["nats_url"].as_str(),
        Some("nats://ann:<redacted>@nats-0:4222,nats://<redacted>@nats-1:4222")
    );
    for secret in ["at-least-32-bytes", "pa55word", "t0ken"] {
        assert!(
            !stdout.contains(secret) && !stderr.contains(secret),
            "{secret}"
        );
    }

    let (code, stdout, stderr) =
        run_with("natter", &["config", "check"], "[bus]\npartitions = 0\n");
    assert_eq!(code, Some(64), "{stderr}");
    assert!(
        stdout.is_empty() && stderr.contains("bus.partitions"),
        "{stderr}"
    );
}

#[test]
fn the_health_probe_fails_when_nothing_answers() {
    let addr = natter_testkit::free_port();
    let output = Command::new(natter_testkit::binary("natter"))
        .args(["health", &addr.to_string(), "--timeout-seconds", "2"])
        .output()
        .expect("run natter health");
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot connect"));
}
