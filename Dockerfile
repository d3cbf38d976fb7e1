# The one Natter image: every service is `natter <service>` (the Helm chart
# in deploy/helm/natter passes the service and --config). Build it from the
# repository's root: docker build -t natter .

# The build: the release binary, with the workspace's locked dependencies.
# protoc comes vendored with the build, the widget and console are
# embedded: nothing else is needed.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p natter --bin natter

# The runtime: glibc and nothing else (no shell, no package manager), as
# the unprivileged user 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/natter /usr/local/bin/natter
USER 65532:65532
# gRPC: gateway 7100, storage 7200, sync 7300, fanout 7400, desk 7500;
# HTTP: gateway 8080 (WebSocket, widget), desk 7580 (payment webhooks);
# metrics 9090.
EXPOSE 7100 7200 7300 7400 7500 7580 8080 9090
ENTRYPOINT ["/usr/local/bin/natter"]
# Without arguments: the commands (`natter gateway --config FILE`, ...).
CMD ["--help"]
