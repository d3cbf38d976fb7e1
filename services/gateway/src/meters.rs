//! The gateway's metrics, taken once: recording is then one atomic
//! operation, cheap enough for every message.

use std::time::Duration;

use metrics::{Counter, Gauge, Histogram};
use natter_core::Timestamp;
use natter_server::clock::now;

#[derive(Debug)]
pub(crate) struct Meters {
    sessions: Gauge,
    accepted: Counter,
    send_ack: Histogram,
    delivered: Counter,
    send_deliver: Histogram,
}

impl Meters {
    pub(crate) fn new() -> Self {
        use natter_telemetry::{counter, gauge, seconds};
        Self {
            sessions: gauge("natter_gateway_sessions", "Device sessions open now."),
            accepted: counter(
                "natter_gateway_messages_accepted_total",
                "Messages devices sent that were stored and acknowledged (retries not counted again).",
            ),
            send_ack: seconds(
                "natter_gateway_send_ack_seconds",
                "From a device's send reaching the gateway to its acknowledgement.",
            ),
            delivered: counter(
                "natter_gateway_messages_delivered_total",
                "Messages written to devices, live or in a catch-up.",
            ),
            send_deliver: seconds(
                "natter_gateway_send_deliver_seconds",
                "From a message's send to its delivery to a live device (by the senders' clocks).",
            ),
        }
    }

    /// An open session, counted until the guard drops.
    pub(crate) fn session(&self) -> SessionGuard {
        self.sessions.increment(1);
        SessionGuard(self.sessions.clone())
    }

    /// A device's message stored and acknowledged `after` its arrival.
    pub(crate) fn accepted(&self, after: Duration) {
        self.accepted.increment(1);
        self.send_ack.record(after);
    }

    /// A message written to a device; `live` when it came as it was sent,
    /// not in a catch-up, whose age says how long the device was away.
    pub(crate) fn delivered(&self, sent_at: Timestamp, live: bool) {
        self.delivered.increment(1);
        if live {
            let millis = now().as_millis().saturating_sub(sent_at.as_millis()).max(0);
            self.send_deliver
                .record(Duration::from_millis(millis.unsigned_abs()));
        }
    }
}

pub(crate) struct SessionGuard(Gauge);

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.0.decrement(1);
    }
}
