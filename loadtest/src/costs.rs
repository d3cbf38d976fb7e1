//! What one message costs the infrastructure: counters that other
//! processes keep (NATS's `/varz`, Cassandra's request counts), read over
//! HTTP when the measured window starts and when it ends. A counter's
//! increase divided by the messages acked in between is its cost per
//! message (`--count NAME=URL#FIELD`).
//!
//! Parsing and the arithmetic are plain functions (tested); the fetch is a
//! minimal HTTP/1.0 GET, enough for monitoring endpoints on loopback.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde::Serialize;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// How long one read of an endpoint may take.
const TIMEOUT: Duration = Duration::from_secs(5);

/// The most of a response read: `/varz` is a few KiB.
const MAX_RESPONSE_BYTES: u64 = 4 << 20;

/// One `--count NAME=URL#FIELD`: a number in the JSON document an HTTP
/// endpoint returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Meter {
    pub(crate) name: String,
    /// host:port
    addr: String,
    /// The request path, with any query.
    path: String,
    /// A JSON pointer into the document (`/in_msgs`).
    pointer: String,
}

impl FromStr for Meter {
    type Err = String;

    fn from_str(text: &str) -> Result<Meter, String> {
        let usage = || format!("{text:?} is not NAME=http://HOST:PORT/PATH#FIELD");
        let (name, rest) = text.split_once('=').ok_or_else(usage)?;
        let (url, field) = rest.rsplit_once('#').ok_or_else(usage)?;
        let authority_path = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("{url:?}: only http:// URLs are read"))?;
        let (authority, path) = match authority_path.find('/') {
            Some(i) => authority_path.split_at(i),
            None => (authority_path, "/"),
        };
        if name.is_empty() || authority.is_empty() || field.is_empty() {
            return Err(usage());
        }
        let addr = if authority.contains(':') {
            authority.to_owned()
        } else {
            format!("{authority}:80")
        };
        let pointer = if field.starts_with('/') {
            field.to_owned()
        } else {
            format!("/{field}")
        };
        Ok(Meter {
            name: name.to_owned(),
            addr,
            path: path.to_owned(),
            pointer,
        })
    }
}

/// One counter over the measured window.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub(crate) struct Cost {
    /// How much the counter grew.
    pub(crate) increase: f64,
    /// That per message acked in the window; none if none was.
    pub(crate) per_message: Option<f64>,
}

/// The counters of a run; each endpoint is read once per look.
#[derive(Debug, Clone, Default)]
pub(crate) struct Meters {
    meters: Vec<Meter>,
}

/// Every counter's value at one moment; `None` where it could not be read.
#[derive(Debug, Clone)]
pub(crate) struct Reading(Vec<Option<f64>>);

impl Meters {
    pub(crate) fn new(meters: Vec<Meter>) -> Meters {
        Meters { meters }
    }

    /// Reads every counter, failing on the first that cannot be read: the
    /// check before a run.
    pub(crate) async fn check(&self) -> anyhow::Result<()> {
        for (meter, value) in self.meters.iter().zip(self.read_each().await) {
            value.with_context(|| format!("--count {}", meter.name))?;
        }
        Ok(())
    }

    /// Reads every counter; one that cannot be read is left out of the
    /// costs, with a warning on stderr.
    pub(crate) async fn read(&self) -> Reading {
        let values = self.read_each().await;
        Reading(
            self.meters
                .iter()
                .zip(values)
                .map(|(meter, value)| match value {
                    Ok(v) => Some(v),
                    Err(e) => {
                        eprintln!("natter-load: --count {}: {e:#}", meter.name);
                        None
                    }
                })
                .collect(),
        )
    }

    async fn read_each(&self) -> Vec<anyhow::Result<f64>> {
        let mut documents = BTreeMap::new();
        for meter in &self.meters {
            if let Entry::Vacant(slot) = documents.entry((&meter.addr, &meter.path)) {
                let document = get_json(&meter.addr, &meter.path).await;
                slot.insert(document.map_err(|e| format!("{e:#}")));
            }
        }
        self.meters
            .iter()
            .map(|meter| match &documents[&(&meter.addr, &meter.path)] {
                Ok(document) => number_at(document, &meter.pointer),
                Err(e) => Err(anyhow::anyhow!("{e}")),
            })
            .collect()
    }

