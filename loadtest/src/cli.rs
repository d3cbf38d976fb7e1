//! The command line. Options shared by every scenario (where the gateway
//! is, how to mint tokens, how to open connections, how to print) are
//! flattened into each subcommand, so a new scenario takes them as they
//! are and adds only its own.

use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::costs::Meter;
use crate::slo::Slo;
use crate::topology::Topology;

#[derive(Debug, Parser)]
#[command(
    name = "natter-load",
    version,
    about = "Load generator for Natter: drives a running gateway and measures it",
    long_about = "Load generator for Natter: drives a running gateway and measures it.\n\n\
        Progress goes to stderr once a second; the results go to stdout, as a table or \
        (--json) as one JSON document. Exit codes: 0 the run completed (and met every \
        --slo-* given), 1 it could not run (bad target, failed setup, not one session \
        opened), 2 bad usage, 3 it completed but missed an --slo-* objective."
)]
pub(crate) struct Cli {
    /// Worker threads of the load generator's runtime [default: one per CPU].
    #[arg(long, global = true, value_name = "N")]
    pub(crate) threads: Option<usize>,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Conversations (pairs, groups of K, one room of S, or a mix), one
    /// device per member: members take turns sending text open-loop at a
    /// fixed total rate (after an optional ramp), the other members'
    /// devices receive it and ack their cursors. Measures send-to-deliver
    /// latency from each message's intended send time (corrected for
    /// coordinated omission), throughput, loss, errors and reconnects.
    #[command(visible_alias = "pairs")]
    Traffic(TrafficArgs),
    /// Many device sessions that say hello and then idle. Measures how fast
    /// they open and, with --server-pid, the server's memory per idle
    /// connection.
    Idle(IdleArgs),
    /// Opens N devices, drops them all at once and has them all come back
    /// with their cursors. Measures the time until every one is back
    /// (steady state), reconnect latencies, retries and failures.
    ReconnectStorm(StormArgs),
    /// A device misses M messages while away, then returns with its cursor.
    /// Measures how fast the M messages were stored (send to send_ack, a
    /// window of sends in flight) and the time until the returning device
    /// has them all.
    CatchUp(CatchUpArgs),
    /// Not a scenario: gives the tenant a support desk so routing is live
    /// while a scenario runs, one team and its agents, created through the
    /// desk service's DeskService with a service-role token. Retries until
    /// the desk's holder answers (it routes a moment after it starts), then
    /// prints what the holder has (GetDesk).
    DeskSetup(DeskSetupArgs),
}

/// Where the gateway is and how devices reach it.
#[derive(Debug, Args)]
pub(crate) struct TargetArgs {
    /// The gateway's WebSocket URL; devices use the natter.v1.proto
    /// subprotocol.
    #[arg(
        long,
        value_name = "URL",
        required_unless_present_any = ["grpc", "centrifugo"],
        conflicts_with_all = ["grpc", "centrifugo"]
    )]
    pub(crate) ws: Option<String>,
    /// The gateway's gRPC address (host:port); each device gets its own
    /// HTTP/2 connection.
    #[arg(long, value_name = "ADDR", conflicts_with = "centrifugo")]
    pub(crate) grpc: Option<String>,
    /// Not Natter but a Centrifugo v6 server, for comparison: its client
    /// WebSocket URL (ws://HOST:8000/connection/websocket). Each
    /// conversation is a channel in the namespace "load", which must allow
    /// clients to subscribe and subscribers to publish; devices publish
    /// their messages (client-side publish) and receive the others'.
    /// Tokens are signed with --secret (Centrifugo's
    /// client.token.hmac_secret_key).
    #[arg(long, value_name = "URL")]
    pub(crate) centrifugo: Option<String>,
    /// The HS256 secret the server verifies tokens with (`natter dev` uses
    /// natter-dev-secret-not-for-production-use unless configured).
    #[arg(long, env = "NATTER_LOAD_SECRET", hide_env_values = true)]
    pub(crate) secret: String,
    /// The tenant every user of the run belongs to.
    #[arg(long, default_value = "load")]
    pub(crate) tenant: String,
    /// Spread connections over the loopback source addresses
    /// 127.0.0.1..127.0.0.N, binding each client socket before it connects,
    /// so more connections fit than one address pair has ephemeral ports
    /// (about 28,000): 4 for 100,000 connections. Only for a gateway on an
    /// IPv4 loopback address.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u8).range(1..=254))]
    pub(crate) source_addrs: u8,
    /// New connections per second at most; connections are started at this
    /// pace whatever the server's answer time.
    #[arg(long, value_name = "PER_SECOND", default_value_t = 1000.0)]
    pub(crate) connect_rate: f64,
    /// Connections opening at once at most (TCP, WebSocket handshake, hello
    /// and welcome).
    #[arg(long, value_name = "N", default_value_t = 256)]
    pub(crate) connect_concurrency: usize,
    /// How long opening one connection may take, welcome included.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub(crate) connect_timeout: Duration,
    /// The server's process id, when it runs on this machine: its CPU time
    /// and resident memory (/proc/PID/stat and status) are reported beside
    /// the load generator's own; `idle` reports its memory per connection.
    #[arg(long, value_name = "PID")]
    pub(crate) server_pid: Option<u32>,
}

