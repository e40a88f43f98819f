//! Cron schedules of jobs (`x-wharf: {schedule, timezone}`): parsed with `croner` (five
//! fields, or six with seconds first), evaluated in an IANA time zone (`chrono-tz`). Times are
//! milliseconds since the epoch, as everywhere in the master.

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds};

/// A parsed schedule: its cron expression in its time zone.
#[derive(Clone, Debug)]
pub struct Schedule {
    cron: Cron,
    tz: Tz,
}

/// Why a schedule cannot be used, and what to write instead.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScheduleError {
    pub message: String,
    pub hint: String,
}

impl std::fmt::Display for ScheduleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.hint)
    }
}

impl Schedule {
    /// Parse `expr` in `timezone` (unset: UTC).
    pub fn parse(expr: &str, timezone: Option<&str>) -> Result<Schedule, ScheduleError> {
        let tz = match timezone {
            None => Tz::UTC,
            Some(name) => name.parse::<Tz>().map_err(|_| ScheduleError {
                message: format!("unknown time zone {:?}", wharf_types::excerpt(name, 80)),
                hint: "write an IANA time zone name such as Europe/Berlin or UTC".into(),
            })?,
        };
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .build()
            .parse(expr)
            .map_err(|e| ScheduleError {
                message: format!(
                    "bad cron expression {:?}: {}",
                    wharf_types::excerpt(expr, 80),
                    e.to_string().to_lowercase().trim_end_matches('.')
                ),
                hint: "write five fields (minute hour day month weekday, e.g. \"*/5 * * * *\") \
                       or six with seconds first (\"*/10 * * * * *\")"
                    .into(),
            })?;
        let s = Schedule { cron, tz };
        if s.next_after(0).is_none() {
            return Err(ScheduleError {
                message: format!(
                    "cron expression {:?} never fires",
                    wharf_types::excerpt(expr, 80)
                ),
                hint: "check the day of month against the month".into(),
            });
        }
        Ok(s)
    }

    /// The first time the schedule fires strictly after `after_ms`.
    pub fn next_after(&self, after_ms: u64) -> Option<u64> {
        let t = self.at(after_ms)?;
        let next = self.cron.find_next_occurrence(&t, false).ok()?;
        Some(next.timestamp_millis().max(0) as u64)
    }

    /// The last time the schedule fires at or before `upto_ms`, if it is after `after_ms`:
    /// of several times missed in between, the one that still counts.
    pub fn latest_in(&self, after_ms: u64, upto_ms: u64) -> Option<u64> {
        if upto_ms <= after_ms {
            return None;
        }
        let t = self.at(upto_ms)?;
        let prev = self.cron.find_previous_occurrence(&t, true).ok()?;
        let ms = prev.timestamp_millis().max(0) as u64;
        (ms > after_ms && ms <= upto_ms).then_some(ms)
    }

    fn at(&self, ms: u64) -> Option<DateTime<Tz>> {
        let utc = Utc.timestamp_millis_opt(ms as i64).single()?;
        Some(utc.with_timezone(&self.tz))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-03-29 00:00:00 UTC: the night Europe/Berlin moves from UTC+1 to UTC+2 at 01:00 UTC.
    const MARCH_29: u64 = 1_774_742_400_000;
    const S: u64 = 1_000;
    const H: u64 = 3_600 * S;

    fn check(expr: &str, tz: Option<&str>, after: u64, want: u64) {
        let s = Schedule::parse(expr, tz).expect("a schedule");
        assert_eq!(
            s.next_after(after),
            Some(want),
            "{expr} in {tz:?} after {after}"
        );
    }

    #[test]
    fn next_times() {
        // Seconds first when six fields.
        check("*/4 * * * * *", None, MARCH_29, MARCH_29 + 4 * S);
        check("*/4 * * * * *", None, MARCH_29 + 1, MARCH_29 + 4 * S);
        // Five fields: minutes.
        check("*/5 * * * *", None, MARCH_29, MARCH_29 + 300 * S);
        // 03:00 Berlin is 01:00 UTC before the change, and 01:00 UTC is 03:00 CEST after it.
        check("0 3 * * *", Some("Europe/Berlin"), MARCH_29, MARCH_29 + H);
        check(
            "0 3 * * *",
            Some("Europe/Berlin"),
            MARCH_29 + H,
            MARCH_29 + 25 * H,
        );
        check("0 3 * * *", None, MARCH_29, MARCH_29 + 3 * H);
    }

    #[test]
    fn missed_times_collapse_into_the_latest() {
        let s = Schedule::parse("*/4 * * * * *", None).unwrap();
        // Down from 0 s to 21 s: 4, 8, … 20 were missed; 20 is the one that counts.
        assert_eq!(
            s.latest_in(MARCH_29, MARCH_29 + 21 * S),
            Some(MARCH_29 + 20 * S)
        );
        // A time exactly at the end counts; one at the start was already done.
        assert_eq!(
            s.latest_in(MARCH_29, MARCH_29 + 4 * S),
            Some(MARCH_29 + 4 * S)
        );
        assert_eq!(s.latest_in(MARCH_29, MARCH_29 + 3 * S), None);
        assert_eq!(s.latest_in(MARCH_29 + 4 * S, MARCH_29 + 4 * S), None);
    }

    #[test]
    fn bad_schedules_say_what_to_write() {
        for (expr, tz, says) in [
            ("*/5 * * *", None, "bad cron expression"),
            ("61 * * * *", None, "bad cron expression"),
            ("every minute", None, "bad cron expression"),
            ("* * * * *", Some("Mars/Olympus"), "unknown time zone"),
            ("0 0 31 2 *", None, "never fires"),
        ] {
            let e = Schedule::parse(expr, tz).expect_err(expr);
            assert!(e.message.contains(says), "{expr}: {e}");
            assert!(!e.hint.is_empty());
        }
    }
}
