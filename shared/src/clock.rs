//! Time, injectable: every window (minute, month, day) is derived from one `now`, so tests can
//! stand on a boundary.

use std::sync::Mutex;

use time::OffsetDateTime;

pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now(&self) -> OffsetDateTime;
}

/// The real clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

/// A clock that stands still until moved: for tests.
#[derive(Debug)]
pub struct ManualClock(Mutex<OffsetDateTime>);

impl ManualClock {
    pub fn new(at: OffsetDateTime) -> ManualClock {
        ManualClock(Mutex::new(at))
    }

    pub fn set(&self, at: OffsetDateTime) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = at;
    }

    pub fn advance(&self, by: time::Duration) {
        let mut now = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *now += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> OffsetDateTime {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// `YYYY-MM` of an instant, UTC.
pub fn month_of(at: OffsetDateTime) -> String {
    let at = at.to_offset(time::UtcOffset::UTC);
    format!("{:04}-{:02}", at.year(), u8::from(at.month()))
}

/// `YYYY-MM-DD` of an instant, UTC.
pub fn date_of(at: OffsetDateTime) -> String {
    let at = at.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}",
        at.year(),
        u8::from(at.month()),
        at.day()
    )
}

/// RFC 3339 of an instant, UTC.
pub fn rfc3339(at: OffsetDateTime) -> String {
    at.to_offset(time::UtcOffset::UTC)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// The first instant of the month after `at`'s, UTC.
pub fn next_month_start(at: OffsetDateTime) -> OffsetDateTime {
    let at = at.to_offset(time::UtcOffset::UTC);
    let (year, month) = match at.month() {
        time::Month::December => (at.year() + 1, time::Month::January),
        m => (at.year(), m.next()),
    };
    time::Date::from_calendar_date(year, month, 1)
        .map(|d| d.midnight().assume_utc())
        .unwrap_or(at)
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    #[test]
    fn windows_are_utc_calendar_months() {
        let at = datetime!(2026-12-31 23:59:59 UTC);
        assert_eq!(month_of(at), "2026-12");
        assert_eq!(date_of(at), "2026-12-31");
        assert_eq!(next_month_start(at), datetime!(2027-01-01 0:00 UTC));
        // An instant given in another offset still falls in its UTC month.
        let at = datetime!(2026-12-01 00:30 +01:00);
        assert_eq!(month_of(at), "2026-11");
        assert_eq!(date_of(at), "2026-11-30");
        // Months and days are two digits, years four.
        let at = datetime!(0987-03-05 23:30 -01:00);
        assert_eq!(date_of(at), "0987-03-06");
        assert_eq!(month_of(at), "0987-03");
    }
}