/// How results are printed.
#[derive(Debug, Args)]
pub(crate) struct OutputArgs {
    /// Print the results as one JSON document on stdout instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
    /// No progress line on stderr.
    #[arg(long, short)]
    pub(crate) quiet: bool,
}

#[derive(Debug, Args)]
pub(crate) struct TrafficArgs {
    #[command(flatten)]
    pub(crate) target: TargetArgs,
    /// The storage service's gRPC address (host:port), where the run's
    /// conversations are created with a service-role token. Required for
    /// Natter; Centrifugo needs no set-up.
    #[arg(long, value_name = "ADDR")]
    pub(crate) storage: Option<String>,
    /// Who talks to whom: `pairs` (a customer and an agent), `groups:K`
    /// (K members each), `room:S` (one room of S members, which devices
    /// follow with `watch`: above limits.big_room_members, 1,000 by
    /// default, that is the only way its messages reach them), or `mix[:K]`
    /// (pairs and groups of K, default 10, alternating).
    #[arg(long, value_name = "TOPOLOGY", default_value = "pairs")]
    pub(crate) topology: Topology,
    /// How many conversations (a room is always one). Every member is its
    /// own user with one device.
    #[arg(long, visible_alias = "pairs", value_name = "N", default_value_t = 50,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub(crate) conversations: u32,
    /// Messages per second sent in total, spread evenly over the
    /// conversations: message k of the run goes to conversation k mod N,
    /// where its members take turns sending.
    #[arg(long, value_name = "PER_SECOND", default_value_t = 100.0)]
    pub(crate) rate: f64,
    /// How long the offered rate takes to climb linearly from 0 to --rate
    /// at the start; sent, never measured.
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = parse_duration)]
    pub(crate) ramp: Duration,
    /// How long the measured part of the run lasts.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub(crate) duration: Duration,
    /// How long to send at the full rate before measuring; messages due in
    /// the ramp and the warmup are sent but left out of the figures (except
    /// loss, reported apart).
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_duration)]
    pub(crate) warmup: Duration,
    /// After the last send, how long to wait for the outstanding acks and
    /// deliveries before counting what is missing.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub(crate) drain_timeout: Duration,
    /// Bytes of text per message (at least 48: the intended send time and
    /// the message's number travel in the text).
    #[arg(long, value_name = "BYTES", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(48..=60_000))]
    pub(crate) message_bytes: u32,
    /// How often each device acks its cursor (when it moved).
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    pub(crate) ack_interval: Duration,
    /// Do not reconnect a device whose session the server ended; by
    /// default it reconnects with its cursor (and re-watches from the last
    /// seq it has), with backoff, and the reconnects are counted.
    #[arg(long)]
    pub(crate) no_reconnect: bool,
    /// A counter another process keeps, read when the measured window
    /// starts and when it ends and reported as its increase per message
    /// acked in the window: FIELD of the JSON document an http:// URL
    /// returns (a top-level field, or a JSON pointer such as /a/b), e.g.
    /// nats_msgs=http://127.0.0.1:8222/varz#in_msgs for the NATS messages
    /// a message costs. Repeatable; each URL is read once per look.
    #[arg(long = "count", value_name = "NAME=URL#FIELD")]
    pub(crate) counts: Vec<Meter>,
    #[command(flatten)]
    pub(crate) slo: Slo,
    #[command(flatten)]
    pub(crate) output: OutputArgs,
}

#[derive(Debug, Args)]
pub(crate) struct IdleArgs {
    #[command(flatten)]
    pub(crate) target: TargetArgs,
    /// Device sessions to open, each for its own user.
    #[arg(long, value_name = "N", default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub(crate) connections: u32,
    /// How long to hold the sessions open once they are all opened.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub(crate) hold: Duration,
    /// Counts of open sessions at which to pause opening, let the server
    /// settle (--settle) and read its resident memory, e.g.
    /// 10000,50000 (with --server-pid); the full count is read after
    /// opening too.
    #[arg(long, value_name = "N,N,...", value_delimiter = ',')]
    pub(crate) checkpoints: Vec<u64>,
    /// How long to wait at each checkpoint before reading the memory.
    #[arg(long, value_name = "DURATION", default_value = "3s", value_parser = parse_duration)]
    pub(crate) settle: Duration,
    #[command(flatten)]
    pub(crate) slo: Slo,
    #[command(flatten)]
    pub(crate) output: OutputArgs,
}

