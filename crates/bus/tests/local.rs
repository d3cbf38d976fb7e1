//! The conformance suite against the in-process bus, in memory and
//! persistent. In each mode all checks share one bus, as the services of
//! one process do; each opens it under a prefix of its own.

mod memory {
    use std::sync::LazyLock;

    use natter_bus::LocalBus;

    static BUS: LazyLock<LocalBus> =
        LazyLock::new(|| LocalBus::new("natter").expect("valid prefix"));

    async fn bus(prefix: &str) -> LocalBus {
        BUS.with_prefix(prefix).expect("valid prefix")
    }

    natter_bus::bus_conformance!(bus);
}

mod persistent {
    use std::sync::LazyLock;

    use natter_bus::LocalBus;
    use tempfile::TempDir;

    /// The bus and its directory, under the target directory's scratch
    /// space. A static is never dropped, so the directory stays behind
    /// there, as `cargo clean` expects.
    static BUS: LazyLock<(TempDir, LocalBus)> = LazyLock::new(|| {
        let dir = tempfile::Builder::new()
            .prefix("natter-bus-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .expect("temporary directory");
        let bus = LocalBus::open("natter", dir.path()).expect("open the bus");
        (dir, bus)
    });

    async fn bus(prefix: &str) -> LocalBus {
        BUS.1.with_prefix(prefix).expect("valid prefix")
    }

    natter_bus::bus_conformance!(bus);
}
