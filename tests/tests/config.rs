//! Bad settings stop a service before it binds anything, with exit code 64
//! and a message naming the key.

use std::process::Command;

fn start_with(binary: &str, settings: &str) -> (Option<i32>, String) {
    let dir = std::env::temp_dir().join(natter_testkit::unique_name("config"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("natter.toml");
    std::fs::write(&file, settings).expect("settings file");
    let output = Command::new(natter_testkit::binary(binary))
        .arg("--config")
        .arg(&file)
        .output()
        .expect("run the binary");
    std::fs::remove_dir_all(&dir).expect("clean up");
    (
        output.status.code(),
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
