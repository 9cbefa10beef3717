//! Cron expressions for Oz schedules: parsing and firing times, in UTC.
//!
//! A schedule's `cron_schedule` (for example `"0 9 * * *"`, daily at 09:00 UTC)
//! is parsed once with [`CronSchedule::parse`]; the scheduler then asks
//! [`CronSchedule::next_after`] when to fire next and
//! [`CronSchedule::prev_at_or_before`] which firing it may have missed.
//!
//! # Syntax
//!
//! Standard Vixie/POSIX cron: exactly five fields separated by whitespace.
//!
//! | field        | values                                           |
//! |--------------|--------------------------------------------------|
//! | minute       | `0-59`                                           |
//! | hour         | `0-23`                                           |
//! | day-of-month | `1-31`                                           |
//! | month        | `1-12` or `JAN`-`DEC`                            |
//! | day-of-week  | `0-7` (`0` and `7` are Sunday) or `SUN`-`SAT`    |
//!
//! Names are three letters, case-insensitive, and may be used anywhere a number
//! may (`MON-FRI`, `JAN,JUL`). Each field is a comma-separated list of items;
//! an item is one of
//!
//! - `*`: every value of the field;
//! - `a`: one value;
//! - `a-b`: every value from `a` to `b` inclusive (`a` must not exceed `b`,
//!   ranges do not wrap around);
//! - `*/n`, `a-b/n`: every `n`-th value of the full field or of the range,
//!   starting at its first value;
//! - `a/n`: the same as `a-max/n` (for day-of-week `max` is 7, so `1/2` is
//!   Monday, Wednesday, Friday and Sunday).
//!
//! A step `n` must be at least 1 and at most the number of values in the
//! field (60 for minutes). Instead of five fields a macro may be given on its
//! own (case-insensitive): `@yearly`/`@annually` (`0 0 1 1 *`), `@monthly`
//! (`0 0 1 * *`), `@weekly` (`0 0 * * 0`), `@daily`/`@midnight` (`0 0 * * *`)
//! and `@hourly` (`0 * * * *`). `@reboot` is rejected: schedules fire at
//! times, not at start-up. Seconds, years and the Quartz extensions (`?`, `L`,
//! `W`, `#`) are not accepted.
//!
//! # Day matching
//!
//! As in Vixie cron, when both day-of-month and day-of-week are restricted a
//! day matches if **either** matches: `0 0 13 * FRI` fires on every 13th and on
//! every Friday. A field counts as unrestricted when its text starts with `*`
//! (this is Vixie's test, so it includes `*/2`); then a day must match **both**
//! fields, which for a plain `*` means only the other field counts. So
//! `0 0 */2 * MON` fires on Mondays that fall on an odd day of the month.
//!
//! # Times
//!
//! Everything is UTC at minute resolution: firings are whole minutes and the
//! seconds of a given instant are ignored. The search is calendar-aware and
//! skips non-matching months, days and hours at once. Because the Gregorian
//! calendar repeats every 400 years, searching a little over 400 years ahead
//! is enough to know an expression never fires (`0 0 30 2 *`); such
//! expressions are recognised up front, so the answer is immediate.
//!
//! ```
//! use chrono::{TimeZone, Utc};
//! use oz_cron::CronSchedule;
//!
//! let daily: CronSchedule = "0 9 * * *".parse().unwrap();
//! let t = Utc.with_ymd_and_hms(2025, 6, 1, 9, 0, 30).unwrap();
//! assert_eq!(daily.next_after(t), Some(Utc.with_ymd_and_hms(2025, 6, 2, 9, 0, 0).unwrap()));
//! assert_eq!(
//!     daily.prev_at_or_before(t, chrono::Duration::hours(1)),
//!     Some(Utc.with_ymd_and_hms(2025, 6, 1, 9, 0, 0).unwrap()),
//! );
//!
//! let err = CronSchedule::parse("61 * * * *").unwrap_err();
//! assert_eq!(err.to_string(), "minute field \"61\": 61 is out of range 0-59");
//! ```
#![forbid(unsafe_code)]

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Datelike, Duration, NaiveDate, NaiveDateTime, Timelike, Utc};

