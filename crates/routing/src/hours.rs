//! Business hours: when a desk takes conversations.
//!
//! Hours are kept the way the people who set them think of them: openings
//! by the local clock on each weekday, in the desk's IANA time zone, and
//! local dates that are holidays. Turning them into instants needs the
//! zone's rules, which move twice a year for daylight saving time, so the
//! tz database comes bundled (`jiff`'s copy) and the answer does not depend
//! on the machine's.
//!
//! An opening starts at the first instant the local clock reads its start
//! or later, and ends at the first instant it reads its end. So on the day
//! the clocks spring forward, an opening that starts in the skipped hour
//! starts when the clocks jump; on the day they fall back, one that ends in
//! the repeated hour ends the first time its end comes round.

use std::collections::BTreeSet;

use jiff::ToSpan;
use jiff::tz::{AmbiguousOffset, TimeZone};
use natter_core::{Invalid, Timestamp};

pub use jiff::civil::Date;

const MINUTES_PER_DAY: u16 = 24 * 60;

/// How far [`Schedule::next_open`] looks: today and the 14 days after it.
const HORIZON_DAYS: usize = 15;

/// A desk's weekly hours and holidays.
#[derive(Debug, Clone)]
pub struct Schedule {
    zone: TimeZone,
    weekly: [Vec<Opening>; 7],
    holidays: BTreeSet<Date>,
}

/// Open from `start_minute` to `end_minute` past local midnight:
/// `Opening { start_minute: 540, end_minute: 1020 }` is 09:00 to 17:00, and
/// an end of 1440 is the next midnight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Opening {
    pub start_minute: u16,
    pub end_minute: u16,
}

impl Schedule {
    /// `zone` is an IANA time zone name such as `Europe/Berlin`. `weekly`
    /// holds the openings of each weekday from Monday to Sunday. Holidays
    /// are closed all day.
    pub fn new(
        zone: &str,
        weekly: [Vec<Opening>; 7],
        holidays: BTreeSet<Date>,
    ) -> Result<Self, Invalid> {
        let zone = TimeZone::get(zone)
            .map_err(|e| Invalid::new("zone", format!("not a known time zone: {e}")))?;
        if let Some(bad) = weekly
            .iter()
            .flatten()
            .find(|o| o.start_minute >= o.end_minute || o.end_minute > MINUTES_PER_DAY)
        {
            return Err(Invalid::new(
                "weekly",
                format!(
                    "minutes {} to {} are not an interval of one day",
                    bad.start_minute, bad.end_minute
                ),
            ));
        }
        Ok(Self {
            zone,
            weekly,
            holidays,
        })
    }

    /// Whether the desk is open at `now`.
    pub fn is_open(&self, now: Timestamp) -> bool {
        let Some((now, yesterday)) = self.locate(now) else {
            return false;
        };
        self.spans(yesterday, 3)
            .any(|(open, close)| open <= now && now < close)
    }

    /// The first instant at or after `now` when the desk is open (so `now`
    /// itself when it is), if that is today or in the 14 days after.
    pub fn next_open(&self, now: Timestamp) -> Option<Timestamp> {
        let (now, yesterday) = self.locate(now)?;
        self.spans(yesterday, HORIZON_DAYS + 1)
            .filter(|(_, close)| now < *close)
            .map(|(open, _)| open.max(now))
            .min()
            .map(|t| Timestamp::from_millis(t.as_millisecond()))
    }

    /// `now` as an instant, and the local date before its own: a span of
    /// yesterday's may reach into today.
    fn locate(&self, now: Timestamp) -> Option<(jiff::Timestamp, Date)> {
        let now = jiff::Timestamp::from_millisecond(now.as_millis()).ok()?;
        let yesterday = self.zone.to_datetime(now).date().yesterday().ok()?;
        Some((now, yesterday))
    }

