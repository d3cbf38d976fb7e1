//! Natter's wire edge: the types generated from `proto/natter/v1/*.proto`,
//! their conversion to and from the domain, the encoding the stores use for
//! content and events, page tokens, and the one place gRPC statuses are
//! built.
//!
//! Services convert at their boundary with [`convert`] and report failures
//! through [`status`]; nothing past the boundary sees a prost or tonic type.
//!
//! Clients are built from a channel (`GatewayServiceClient::new(channel)`):
//! there are no `connect(endpoint)` constructors, because one would clash
//! with the client method of `GatewayService.Connect`.

pub mod codec;
pub mod convert;
pub mod page;
pub mod status;
#[cfg(test)]
mod testdata;

/// The `natter.v1` package: messages, and a client and server per service.
// Generated code: its lints are prost's and tonic's business, not ours.
#[allow(clippy::all, unreachable_pub, missing_debug_implementations)]
pub mod v1 {
    tonic::include_proto!("natter.v1");
    include!(concat!(env!("OUT_DIR"), "/natter.v1.serde.rs"));
}

/// `natter.bus.v1`: what the services exchange over NATS. Internal.
// Generated code: its lints are prost's business, not ours.
#[allow(clippy::all, unreachable_pub, missing_debug_implementations)]
pub mod bus {
    pub mod v1 {
        tonic::include_proto!("natter.bus.v1");
    }
}

/// The encoded `FileDescriptorSet` of `natter.v1` and its imports, with
/// source comments, for `tonic-reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/natter_descriptor.bin"));

#[cfg(test)]
mod tests {
    use prost::Message as _;
    use prost_types::FileDescriptorSet;

    use super::*;

    #[test]
    fn descriptor_set_holds_every_service_with_its_docs_and_imports() {
        let set = FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).unwrap();
        let services: Vec<String> = set
            .file
            .iter()
            .filter(|file| file.package() == "natter.v1")
            .flat_map(|file| file.service.iter().map(|s| s.name().to_owned()))
            .collect();
        for service in [
            "GatewayService",
            "ConversationService",
            "SyncService",
            "FanoutService",
        ] {
            assert!(services.iter().any(|s| s == service), "{services:?}");
        }
        assert!(
            set.file
                .iter()
                .any(|file| file.name() == "google/protobuf/timestamp.proto")
        );
        assert!(set.file.iter().all(|file| file.source_code_info.is_some()));
    }

    #[test]
    fn reflection_accepts_the_descriptor_set() {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .build_v1()
            .unwrap();
    }

    #[test]
    fn service_names_match_the_contract() {
        use v1::conversation_service_server::SERVICE_NAME as CONVERSATION;
        use v1::fanout_service_server::SERVICE_NAME as FANOUT;
        use v1::gateway_service_server::SERVICE_NAME as GATEWAY;
        use v1::sync_service_server::SERVICE_NAME as SYNC;
        assert_eq!(GATEWAY, "natter.v1.GatewayService");
        assert_eq!(CONVERSATION, "natter.v1.ConversationService");
        assert_eq!(SYNC, "natter.v1.SyncService");
        assert_eq!(FANOUT, "natter.v1.FanoutService");
    }
}