mod parse;
#[cfg(test)]
mod tests;

/// One of the five fields of a cron expression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CronField {
    Minute,
    Hour,
    DayOfMonth,
    Month,
    DayOfWeek,
}

impl fmt::Display for CronField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CronField::Minute => "minute",
            CronField::Hour => "hour",
            CronField::DayOfMonth => "day-of-month",
            CronField::Month => "month",
            CronField::DayOfWeek => "day-of-week",
        })
    }
}

/// What is wrong inside one field; see [`CronError::Field`].
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum FieldProblem {
    #[error("empty list item (a list looks like 1,2,3)")]
    EmptyItem,
    #[error("{item:?} is missing a value (allowed values: {allowed})")]
    MissingValue { item: String, allowed: &'static str },
    #[error("{value:?} is not a valid value (allowed values: {allowed})")]
    InvalidValue {
        value: String,
        allowed: &'static str,
    },
    #[error("{value} is out of range {min}-{max}")]
    OutOfRange { value: String, min: u32, max: u32 },
    #[error("range {start}-{end} is reversed (the start must not exceed the end)")]
    ReversedRange { start: String, end: String },
    #[error("{item:?} is missing the step after \"/\"")]
    MissingStep { item: String },
    #[error("step {step:?} is not a number (a step looks like */15)")]
    InvalidStep { step: String },
    #[error("step {step} is out of range 1-{max}")]
    StepOutOfRange { step: String, max: u32 },
    #[error("{item:?} has more than one \"/\"")]
    TooManySlashes { item: String },
}

/// Why an expression was rejected.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum CronError {
    #[error(
        "empty cron expression: expected 5 fields (minute hour day-of-month month day-of-week) \
         or a macro such as @daily"
    )]
    Empty,
    #[error("expected 5 fields (minute hour day-of-month month day-of-week), got {0}")]
    FieldCount(usize),
    #[error(
        "{0} is not supported: schedules fire at times, not at start-up; use 5 fields or one of \
         @yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly"
    )]
    Reboot(String),
    #[error(
        "unknown macro {0:?}: allowed macros are @yearly, @annually, @monthly, @weekly, @daily, \
         @midnight, @hourly"
    )]
    UnknownMacro(String),
    #[error("macro {name} must stand alone, got extra text {extra:?}")]
    MacroWithFields { name: String, extra: String },
    #[error("{field} field {text:?}: {problem}")]
    Field {
        field: CronField,
        text: String,
        problem: FieldProblem,
    },
}

/// A parsed cron expression.
///
/// Equality compares the normalised text ([`CronSchedule::as_str`]) along with
/// the sets it denotes, so `0 0 * * 0` and `0 0 * * 7` are different values
/// that fire at the same times.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CronSchedule {
    /// Normalised text: fields joined by one space, names upper-cased, macros
    /// expanded.
    expr: String,
    /// Bit `i` set when value `i` is allowed.
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    /// Sunday is bit 0; a parsed 7 is folded into it.
    weekdays: u64,
    /// Both day fields restricted: a day matches when either does (Vixie rule).
    days_either: bool,
}

/// Years searched ahead or back: one full Gregorian cycle (400 years) and a
/// margin, so whatever fires at all is found.
const SEARCH_YEARS: i32 = 401;

impl CronSchedule {
    /// Parses a 5-field expression or a macro; see the crate docs for the syntax.
    pub fn parse(expr: &str) -> Result<CronSchedule, CronError> {
        parse::parse(expr)
    }

    /// The normalised expression: the five fields joined by one space, month
    /// and weekday names upper-cased, a macro replaced by its five fields.
    pub fn as_str(&self) -> &str {
        &self.expr
    }

