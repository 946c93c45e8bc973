//! Scan windows (`Workflow.windows`, `Workflow.stages[].windows`): when stage jobs may
//! be published. Pure time arithmetic, daylight-saving correct (IANA zones from the
//! embedded `chrono-tz` database).
//!
//! A window `{days, from, to, timezone}` opens on each of its `days` at local time
//! `from` and closes at `to`: the same day when `from < to`, the next day when
//! `to < from` (a window across midnight belongs to the day it opens on). A local time
//! that does not exist on a daylight-saving change day (the clocks jump over it) is
//! taken as the same wall time in the offset before the jump (e.g. `02:30` on the
//! spring-forward day in Europe/Madrid is `03:30` CEST), a time that exists twice as
//! its first occurrence.

use chrono::{
    DateTime, Datelike, Days, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Utc, Weekday,
};
use chrono_tz::Tz;
use serde::Serialize;

/// One scan window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ScanWindow {
    /// `days`: the days the window opens on (`mon` ... `sun`); absent: every day.
    #[serde(serialize_with = "ser_days", skip_serializing_if = "Vec::is_empty")]
    pub days: Vec<Weekday>,
    /// `from`: local opening time (`"22:00"`).
    #[serde(serialize_with = "ser_time")]
    pub from: NaiveTime,
    /// `to`: local closing time; before `from` when the window crosses midnight.
    #[serde(serialize_with = "ser_time")]
    pub to: NaiveTime,
    /// `timezone`: an IANA zone name (`Europe/Madrid`); absent: `UTC`.
    #[serde(serialize_with = "ser_tz")]
    pub timezone: Tz,
}

fn ser_days<S: serde::Serializer>(days: &[Weekday], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(days.iter().map(|d| day_name(*d)))
}

fn ser_time<S: serde::Serializer>(t: &NaiveTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_time(*t))
}

fn ser_tz<S: serde::Serializer>(tz: &Tz, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(tz.name())
}

/// `HH:MM`, or `HH:MM:SS` when the seconds are not zero.
pub fn format_time(t: NaiveTime) -> String {
    if t.format("%S").to_string() == "00" {
        t.format("%H:%M").to_string()
    } else {
        t.format("%H:%M:%S").to_string()
    }
}

/// The three-letter lower-case name of a day (`mon`).
pub fn day_name(d: Weekday) -> &'static str {
    match d {
        Weekday::Mon => "mon",
        Weekday::Tue => "tue",
        Weekday::Wed => "wed",
        Weekday::Thu => "thu",
        Weekday::Fri => "fri",
        Weekday::Sat => "sat",
        Weekday::Sun => "sun",
    }
}

/// Reads a day: `mon` ... `sun` or the full English name, any case.
pub fn parse_day(text: &str) -> Option<Weekday> {
    // chrono reads exactly these: the three-letter or the full name, any case.
    text.trim().parse().ok()
}

/// Reads a local time `HH:MM` or `HH:MM:SS` (24-hour clock).
pub fn parse_time(text: &str) -> Option<NaiveTime> {
    let t = text.trim();
    NaiveTime::parse_from_str(t, "%H:%M:%S")
        .or_else(|_| NaiveTime::parse_from_str(t, "%H:%M"))
        .ok()
        .filter(|_| t.len() == 5 || t.len() == 8)
}

/// The instant of local wall time `local` in `tz`: the first occurrence when it exists
/// twice, the same wall time in the offset before the jump when it does not exist.
fn resolve(tz: Tz, local: NaiveDateTime) -> DateTime<Utc> {
    match tz.from_local_datetime(&local).earliest() {
        Some(t) => t.with_timezone(&Utc),
        None => {
            // In a gap: the offset in force a few hours before it.
            let before = local - chrono::TimeDelta::hours(6);
            let offset = tz
                .from_local_datetime(&before)
                .earliest()
                .map(|t| t.offset().fix())
                .unwrap_or_else(|| chrono::FixedOffset::east_opt(0).expect("zero offset"));
            (local - offset).and_utc()
        }
    }
}

