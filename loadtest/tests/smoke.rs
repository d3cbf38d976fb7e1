//! A few seconds of load on a real `natter dev`, through the real
//! `natter-load` binary: messages must really be delivered, and none lost.
//! Runs in `cargo test --workspace` (hence in `scripts/test` and CI), with
//! the binaries built beside the test executable.

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The secret `natter dev` signs and verifies with when none is configured.
const DEV_SECRET: &str = "natter-dev-secret-not-for-production-use";

/// How long `natter dev` may take to serve.
const START_DEADLINE: Duration = Duration::from_secs(60);

/// A `natter dev` on free ports with its own data directory, killed and
/// removed on drop.
struct Server {
    child: Child,
    dir: PathBuf,
    ws: String,
    storage: SocketAddr,
}

impl Server {
    fn start() -> Server {
        static SERVERS: AtomicU16 = AtomicU16::new(0);
        let dir = std::env::temp_dir().join(format!(
            "natter-load-smoke-{}-{}",
            std::process::id(),
            SERVERS.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create the data directory");
        let [http, grpc, storage, sync, fanout, desk] =
            std::array::from_fn(|_| natter_testkit::free_port());
        let log = std::fs::File::create(dir.join("natter.log")).expect("create the log");
        let child = Command::new(natter_testkit::binary("natter"))
            .args(["dev", "--demo-addr", "off", "--data-dir"])
            .arg(dir.join("data"))
            .env("NATTER_GATEWAY__HTTP_ADDR", http.to_string())
            .env("NATTER_GATEWAY__GRPC_ADDR", grpc.to_string())
            .env("NATTER_STORAGE__GRPC_ADDR", storage.to_string())
            .env("NATTER_SYNC__GRPC_ADDR", sync.to_string())
            .env("NATTER_FANOUT__GRPC_ADDR", fanout.to_string())
            .env("NATTER_DESK__GRPC_ADDR", desk.to_string())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::from(log.try_clone().expect("clone the log")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start natter dev");
        let mut server = Server {
            child,
            dir,
            ws: format!("ws://{http}/v1/connect"),
            storage,
        };
        let deadline = Instant::now() + START_DEADLINE;
        for addr in [http, grpc, storage, sync, fanout, desk] {
            while TcpStream::connect(addr).is_err() {
                if let Ok(Some(status)) = server.child.try_wait() {
                    panic!("natter dev exited with {status}:\n{}", server.log());
                }
                assert!(
                    Instant::now() < deadline,
                    "natter dev is not serving on {addr} after {START_DEADLINE:?}:\n{}",
                    server.log()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        server
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("natter.log")).unwrap_or_default()
    }

    /// Runs natter-load with the target options and `args`; its JSON report.
    fn load(&self, args: &[&str]) -> (Output, Value) {
        let output = Command::new(env!("CARGO_BIN_EXE_natter-load"))
            .args(args)
            .args(["--ws", &self.ws, "--storage", &self.storage.to_string()])
            .args(["--json", "--quiet"])
            .env("NATTER_LOAD_SECRET", DEV_SECRET)
            .output()
            .expect("run natter-load");
        let report = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
            panic!(
                "natter-load printed no report ({e}); stderr:\n{}\nserver log:\n{}",
                String::from_utf8_lossy(&output.stderr),
                self.log()
            )
        });
        (output, report)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn number(report: &Value, key: &str) -> u64 {
    report[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no {key} in the report: {report}"))
}

#[test]
fn a_few_seconds_of_traffic_are_delivered_without_loss() {
    let server = Server::start();
    let (output, report) = server.load(&[
        "traffic",
        "--topology",
        "mix:4",
        "--conversations",
        "4",
        "--rate",
        "30",
        "--ramp",
        "1s",
        "--warmup",
        "1s",
        "--duration",
        "3s",
        "--slo-lost",
        "0",
        "--slo-errors",
        "0",
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{report}\n{stderr}");
    assert_eq!(report["scenario"], "traffic");
    // Two pairs and two groups of four: 1 + 3 recipients, alternating.
    assert_eq!(number(&report, "devices"), 12);
    let planned = number(&report, "planned");
    assert!(planned >= 80, "{report}");
    assert_eq!(number(&report, "acked"), planned, "{report}");
    assert_eq!(
        number(&report, "deliveries_planned"),
        2 * planned,
        "{report}"
    );
    assert_eq!(number(&report, "delivered"), 2 * planned, "{report}");
    assert_eq!(number(&report, "lost"), 0, "{report}");
    assert_eq!(number(&report, "duplicates"), 0, "{report}");
}

#[test]
fn a_returning_device_catches_up_and_an_objective_can_fail_the_run() {
    let server = Server::start();
    let (output, report) = server.load(&["catch-up", "--messages", "200", "--window", "16"]);
    assert!(output.status.success(), "{report}");
    assert_eq!(number(&report, "stored"), 200, "{report}");
    assert_eq!(number(&report, "caught_up"), 200, "{report}");
    assert_eq!(number(&report, "missing"), 0, "{report}");
    // No server catches up in a nanosecond: exit code 3, report printed.
    let (output, report) =
        server.load(&["catch-up", "--messages", "10", "--slo-time", "0.000000001"]);
    assert_eq!(output.status.code(), Some(3), "{report}");
    assert_eq!(number(&report, "caught_up"), 10, "{report}");
}