    /// The first firing time strictly after `t` (minute resolution; the
    /// seconds and nanoseconds of `t` are ignored, the result has 0 seconds).
    /// `None` only if the expression can never fire (e.g. `0 0 30 2 *`) or the
    /// next firing lies beyond what `chrono` can represent.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if !self.can_fire() {
            return None;
        }
        let start = truncate_to_minute(t.naive_utc()).checked_add_signed(Duration::minutes(1))?;
        let mut c = Cursor::from(start);
        let last_year = c.y + SEARCH_YEARS;
        loop {
            if c.y > last_year {
                return None;
            }
            if !has(self.months, c.mo) {
                match next_bit(self.months, c.mo + 1) {
                    Some(mo) => c.mo = mo,
                    None => {
                        c.y += 1;
                        c.mo = next_bit(self.months, 1)?;
                    }
                }
                (c.d, c.h, c.mi) = (1, 0, 0);
                continue;
            }
            if !self.day_matches(c.y, c.mo, c.d)? {
                c.next_day();
                continue;
            }
            match next_bit(self.hours, c.h) {
                Some(h) if h == c.h => {}
                Some(h) => (c.h, c.mi) = (h, 0),
                None => {
                    c.next_day();
                    continue;
                }
            }
            match next_bit(self.minutes, c.mi) {
                Some(mi) => c.mi = mi,
                None => {
                    c.next_hour();
                    continue;
                }
            }
            return c.to_utc();
        }
    }

    /// The latest firing time at or before `t` that is no earlier than
    /// `t - limit`; `None` if there is none in that window (or `limit` is
    /// negative). Seconds of `t` are ignored for the upper end: a firing at
    /// 09:00 is "at or before" 09:00:30.
    pub fn prev_at_or_before(&self, t: DateTime<Utc>, limit: Duration) -> Option<DateTime<Utc>> {
        if limit < Duration::zero() || !self.can_fire() {
            return None;
        }
        let t = t.naive_utc();
        // Firings are whole minutes, so the earliest allowed one is the floor
        // rounded up to a minute.
        let floor = t.checked_sub_signed(limit).unwrap_or(NaiveDateTime::MIN);
        let floor_min = truncate_to_minute(floor);
        let floor = if floor_min == floor {
            Cursor::from(floor)
        } else {
            Cursor::from(floor_min.checked_add_signed(Duration::minutes(1))?)
        };
        let mut c = Cursor::from(truncate_to_minute(t));
        let first_year = c.y - SEARCH_YEARS;
        loop {
            if c < floor || c.y < first_year {
                return None;
            }
            if !has(self.months, c.mo) {
                match prev_bit(self.months, c.mo - 1) {
                    Some(mo) => c.mo = mo,
                    None => {
                        c.y -= 1;
                        c.mo = prev_bit(self.months, 12)?;
                    }
                }
                (c.d, c.h, c.mi) = (days_in_month(c.y, c.mo), 23, 59);
                continue;
            }
            if !self.day_matches(c.y, c.mo, c.d)? {
                c.prev_day();
                continue;
            }
            match prev_bit(self.hours, c.h) {
                Some(h) if h == c.h => {}
                Some(h) => (c.h, c.mi) = (h, 59),
                None => {
                    c.prev_day();
                    continue;
                }
            }
            match prev_bit(self.minutes, c.mi) {
                Some(mi) => c.mi = mi,
                None => {
                    c.prev_hour();
                    continue;
                }
            }
            if c < floor {
                return None;
            }
            return c.to_utc();
        }
    }

    /// Whether the expression fires at all. The only way it cannot is a
    /// day-of-month that no allowed month has (`0 0 30 2 *`) while the
    /// day-of-week does not widen the match; a day-of-month that exists in some
    /// allowed month falls on every weekday within the 400-year cycle.
    fn can_fire(&self) -> bool {
        if self.days_either {
            return true;
        }
        let longest = (1..=12)
            .filter(|&mo| has(self.months, mo))
            .map(|mo| days_in_month(2000, mo))
            .max()
            .unwrap_or(0);
        next_bit(self.days, 1).is_some_and(|d| d <= longest)
    }

    /// Whether the day `y-mo-d` (a valid date of that month) matches both day
    /// fields under the Vixie rule; `None` outside chrono's range.
    fn day_matches(&self, y: i32, mo: u32, d: u32) -> Option<bool> {
        let date = NaiveDate::from_ymd_opt(y, mo, d)?;
        let dom = has(self.days, d);
        let dow = has(self.weekdays, date.weekday().num_days_from_sunday());
        Some(if self.days_either {
            dom || dow
        } else {
            dom && dow
        })
    }

    /// Whether the schedule fires at the minute containing `t`.
    #[cfg(test)]
    fn matches(&self, t: DateTime<Utc>) -> bool {
        has(self.months, t.month())
            && self.day_matches(t.year(), t.month(), t.day()) == Some(true)
            && has(self.hours, t.hour())
            && has(self.minutes, t.minute())
    }
}