use chrono::Offset;

impl ScanWindow {
    /// The `[open, close)` intervals of the window's openings on the local dates
    /// `first ..= first + n - 1`.
    fn openings(
        &self,
        first: NaiveDate,
        n: u64,
    ) -> impl Iterator<Item = (DateTime<Utc>, DateTime<Utc>)> + '_ {
        (0..n).filter_map(move |i| {
            let date = first.checked_add_days(Days::new(i))?;
            if !self.days.is_empty() && !self.days.contains(&date.weekday()) {
                return None;
            }
            let close_date = if self.to <= self.from {
                date.checked_add_days(Days::new(1))?
            } else {
                date
            };
            let open = resolve(self.timezone, date.and_time(self.from));
            let close = resolve(self.timezone, close_date.and_time(self.to));
            (open < close).then_some((open, close))
        })
    }

    /// The local date of `t` in the window's zone, minus one day (a window across
    /// midnight that opened yesterday may still be open).
    fn start_date(&self, t: DateTime<Utc>) -> NaiveDate {
        let local = t.with_timezone(&self.timezone).date_naive();
        local.checked_sub_days(Days::new(1)).unwrap_or(local)
    }

    /// When the window is open at `t`: the time it closes.
    pub fn open_at(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.openings(self.start_date(t), 3)
            .find(|(open, close)| *open <= t && t < *close)
            .map(|(_, close)| close)
    }

    /// The first opening strictly after `t`, within the next eight days.
    pub fn next_open_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.openings(self.start_date(t), 10)
            .map(|(open, _)| open)
            .find(|open| *open > t)
    }
}

/// Whether stage jobs may be published at `t` under `windows`: always when there is
/// none, else when one of them is open.
pub fn is_open(windows: &[ScanWindow], t: DateTime<Utc>) -> bool {
    windows.is_empty() || windows.iter().any(|w| w.open_at(t).is_some())
}

