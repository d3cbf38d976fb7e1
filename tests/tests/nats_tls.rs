//! A service reaches NATS over TLS with mutual authentication: it trusts
//! the servers its CA signed (`bus.tls_ca_file`) and shows its own
//! certificate (`bus.tls_cert_file`, `bus.tls_key_file`). Without the CA
//! it does not start, naming the bus. The NATS server is one of the test's
//! own, TLS only and verifying clients; the certificates are made here.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A CA, and a certificate for `localhost` and 127.0.0.1 it signed, in
/// `dir` as `ca.pem`, `<name>.pem` and `<name>-key.pem`, for each name.
fn certificates(dir: &Path, names: &[&str]) {
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca =
        CertifiedIssuer::self_signed(ca, KeyPair::generate().expect("a CA key")).expect("a CA");
    std::fs::write(dir.join("ca.pem"), ca.pem()).expect("write the CA");
    for name in names {
        let key = KeyPair::generate().expect("a key");
        let params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .expect("params");
        let cert = params.signed_by(&key, &ca).expect("a certificate");
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).expect("write");
        std::fs::write(dir.join(format!("{name}-key.pem")), key.serialize_pem()).expect("write");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_talks_to_nats_over_mutual_tls() {
    let dir = tempfile_dir();
    certificates(&dir, &["server", "client"]);
    let port = natter_testkit::free_port().port();
    let _nats = Killed(
        Command::new(natter_testkit::nats_server_binary())
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(dir.join("js"))
            .arg("--tlsverify")
            .arg("--tlscert")
            .arg(dir.join("server.pem"))
            .arg("--tlskey")
            .arg(dir.join("server-key.pem"))
            .arg("--tlscacert")
            .arg(dir.join("ca.pem"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server"),
    );
    let grpc = natter_testkit::free_port();
    let settings = |tls: &str| {
        format!(
            "[auth]\nhs256_secret = \"a-secret-that-is-at-least-32-bytes-long\"\n\n\
             [bus]\nnats_url = \"tls://127.0.0.1:{port}\"\npartitions = 2\n{tls}\n\
             [fanout]\ngrpc_addr = \"{grpc}\"\n"
        )
    };
    let with_tls = format!(
        "tls_ca_file = {:?}\ntls_cert_file = {:?}\ntls_key_file = {:?}\n",
        dir.join("ca.pem"),
        dir.join("client.pem"),
        dir.join("client-key.pem"),
    );

    // Without the CA the server's certificate is not trusted.
    let config = dir.join("plain.toml");
    std::fs::write(&config, settings("")).expect("settings");
    let refused = fanout(&config)
        .stdout(Stdio::piped())
        .output()
        .expect("run natter-fanout");
    assert!(
        !refused.status.success(),
        "started without trusting the server"
    );
    let log = String::from_utf8_lossy(&refused.stdout);
    assert!(log.contains("cannot connect to NATS"), "{log}");

    let config = dir.join("tls.toml");
    std::fs::write(&config, settings(&with_tls)).expect("settings");
    let _fanout = Killed(
        fanout(&config)
            .stdout(Stdio::null())
            .spawn()
            .expect("start"),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let probe = || {
        Command::new(natter_testkit::binary("natter"))
            .args(["health", &grpc.to_string(), "--timeout-seconds", "2"])
            .output()
            .expect("run natter health")
    };
    while !probe().status.success() {
        assert!(
            Instant::now() < deadline,
            "the service never served over TLS to NATS"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    std::fs::remove_dir_all(&dir).expect("clean up");
}

fn fanout(config: &Path) -> Command {
    let mut command = Command::new(natter_testkit::binary("natter-fanout"));
    command.arg("--config").arg(config);
    command
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(natter_testkit::unique_name("nats-tls"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}