    /// Each counter's increase from `before` to `after`, and that per one
    /// of `messages`.
    pub(crate) fn costs(
        &self,
        before: &Reading,
        after: &Reading,
        messages: u64,
    ) -> BTreeMap<String, Option<Cost>> {
        self.meters
            .iter()
            .zip(before.0.iter().zip(&after.0))
            .map(|(meter, (before, after))| {
                let cost = before.zip(*after).map(|(before, after)| {
                    let increase = after - before;
                    Cost {
                        increase,
                        per_message: (messages > 0).then(|| increase / messages as f64),
                    }
                });
                (meter.name.clone(), cost)
            })
            .collect()
    }
}

fn number_at(document: &serde_json::Value, pointer: &str) -> anyhow::Result<f64> {
    match document.pointer(pointer) {
        Some(value) => value
            .as_f64()
            .with_context(|| format!("{pointer} is {value}, not a number")),
        None => bail!("no {pointer} in the document"),
    }
}

/// GETs `path` from `addr` (HTTP/1.0, so the body is neither chunked nor
/// kept alive) and parses the body as JSON.
async fn get_json(addr: &str, path: &str) -> anyhow::Result<serde_json::Value> {
    let fetch = async {
        let mut stream = TcpStream::connect(addr).await?;
        let request =
            format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nAccept: application/json\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream
            .take(MAX_RESPONSE_BYTES)
            .read_to_end(&mut response)
            .await?;
        Ok::<_, std::io::Error>(response)
    };
    let response = tokio::time::timeout(TIMEOUT, fetch)
        .await
        .with_context(|| format!("http://{addr}{path} did not answer within {TIMEOUT:?}"))?
        .with_context(|| format!("http://{addr}{path}"))?;
    json_body(&response).with_context(|| format!("http://{addr}{path}"))
}

/// The JSON body of a 200 response.
fn json_body(response: &[u8]) -> anyhow::Result<serde_json::Value> {
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no end of the response headers")?;
    let head = String::from_utf8_lossy(&response[..split]);
    let status = head.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        bail!("answered {status:?}");
    }
    serde_json::from_slice(&response[split + 4..]).context("the body is not JSON")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meters_parse_with_a_field_or_a_pointer() {
        let meter: Meter = "nats_msgs=http://127.0.0.1:8222/varz#in_msgs"
            .parse()
            .unwrap();
        assert_eq!(meter.name, "nats_msgs");
        assert_eq!(meter.addr, "127.0.0.1:8222");
        assert_eq!(meter.path, "/varz");
        assert_eq!(meter.pointer, "/in_msgs");
        let meter: Meter = "lwt=http://localhost#/cql/lwt".parse().unwrap();
        assert_eq!(meter.addr, "localhost:80");
        assert_eq!(meter.path, "/");
        assert_eq!(meter.pointer, "/cql/lwt");
        for bad in [
            "http://127.0.0.1:8222/varz#in_msgs",
            "x=http://127.0.0.1:8222/varz",
            "x=https://127.0.0.1/varz#in_msgs",
            "=http://127.0.0.1/#a",
            "x=http://127.0.0.1/#",
        ] {
            assert!(bad.parse::<Meter>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_body_is_read_only_from_a_200() {
        let ok = b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{\"in_msgs\": 12}";
        let document = json_body(ok).unwrap();
        assert_eq!(number_at(&document, "/in_msgs").unwrap(), 12.0);
        assert!(number_at(&document, "/out_msgs").is_err());
        assert!(json_body(b"HTTP/1.1 404 Not Found\r\n\r\n{}").is_err());
        assert!(json_body(b"HTTP/1.0 200 OK\r\n\r\nnot json").is_err());
        assert!(json_body(b"HTTP/1.0 200 OK").is_err());
    }

    #[test]
    fn costs_are_increases_per_message_and_skip_what_was_not_read() {
        let meters = Meters::new(vec![
            "a=http://h:1/#a".parse().unwrap(),
            "b=http://h:1/#b".parse().unwrap(),
        ]);
        let before = Reading(vec![Some(100.0), None]);
        let after = Reading(vec![Some(160.0), Some(5.0)]);
        let costs = meters.costs(&before, &after, 20);
        assert_eq!(
            costs["a"],
            Some(Cost {
                increase: 60.0,
                per_message: Some(3.0)
            })
        );
        assert_eq!(costs["b"], None);
        let none = meters.costs(&before, &after, 0);
        assert_eq!(none["a"].unwrap().per_message, None);
    }
}
