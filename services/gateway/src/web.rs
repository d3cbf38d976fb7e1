//! The chat widget, served by the gateway so that a business's page needs
//! only the gateway's address: `GET /widget.js` on the HTTP port, beside
//! `/v1/connect`, which the widget derives from its own URL.
//!
//! The script is compiled into the binary from `web/widget.js`, so a
//! gateway serves it with no files beside it and no build step. Responses
//! carry an ETag (a hash of the script) and may be cached for five
//! minutes; a request whose `If-None-Match` names the current ETag gets
//! 304 without a body. Any origin may load it: it is public.

use std::sync::LazyLock;

use axum::Router;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// The widget's source, as served.
pub(crate) const WIDGET_JS: &str = include_str!("../../../web/widget.js");

/// How long browsers and CDNs may use the script before asking again.
const CACHE_CONTROL: &str = "public, max-age=300";

/// The script's ETag: a strong validator, the FNV-1a hash of its bytes.
static ETAG: LazyLock<HeaderValue> = LazyLock::new(|| {
    HeaderValue::from_str(&format!("\"{:016x}\"", fnv1a64(WIDGET_JS.as_bytes())))
        .unwrap_or_else(|_| HeaderValue::from_static("\"widget\""))
});

/// `GET /widget.js` (and `HEAD`).
pub(crate) fn router() -> Router {
    Router::new().route("/widget.js", get(widget))
}

async fn widget(headers: HeaderMap) -> Response {
    let cache = [
        (header::ETAG, ETAG.clone()),
        (
            header::CACHE_CONTROL,
            HeaderValue::from_static(CACHE_CONTROL),
        ),
        (
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        ),
    ];
    if not_modified(&headers) {
        return (StatusCode::NOT_MODIFIED, cache).into_response();
    }
    (
        cache,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/javascript; charset=utf-8"),
        )],
        WIDGET_JS,
    )
        .into_response()
}

/// Whether `If-None-Match` names the current ETag (weakly compared, as
/// RFC 9110 asks for this header) or is `*`.
fn not_modified(headers: &HeaderMap) -> bool {
    let Some(etag) = ETAG.to_str().ok() else {
        return false;
    };
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .any(|tag| tag == "*" || tag.trim_start_matches("W/") == etag)
}

/// 64-bit FNV-1a.
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    /// Sends one HTTP/1.1 request to a served router and returns the
    /// response's head (lowercased) and body.
    async fn request(addr: std::net::SocketAddr, extra: &str) -> (String, String) {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let request =
            format!("GET /widget.js HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n{extra}\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .expect("write the request");
        let mut response = String::new();
        stream
            .read_to_string(&mut response)
            .await
            .expect("read the response");
        let (head, body) = response
            .split_once("\r\n\r\n")
            .expect("a response with a head");
        (head.to_ascii_lowercase(), body.to_owned())
    }

    fn header_value<'a>(head: &'a str, name: &str) -> Option<&'a str> {
        head.lines()
            .find_map(|line| line.strip_prefix(&format!("{name}: ")))
    }

    #[tokio::test]
    async fn serves_the_widget_with_validators_and_answers_304_when_unchanged() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local address");
        let server = tokio::spawn(async move { axum::serve(listener, router()).await });

        let (head, body) = request(addr, "").await;
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert_eq!(
            header_value(&head, "content-type"),
            Some("text/javascript; charset=utf-8")
        );
        assert_eq!(
            header_value(&head, "access-control-allow-origin"),
            Some("*")
        );
        assert_eq!(
            header_value(&head, "cache-control"),
            Some("public, max-age=300")
        );
        assert_eq!(body, WIDGET_JS);
        let etag = header_value(&head, "etag").expect("an etag").to_owned();
        assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");

        let (head, body) = request(addr, &format!("if-none-match: {etag}\r\n")).await;
        assert!(head.starts_with("http/1.1 304"), "{head}");
        assert_eq!(header_value(&head, "etag"), Some(etag.as_str()));
        assert!(body.is_empty());

        let (head, _) = request(addr, &format!("if-none-match: \"other\", W/{etag}\r\n")).await;
        assert!(head.starts_with("http/1.1 304"), "{head}");

        let (head, body) = request(addr, "if-none-match: \"stale\"\r\n").await;
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert_eq!(body, WIDGET_JS);
        server.abort();
    }

    #[test]
    fn fnv1a64_matches_the_reference_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