/// When publishing is closed at `t` under `windows`: the time the first of them opens
/// next (`None` while publishing is open). A window always opens within eight days;
/// should none (a window with no valid opening), `t` plus one day is given, so that a
/// caller looks again then.
pub fn closed_until(windows: &[ScanWindow], t: DateTime<Utc>) -> Option<DateTime<Utc>> {
    if is_open(windows, t) {
        return None;
    }
    Some(
        windows
            .iter()
            .filter_map(|w| w.next_open_after(t))
            .min()
            .unwrap_or(t + chrono::TimeDelta::days(1)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(days: &[Weekday], from: &str, to: &str, tz: &str) -> ScanWindow {
        ScanWindow {
            days: days.to_vec(),
            from: parse_time(from).unwrap(),
            to: parse_time(to).unwrap(),
            timezone: tz.parse().unwrap(),
        }
    }

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn parses_days_and_times() {
        assert_eq!(parse_day("Mon"), Some(Weekday::Mon));
        assert_eq!(parse_day("sunday"), Some(Weekday::Sun));
        assert_eq!(parse_day("mo"), None);
        assert_eq!(parse_time("22:00"), NaiveTime::from_hms_opt(22, 0, 0));
        assert_eq!(parse_time("06:30:15"), NaiveTime::from_hms_opt(6, 30, 15));
        assert_eq!(parse_time("24:00"), None);
        assert_eq!(parse_time("7:00"), None);
        assert_eq!(parse_time("10:60"), None);
    }

    #[test]
    fn first_second_in_and_out() {
        let win = w(&[Weekday::Wed], "09:00", "17:00", "UTC");
        // 2026-12-02 is a Wednesday.
        assert!(win.open_at(utc("2026-12-02T08:59:59Z")).is_none());
        assert_eq!(
            win.open_at(utc("2026-12-02T09:00:00Z")),
            Some(utc("2026-12-02T17:00:00Z"))
        );
        assert!(win.open_at(utc("2026-12-02T16:59:59Z")).is_some());
        assert!(win.open_at(utc("2026-12-02T17:00:00Z")).is_none());
        assert_eq!(
            closed_until(std::slice::from_ref(&win), utc("2026-12-02T17:00:00Z")),
            Some(utc("2026-12-09T09:00:00Z"))
        );
        assert_eq!(
            closed_until(&[win], utc("2026-12-02T08:59:59Z")),
            Some(utc("2026-12-02T09:00:00Z"))
        );
    }

    #[test]
    fn a_window_across_midnight_belongs_to_the_day_it_opens() {
        // Friday 22:00 to Saturday 06:00, Madrid (UTC+1 in December).
        let win = w(&[Weekday::Fri], "22:00", "06:00", "Europe/Madrid");
        // Friday 2026-12-04 21:00 UTC = 22:00 local: open.
        assert!(win.open_at(utc("2026-12-04T20:59:59Z")).is_none());
        assert!(win.open_at(utc("2026-12-04T21:00:00Z")).is_some());
        // Saturday 04:59:59 UTC = 05:59:59 local: still open; 05:00 UTC closed.
        assert!(win.open_at(utc("2026-12-05T04:59:59Z")).is_some());
        assert!(win.open_at(utc("2026-12-05T05:00:00Z")).is_none());
        // Thursday night is not a Friday opening.
        assert!(win.open_at(utc("2026-12-03T23:00:00Z")).is_none());
        assert_eq!(
            win.next_open_after(utc("2026-12-03T23:00:00Z")),
            Some(utc("2026-12-04T21:00:00Z"))
        );
    }

    #[test]
    fn daylight_saving_change_days() {
        // Europe/Madrid springs forward on Sunday 2026-03-29 at 02:00 (to 03:00) and
        // falls back on Sunday 2026-10-25 at 03:00 (to 02:00).
        let win = w(&[Weekday::Sun], "01:00", "05:00", "Europe/Madrid");
        // Spring: 01:00 CET = 00:00 UTC; 05:00 CEST = 03:00 UTC (three hours long).
        assert!(win.open_at(utc("2026-03-28T23:59:59Z")).is_none());
        assert_eq!(
            win.open_at(utc("2026-03-29T00:00:00Z")),
            Some(utc("2026-03-29T03:00:00Z"))
        );
        assert!(win.open_at(utc("2026-03-29T03:00:00Z")).is_none());
        // Autumn: 01:00 CEST = 23:00 UTC the day before; 05:00 CET = 04:00 UTC.
        assert!(win.open_at(utc("2026-10-24T22:59:59Z")).is_none());
        assert_eq!(
            win.open_at(utc("2026-10-24T23:00:00Z")),
            Some(utc("2026-10-25T04:00:00Z"))
        );
        // A window opening inside the spring gap opens when the clocks land.
        let gap = w(&[Weekday::Sun], "02:30", "04:00", "Europe/Madrid");
        assert_eq!(
            gap.next_open_after(utc("2026-03-28T12:00:00Z")),
            Some(utc("2026-03-29T01:30:00Z")) // 03:30 CEST
        );
        // An hour that happens twice opens at its first occurrence (02:30 CEST).
        let twice = w(&[Weekday::Sun], "02:30", "04:00", "Europe/Madrid");
        assert_eq!(
            twice.next_open_after(utc("2026-10-24T12:00:00Z")),
            Some(utc("2026-10-25T00:30:00Z"))
        );
    }

    #[test]
    fn no_windows_is_always_open_and_any_open_window_opens() {
        let t = utc("2026-12-02T12:00:00Z");
        assert!(is_open(&[], t));
        let closed = w(&[Weekday::Mon], "09:00", "10:00", "UTC");
        let open = w(&[], "11:00", "13:00", "UTC");
        assert!(!is_open(std::slice::from_ref(&closed), t));
        assert!(is_open(&[closed, open], t));
    }
}