    /// The open spans of `days` local days from `first` on, as instants.
    fn spans(
        &self,
        first: Date,
        days: usize,
    ) -> impl Iterator<Item = (jiff::Timestamp, jiff::Timestamp)> {
        std::iter::successors(Some(first), |d| d.tomorrow().ok())
            .take(days)
            .filter(move |d| !self.holidays.contains(d))
            .flat_map(move |d| {
                // 0 for Monday through 6 for Sunday: always an index.
                let weekday = d.weekday().to_monday_zero_offset() as usize;
                self.weekly[weekday].iter().filter_map(move |o| {
                    Some((
                        self.first_reading(d, o.start_minute)?,
                        self.first_reading(d, o.end_minute)?,
                    ))
                })
            })
    }

    /// The first instant the local clock reads `minute` past the midnight
    /// that starts `date`, or later.
    fn first_reading(&self, date: Date, minute: u16) -> Option<jiff::Timestamp> {
        let local = date
            .at(0, 0, 0, 0)
            .checked_add(i64::from(minute).minutes())
            .ok()?;
        let ambiguous = self.zone.to_ambiguous_timestamp(local);
        let earlier = ambiguous.earlier().ok()?;
        match ambiguous.offset() {
            // The clock jumps over `local`: the jump comes first after it.
            AmbiguousOffset::Gap { .. } => {
                self.zone.following(earlier).next().map(|t| t.timestamp())
            }
            // Read once, or twice in a fold: the first time.
            AmbiguousOffset::Unambiguous { .. } | AmbiguousOffset::Fold { .. } => Some(earlier),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn utc(instant: &str) -> Timestamp {
        Timestamp::from_millis(instant.parse::<jiff::Timestamp>().unwrap().as_millisecond())
    }

    fn berlin(local: &str) -> Timestamp {
        let zoned: jiff::Zoned = format!("{local}[Europe/Berlin]").parse().unwrap();
        Timestamp::from_millis(zoned.timestamp().as_millisecond())
    }

    fn open(start_minute: u16, end_minute: u16) -> Vec<Opening> {
        vec![Opening {
            start_minute,
            end_minute,
        }]
    }

    /// Weekdays 09:00 to 17:00, Saturday 10:00 to 14:00, closed on Sunday.
    fn office_hours() -> [Vec<Opening>; 7] {
        let weekday = || open(540, 1020);
        [
            weekday(),
            weekday(),
            weekday(),
            weekday(),
            weekday(),
            open(600, 840),
            vec![],
        ]
    }

    fn only_sunday(start_minute: u16, end_minute: u16) -> [Vec<Opening>; 7] {
        let mut weekly: [Vec<Opening>; 7] = Default::default();
        weekly[6] = open(start_minute, end_minute);
        weekly
    }

    #[test]
    fn hours_follow_the_local_clock_across_a_dst_change() {
        // Berlin springs forward on Sunday 2026-03-29: UTC+1 before, UTC+2 after.
        let s = Schedule::new("Europe/Berlin", office_hours(), BTreeSet::new()).unwrap();
        assert!(!s.is_open(utc("2026-03-27T07:59:59Z")));
        assert!(s.is_open(utc("2026-03-27T08:00:00Z")));
        assert!(!s.is_open(utc("2026-03-30T06:59:59Z")));
        assert!(s.is_open(utc("2026-03-30T07:00:00Z")));
        assert!(!s.is_open(utc("2026-03-30T15:00:00Z")));
        // Saturday after closing: Monday at 09:00, summer time by then.
        assert_eq!(
            s.next_open(berlin("2026-03-28T15:00")),
            Some(utc("2026-03-30T07:00:00Z"))
        );
        let open = berlin("2026-03-28T11:00");
        assert_eq!(s.next_open(open), Some(open));
    }

    #[test]
    fn hours_starting_in_the_skipped_hour_open_when_the_clocks_jump() {
        let s = Schedule::new("Europe/Berlin", only_sunday(150, 300), BTreeSet::new()).unwrap();
        // 02:30 never happens on 2026-03-29: 01:59:59 CET is followed by
        // 03:00 CEST, at 01:00 UTC.
        assert_eq!(
            s.next_open(berlin("2026-03-29T00:00")),
            Some(utc("2026-03-29T01:00:00Z"))
        );
        assert!(!s.is_open(utc("2026-03-29T00:59:59Z")));
        assert!(s.is_open(utc("2026-03-29T01:00:00Z")));
        assert!(
            !s.is_open(utc("2026-03-29T03:00:00Z")),
            "closed at 05:00 CEST"
        );
    }

    #[test]
    fn hours_ending_in_the_repeated_hour_close_the_first_time() {
        // Berlin falls back on 2026-10-25: 02:00 to 03:00 happens twice.
        let s = Schedule::new("Europe/Berlin", only_sunday(60, 150), BTreeSet::new()).unwrap();
        assert!(s.is_open(utc("2026-10-24T23:00:00Z")), "01:00 CEST");
        assert!(!s.is_open(utc("2026-10-25T00:30:00Z")), "the first 02:30");
        assert!(!s.is_open(utc("2026-10-25T01:15:00Z")), "02:15 again");
        assert_eq!(
            s.next_open(utc("2026-10-25T00:30:00Z")),
            Some(berlin("2026-11-01T01:00"))
        );
    }

    #[test]
    fn holidays_are_closed_all_day() {
        let good_friday = jiff::civil::date(2026, 4, 3);
        let s = Schedule::new("Europe/Berlin", office_hours(), [good_friday].into()).unwrap();
        assert!(!s.is_open(berlin("2026-04-03T10:00")));
        assert!(s.is_open(berlin("2026-04-02T10:00")));
        assert_eq!(
            s.next_open(berlin("2026-04-02T18:00")),
            Some(berlin("2026-04-04T10:00"))
        );
    }

    #[test]
    fn a_desk_that_never_opens_has_no_next_opening() {
        let s = Schedule::new("UTC", Default::default(), BTreeSet::new()).unwrap();
        assert!(!s.is_open(utc("2026-01-01T12:00:00Z")));
        assert_eq!(s.next_open(utc("2026-01-01T12:00:00Z")), None);
    }

    #[test]
    fn bad_zones_and_intervals_are_rejected() {
        let none = BTreeSet::new;
        let err = Schedule::new("Mars/Olympus_Mons", office_hours(), none()).unwrap_err();
        assert_eq!(err.field, "zone");
        assert_eq!(
            Schedule::new("UTC", only_sunday(600, 600), none())
                .unwrap_err()
                .field,
            "weekly"
        );
        assert!(Schedule::new("UTC", only_sunday(0, 1441), none()).is_err());
        assert!(Schedule::new("UTC", only_sunday(0, 1440), none()).is_ok());
    }

    proptest! {
        /// `next_open` finds the first open instant: open then, and closed
        /// just before unless that is `now` itself.
        #[test]
        fn the_next_opening_is_the_first_open_instant(
            minutes in 0i64..(366 * 24 * 60),
            start in 0u16..1440,
            length in 1u16..600,
        ) {
            let end = (start + length).min(1440);
            let weekly = [
                open(start, end),
                vec![],
                open(60, 150),
                vec![],
                vec![],
                vec![],
                open(150, end.max(151)),
            ];
            let holidays = [jiff::civil::date(2026, 3, 30)].into();
            let s = Schedule::new("Europe/Berlin", weekly, holidays).unwrap();
            let now = Timestamp::from_millis(utc("2026-01-01T00:00:00Z").as_millis() + minutes * 60_000);
            let next = s.next_open(now).unwrap();
            prop_assert!(s.is_open(next));
            prop_assert_eq!(s.is_open(now), next == now);
            if next != now {
                prop_assert!(!s.is_open(Timestamp::from_millis(next.as_millis() - 1)));
            }
        }
    }
}