impl FromStr for CronSchedule {
    type Err = CronError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CronSchedule::parse(s)
    }
}

impl fmt::Display for CronSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.expr)
    }
}

/// A calendar position at minute resolution. Field order makes the derived
/// ordering chronological.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Cursor {
    y: i32,
    mo: u32,
    d: u32,
    h: u32,
    mi: u32,
}

impl Cursor {
    fn from(n: NaiveDateTime) -> Cursor {
        Cursor {
            y: n.year(),
            mo: n.month(),
            d: n.day(),
            h: n.hour(),
            mi: n.minute(),
        }
    }

    fn to_utc(self) -> Option<DateTime<Utc>> {
        let n =
            NaiveDate::from_ymd_opt(self.y, self.mo, self.d)?.and_hms_opt(self.h, self.mi, 0)?;
        Some(n.and_utc())
    }

    /// 00:00 of the following day.
    fn next_day(&mut self) {
        (self.h, self.mi) = (0, 0);
        if self.d < days_in_month(self.y, self.mo) {
            self.d += 1;
            return;
        }
        self.d = 1;
        if self.mo < 12 {
            self.mo += 1;
        } else {
            (self.y, self.mo) = (self.y + 1, 1);
        }
    }

    /// Minute 0 of the following hour.
    fn next_hour(&mut self) {
        if self.h < 23 {
            (self.h, self.mi) = (self.h + 1, 0);
        } else {
            self.next_day();
        }
    }

    /// 23:59 of the previous day.
    fn prev_day(&mut self) {
        (self.h, self.mi) = (23, 59);
        if self.d > 1 {
            self.d -= 1;
            return;
        }
        if self.mo > 1 {
            self.mo -= 1;
        } else {
            (self.y, self.mo) = (self.y - 1, 12);
        }
        self.d = days_in_month(self.y, self.mo);
    }

    /// Minute 59 of the previous hour.
    fn prev_hour(&mut self) {
        if self.h > 0 {
            (self.h, self.mi) = (self.h - 1, 59);
        } else {
            self.prev_day();
        }
    }
}

fn truncate_to_minute(n: NaiveDateTime) -> NaiveDateTime {
    // Cannot fail: hour and minute come from a valid time.
    n.date().and_hms_opt(n.hour(), n.minute(), 0).unwrap_or(n)
}

fn is_leap(y: i32) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i32, mo: u32) -> u32 {
    match mo {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

fn has(mask: u64, i: u32) -> bool {
    i < 64 && mask & (1 << i) != 0
}

/// The smallest set bit `>= from`.
fn next_bit(mask: u64, from: u32) -> Option<u32> {
    if from >= 64 {
        return None;
    }
    let m = mask >> from;
    (m != 0).then(|| from + m.trailing_zeros())
}

/// The largest set bit `<= upto`.
fn prev_bit(mask: u64, upto: u32) -> Option<u32> {
    let m = if upto >= 63 {
        mask
    } else {
        mask & ((1 << (upto + 1)) - 1)
    };
    (m != 0).then(|| 63 - m.leading_zeros())
}
