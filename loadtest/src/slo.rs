//! Service-level objectives a run must meet: each given limit is checked
//! against the run's figures after the report is printed, and a run that
//! misses one exits with its own code ([`EXIT_SLO_MISSED`]) so scripts and
//! CI can tell "the server was too slow" from "the run could not run".

use std::time::Duration;

use clap::Args;

use crate::cli::parse_duration;

/// The exit code of a run that completed but missed an objective.
pub(crate) const EXIT_SLO_MISSED: u8 = 3;

/// The objectives, from the command line; none given, nothing is checked.
#[derive(Debug, Clone, Default, Args)]
pub(crate) struct Slo {
    /// Fail (exit 3) when the p50 latency is above this.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) slo_p50: Option<Duration>,
    /// Fail (exit 3) when the p99 latency is above this, e.g. 10ms.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) slo_p99: Option<Duration>,
    /// Fail (exit 3) when more messages than this were lost (acked but not
    /// delivered); 0 for none.
    #[arg(long, value_name = "N")]
    pub(crate) slo_lost: Option<u64>,
    /// Fail (exit 3) when more sends than this were refused, unanswered or
    /// unsent, or more sessions than this failed.
    #[arg(long, value_name = "N")]
    pub(crate) slo_errors: Option<u64>,
    /// Fail (exit 3) when fewer deliveries per second than this arrived.
    #[arg(long, value_name = "PER_SECOND")]
    pub(crate) slo_throughput: Option<f64>,
    /// Fail (exit 3) when the scenario's time (catch-up, storm to steady
    /// state) was longer than this.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) slo_time: Option<Duration>,
}

/// The figures of a run an objective can be checked against; a scenario
/// fills in what it measures.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Observed {
    pub(crate) p50_ms: Option<f64>,
    pub(crate) p99_ms: Option<f64>,
    pub(crate) lost: Option<u64>,
    pub(crate) errors: Option<u64>,
    pub(crate) throughput: Option<f64>,
    pub(crate) time_s: Option<f64>,
}

impl Slo {
    /// Every objective missed, in words; an objective on a figure the
    /// scenario does not measure is missed too, so a typo never passes.
    pub(crate) fn check(&self, seen: &Observed) -> Vec<String> {
        let mut missed = Vec::new();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let mut above =
            |name: &str, limit: Option<f64>, value: Option<f64>, unit: &str| match (limit, value) {
                (Some(limit), Some(value)) if value > limit => {
                    missed.push(format!("{name} {value:.3}{unit} > {limit:.3}{unit}"));
                }
                (Some(_), None) => missed.push(format!("{name}: not measured by this scenario")),
                _ => {}
            };
        above("p50", self.slo_p50.map(ms), seen.p50_ms, " ms");
        above("p99", self.slo_p99.map(ms), seen.p99_ms, " ms");
        above(
            "time",
            self.slo_time.map(|d| d.as_secs_f64()),
            seen.time_s,
            " s",
        );
        let as_f64 = |n: Option<u64>| n.map(|n| n as f64);
        above("lost", as_f64(self.slo_lost), as_f64(seen.lost), "");
        above("errors", as_f64(self.slo_errors), as_f64(seen.errors), "");
        match (self.slo_throughput, seen.throughput) {
            (Some(limit), Some(value)) if value < limit => {
                missed.push(format!("throughput {value:.1}/s < {limit:.1}/s"));
            }
            (Some(_), None) => missed.push("throughput: not measured by this scenario".into()),
            _ => {}
        }
        missed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen() -> Observed {
        Observed {
            p50_ms: Some(2.0),
            p99_ms: Some(12.5),
            lost: Some(0),
            errors: Some(3),
            throughput: Some(950.0),
            time_s: None,
        }
    }

    #[test]
    fn no_objective_passes_everything() {
        assert!(Slo::default().check(&seen()).is_empty());
    }

    #[test]
    fn each_limit_is_checked_on_its_own_side() {
        let slo = Slo {
            slo_p50: Some(Duration::from_millis(5)),
            slo_p99: Some(Duration::from_millis(10)),
            slo_lost: Some(0),
            slo_errors: Some(2),
            slo_throughput: Some(1000.0),
            ..Slo::default()
        };
        let missed = slo.check(&seen());
        assert_eq!(missed.len(), 3, "{missed:?}");
        assert!(missed[0].starts_with("p99 12.500 ms > 10.000 ms"));
        assert!(missed.iter().any(|m| m.starts_with("errors 3")));
        assert!(missed.iter().any(|m| m.starts_with("throughput 950.0/s")));
        // At the limit is within it.
        let at = Slo {
            slo_p99: Some(Duration::from_micros(12_500)),
            slo_errors: Some(3),
            ..Slo::default()
        };
        assert!(at.check(&seen()).is_empty());
    }

    #[test]
    fn an_objective_on_an_unmeasured_figure_is_missed() {
        let slo = Slo {
            slo_time: Some(Duration::from_secs(1)),
            ..Slo::default()
        };
        assert_eq!(slo.check(&seen()), ["time: not measured by this scenario"]);
    }
}
