use std::time::Duration;

use natter_server::GrpcServer;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// A server on a port of its own, a channel to it, what stops it (with a
/// grace period of 500 ms) and its task.
async fn serving() -> (
    Channel,
    oneshot::Sender<()>,
    JoinHandle<Result<(), tonic::transport::Error>>,
) {
    serving_with(|server| server).await
}

/// [`serving`], the server configured by `configure`.
async fn serving_with(
    configure: impl FnOnce(GrpcServer) -> GrpcServer,
) -> (
    Channel,
    oneshot::Sender<()>,
    JoinHandle<Result<(), tonic::transport::Error>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
    let addr = listener.local_addr().expect("its address");
    let server =
        configure(GrpcServer::new(tonic_health::pb::FILE_DESCRIPTOR_SET).expect("a server"));
    let (stop, stopped) = oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve(
        listener,
        async {
            let _ = stopped.await;
        },
        Duration::from_millis(500),
    ));
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("an endpoint")
        .connect()
        .await
        .expect("a connection");
    (channel, stop, serving)
}

#[tokio::test]
async fn health_turns_not_serving_on_shutdown_and_the_server_exits_within_grace() {
    let (channel, stop, serving) = serving().await;
    let mut client = HealthClient::new(channel);
    let mut watch = client
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.status(), ServingStatus::Serving);

    stop.send(()).unwrap();
    let next = watch.message().await.unwrap().unwrap();
    assert_eq!(next.status(), ServingStatus::NotServing);

    // The open watch stream would keep the server alive forever; the grace
    // period bounds it.
    tokio::time::timeout(Duration::from_secs(5), serving)
        .await
        .expect("server exits within its grace period")
        .unwrap()
        .unwrap();
}

/// What grpcurl does to print an error's details: asks reflection for the
/// file that defines each detail's type, then for every file it imports,
/// and decodes them all.
#[tokio::test]
async fn reflection_describes_the_error_details_with_their_imports() {
    use prost::Message as _;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let (channel, stop, serving) = serving().await;
    let mut client = ServerReflectionClient::new(channel);
    let mut ask = async |request: MessageRequest| {
        let mut answers = client
            .server_reflection_info(tokio_stream::iter([ServerReflectionRequest {
                host: String::new(),
                message_request: Some(request),
            }]))
            .await
            .unwrap()
            .into_inner();
        match answers.message().await.unwrap().unwrap().message_response {
            Some(MessageResponse::FileDescriptorResponse(files)) => files
                .file_descriptor_proto
                .iter()
                .map(|bytes| prost_types::FileDescriptorProto::decode(bytes.as_slice()).unwrap())
                .collect::<Vec<_>>(),
            other => panic!("no file for {other:?}"),
        }
    };

    for symbol in ["google.rpc.ErrorInfo", "google.rpc.BadRequest"] {
        let mut files = ask(MessageRequest::FileContainingSymbol(symbol.to_owned())).await;
        let name = symbol.rsplit('.').next().unwrap();
        assert!(
            files[0].message_type.iter().any(|m| m.name() == name),
            "{symbol} is not in {:?}",
            files[0].name()
        );
        let mut seen = Vec::new();
        while let Some(file) = files.pop() {
            seen.push(file.name().to_owned());
            for import in &file.dependency {
                if !seen.contains(import) {
                    files.extend(ask(MessageRequest::FileByFilename(import.clone())).await);
                }
            }
        }
        assert!(
            seen.iter().any(|f| f == "google/protobuf/duration.proto"),
            "{seen:?}"
        );
    }

    stop.send(()).unwrap();
    serving.await.unwrap().unwrap();
}

/// A connection older than the maximum age is closed, its open stream
/// ending after the grace period, so that clients connect again, maybe to
/// another replica.
#[tokio::test]
async fn connections_are_closed_at_their_maximum_age() {
    let (channel, stop, serving) =
        serving_with(|server| server.max_connection_age(Some(Duration::from_secs(1)))).await;
    let mut watch = HealthClient::new(channel)
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        watch.message().await.unwrap().unwrap().status(),
        ServingStatus::Serving
    );
    let started = std::time::Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(Some(_)) = watch.message().await {}
    })
    .await;
    assert!(
        ended.is_ok(),
        "the stream outlived its connection's maximum age"
    );
    // Age (1 s) plus the grace period (0.5 s), give or take.
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    stop.send(()).unwrap();
    serving.await.unwrap().unwrap();
}