#[derive(Debug, Args)]
pub(crate) struct StormArgs {
    #[command(flatten)]
    pub(crate) target: TargetArgs,
    /// Devices that drop and come back, each for its own user.
    #[arg(long, value_name = "N", default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub(crate) devices: u32,
    /// How long to hold the sessions once all are open, before the drop.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_duration)]
    pub(crate) hold: Duration,
    /// Reconnects started per second at most once they dropped: the storm
    /// (the first opening goes at --connect-rate).
    #[arg(long, value_name = "PER_SECOND", default_value_t = 100_000.0)]
    pub(crate) storm_rate: f64,
    /// How long the devices may take to all come back; a failed reconnect
    /// is retried with backoff and jitter until then.
    #[arg(long, value_name = "DURATION", default_value = "120s", value_parser = parse_duration)]
    pub(crate) storm_timeout: Duration,
    #[command(flatten)]
    pub(crate) slo: Slo,
    #[command(flatten)]
    pub(crate) output: OutputArgs,
}

#[derive(Debug, Args)]
pub(crate) struct CatchUpArgs {
    #[command(flatten)]
    pub(crate) target: TargetArgs,
    /// The storage service's gRPC address (host:port), where the
    /// conversation is created.
    #[arg(long, value_name = "ADDR")]
    pub(crate) storage: String,
    /// Messages the device misses while away.
    #[arg(long, value_name = "M", default_value_t = 10_000,
          value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub(crate) messages: u32,
    /// Sends in flight at once while the messages are stored (closed
    /// loop: the next goes when one is acked).
    #[arg(long, value_name = "N", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub(crate) window: u32,
    /// Bytes of text per message (at least 48).
    #[arg(long, value_name = "BYTES", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(48..=60_000))]
    pub(crate) message_bytes: u32,
    /// How long storing the messages, and then catching up, may each take.
    #[arg(long, value_name = "DURATION", default_value = "300s", value_parser = parse_duration)]
    pub(crate) timeout: Duration,
    #[command(flatten)]
    pub(crate) slo: Slo,
    #[command(flatten)]
    pub(crate) output: OutputArgs,
}

#[derive(Debug, Args)]
pub(crate) struct DeskSetupArgs {
    /// The desk service's gRPC address (host:port).
    #[arg(long, value_name = "ADDR")]
    pub(crate) desk: String,
    /// The HS256 secret the server verifies tokens with.
    #[arg(long, env = "NATTER_LOAD_SECRET", hide_env_values = true)]
    pub(crate) secret: String,
    /// The tenant whose desk it is: the tenant of the scenario's users.
    #[arg(long, default_value = "load")]
    pub(crate) tenant: String,
    /// The team's id; its queue takes the tenant's waiting conversations.
    #[arg(long, value_name = "ID", default_value = "load")]
    pub(crate) team: String,
    /// Agents of the team, `<team>-agent-1` and on.
    #[arg(long, value_name = "N", default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub(crate) agents: u32,
    /// Conversations each agent holds at most.
    #[arg(long, value_name = "N", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub(crate) capacity: u32,
    /// How long to keep trying while the desk does not answer.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub(crate) timeout: Duration,
}

/// Parses `250ms`, `10s`, `2m`, `1h` or a bare number of seconds (`1.5`).
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration such as 500ms, 10s, 2m or 1h"))?;
    let seconds = match unit.trim() {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        other => return Err(format!("unknown unit {other:?}: use ms, s, m or h")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn durations_parse_with_and_without_units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("10 parsecs").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn pairs_is_traffic_with_the_old_options() {
        let cli = Cli::try_parse_from([
            "natter-load",
            "pairs",
            "--ws",
            "ws://127.0.0.1:8080/v1/connect",
            "--secret",
            "s",
            "--pairs",
            "7",
            "--slo-p99",
            "10ms",
        ])
        .unwrap();
        let Command::Traffic(args) = cli.command else {
            panic!("pairs is traffic");
        };
        assert_eq!(args.conversations, 7);
        assert_eq!(args.topology, Topology::Pairs);
        assert_eq!(args.slo.slo_p99, Some(Duration::from_millis(10)));
    }

    #[test]
    fn ws_and_grpc_exclude_each_other() {
        let both = Cli::try_parse_from([
            "natter-load",
            "idle",
            "--ws",
            "ws://127.0.0.1:8080/v1/connect",
            "--grpc",
            "127.0.0.1:7100",
            "--secret",
            "s",
        ]);
        assert!(both.is_err());
        let neither = Cli::try_parse_from(["natter-load", "idle", "--secret", "s"]);
        assert!(neither.is_err());
    }
}
