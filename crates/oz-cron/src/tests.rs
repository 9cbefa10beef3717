use chrono::{DateTime, Datelike, Duration, NaiveDate, NaiveDateTime, Utc};

use super::*;

/// `"2025-06-01 10:00"` or `"2025-06-01 10:00:30"` as UTC.
fn at(s: &str) -> DateTime<Utc> {
    NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S")
        .or_else(|_| NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M"))
        .unwrap_or_else(|e| panic!("bad test time {s:?}: {e}"))
        .and_utc()
}

fn cron(s: &str) -> CronSchedule {
    CronSchedule::parse(s).unwrap_or_else(|e| panic!("{s:?} should parse: {e}"))
}

fn values(mask: u64) -> Vec<u32> {
    (0..64).filter(|&i| has(mask, i)).collect()
}

fn range(a: u32, b: u32) -> Vec<u32> {
    (a..=b).collect()
}

// ---------------------------------------------------------------- parsing

#[test]
fn parses_every_syntax_form() {
    // (field index, field text, values it denotes)
    let cases: Vec<(usize, &str, Vec<u32>)> = vec![
        (0, "*", range(0, 59)),
        (0, "0", vec![0]),
        (0, "59", vec![59]),
        (0, "05", vec![5]),
        (0, "10-15", range(10, 15)),
        (0, "7-7", vec![7]),
        (0, "1,5,7", vec![1, 5, 7]),
        (0, "*/15", vec![0, 15, 30, 45]),
        (0, "*/60", vec![0]),
        (0, "*/1", range(0, 59)),
        (0, "10-30/10", vec![10, 20, 30]),
        (0, "10-35/10", vec![10, 20, 30]),
        (0, "50/3", vec![50, 53, 56, 59]),
        (0, "5/1", range(5, 59)),
        (0, "1-5,*/20,58", vec![0, 1, 2, 3, 4, 5, 20, 40, 58]),
        (0, "3,3,3", vec![3]),
        (1, "*", range(0, 23)),
        (1, "23", vec![23]),
        (1, "*/6", vec![0, 6, 12, 18]),
        (1, "9-17/4", vec![9, 13, 17]),
        (1, "*/24", vec![0]),
        (2, "*", range(1, 31)),
        (2, "31", vec![31]),
        (2, "1,15", vec![1, 15]),
        (2, "*/10", vec![1, 11, 21, 31]),
        (2, "20/5", vec![20, 25, 30]),
        (3, "*", range(1, 12)),
        (3, "JAN", vec![1]),
        (3, "dec", vec![12]),
        (3, "Feb-Apr", vec![2, 3, 4]),
        (3, "1-12", range(1, 12)),
        (3, "*/3", vec![1, 4, 7, 10]),
        (3, "JAN-DEC/6", vec![1, 7]),
        (3, "jun,8,OCT", vec![6, 8, 10]),
        (3, "mar/4", vec![3, 7, 11]),
        (4, "*", range(0, 6)),
        (4, "0", vec![0]),
        (4, "7", vec![0]),
        (4, "0,7", vec![0]),
        (4, "SUN", vec![0]),
        (4, "sat", vec![6]),
        (4, "MON-FRI", range(1, 5)),
        (4, "mon-5", range(1, 5)),
        (4, "5-7", vec![0, 5, 6]),
        (4, "0-7", range(0, 6)),
        (4, "sun-sat", range(0, 6)),
        (4, "1/2", vec![0, 1, 3, 5]),
        (4, "*/2", vec![0, 2, 4, 6]),
        (4, "*/7", vec![0]),
        (4, "wed,Fri", vec![3, 5]),
    ];
    for (i, text, want) in cases {
        let mut fields = ["*"; 5];
        fields[i] = text;
        let expr = fields.join(" ");
        let s = cron(&expr);
        let masks = [s.minutes, s.hours, s.days, s.months, s.weekdays];
        assert_eq!(values(masks[i]), want, "field {i} of {expr:?}");
        for (j, &mask) in masks.iter().enumerate() {
            if j != i {
                let full = [
                    range(0, 59),
                    range(0, 23),
                    range(1, 31),
                    range(1, 12),
                    range(0, 6),
                ];
                assert_eq!(values(mask), full[j], "untouched field {j} of {expr:?}");
            }
        }
    }
}

#[test]
fn day_fields_combine_by_the_vixie_rule() {
    // (expression, whether a day matches when either day field matches)
    let cases = [
        ("0 0 13 * FRI", true),
        ("0 0 1,15 * 1-5", true),
        ("0 0 13 * *", false),
        ("0 0 * * FRI", false),
        ("0 0 * * *", false),
        // A field starting with '*' counts as unrestricted, as in Vixie cron.
        ("0 0 */2 * MON", false),
        ("0 0 1-7 * */7", false),
        ("0 0 1,*/2 * MON", true),
    ];
    for (expr, either) in cases {
        assert_eq!(cron(expr).days_either, either, "{expr}");
    }
}

#[test]
fn normalises_the_text() {
    let cases = [
        ("0 9 * * *", "0 9 * * *"),
        ("  0\t9   *  * *  \n", "0 9 * * *"),
        ("0 9 * jan mon-fri", "0 9 * JAN MON-FRI"),
        (
            "*/5 1-3 1,15 Feb-dec/2 sun,7",
            "*/5 1-3 1,15 FEB-DEC/2 SUN,7",
        ),
        ("@yearly", "0 0 1 1 *"),
        ("@annually", "0 0 1 1 *"),
        ("@monthly", "0 0 1 * *"),
        ("@weekly", "0 0 * * 0"),
        ("@daily", "0 0 * * *"),
        ("@midnight", "0 0 * * *"),
        ("@hourly", "0 * * * *"),
        ("@DAILY", "0 0 * * *"),
        ("  @Hourly ", "0 * * * *"),
    ];
    for (input, want) in cases {
        let s = cron(input);
        assert_eq!(s.as_str(), want, "{input:?}");
        assert_eq!(s.to_string(), want, "{input:?}");
        // The normalised text parses back to the same schedule.
        assert_eq!(cron(s.as_str()), s, "{input:?}");
    }
    assert_eq!(cron("@daily"), cron("0 0 * * *"));
    assert_eq!(cron("0 9 * * mon"), cron("0 9 * * MON"));
}

#[test]
fn from_str_and_display() {
    let s: CronSchedule = "0  9 * * *".parse().expect("parses");
    assert_eq!(s.to_string(), "0 9 * * *");
    assert_eq!(format!("{s}"), s.as_str());
    let e = "0 9 * *".parse::<CronSchedule>().expect_err("4 fields");
    assert_eq!(e, CronError::FieldCount(4));
}

#[test]
fn rejects_bad_expressions_with_clear_messages() {
    // (expression, pieces the message must contain)
    let cases: &[(&str, &[&str])] = &[
        ("", &["empty cron expression", "5 fields"]),
        ("  \t ", &["empty cron expression"]),
        (
            "0 9 * *",
            &["expected 5 fields (minute hour day-of-month month day-of-week), got 4"],
        ),
        ("0 9 * * * *", &["expected 5 fields", "got 6"]),
        ("0", &["got 1"]),
        ("@reboot", &["@reboot is not supported", "@daily"]),
        ("@REBOOT", &["@REBOOT is not supported"]),
        ("@every 5m", &["unknown macro \"@every\"", "@hourly"]),
        ("@dayly", &["unknown macro \"@dayly\""]),
        ("@daily 0", &["macro @daily must stand alone", "\"0\""]),
        (
            "61 * * * *",
            &["minute field \"61\": 61 is out of range 0-59"],
        ),
        (
            "0-60 * * * *",
            &["minute field \"0-60\": 60 is out of range 0-59"],
        ),
        ("99999999999 * * * *", &["99999999999 is out of range 0-59"]),
        (
            "* 24 * * *",
            &["hour field \"24\": 24 is out of range 0-23"],
        ),
        (
            "* * 0 * *",
            &["day-of-month field \"0\": 0 is out of range 1-31"],
        ),
        (
            "* * 32 * *",
            &["day-of-month field \"32\": 32 is out of range 1-31"],
        ),
        ("* * * 0 *", &["month field \"0\": 0 is out of range 1-12"]),
        (
            "* * * 13 *",
            &["month field \"13\": 13 is out of range 1-12"],
        ),
        (
            "* * * * 8",
            &["day-of-week field \"8\": 8 is out of range 0-7"],
        ),
        (
            "*/0 * * * *",
            &["minute field \"*/0\": step 0 is out of range 1-60"],
        ),
        (
            "* 0-12/0 * * *",
            &["hour field", "step 0 is out of range 1-24"],
        ),
        ("*/61 * * * *", &["step 61 is out of range 1-60"]),
        (
            "* * * */13 *",
            &["month field", "step 13 is out of range 1-12"],
        ),
        (
            "*/99999999999 * * * *",
            &["step 99999999999 is out of range 1-60"],
        ),
        ("*/ * * * *", &["minute field \"*/\"", "missing the step"]),
        ("*/x * * * *", &["step \"x\" is not a number"]),
        ("*/-1 * * * *", &["step \"-1\" is not a number"]),
        ("1/2/3 * * * *", &["\"1/2/3\" has more than one \"/\""]),
        (
            "5-1 * * * *",
            &["minute field \"5-1\": range 5-1 is reversed"],
        ),
        (
            "* * * * FRI-MON",
            &["day-of-week field", "range FRI-MON is reversed"],
        ),
        (
            "* * * DEC-JAN *",
            &["month field", "range DEC-JAN is reversed"],
        ),
        ("* * * * 7-1", &["range 7-1 is reversed"]),
        ("1,,2 * * * *", &["minute field \"1,,2\": empty list item"]),
        (",1 * * * *", &["empty list item"]),
        ("1, * * * *", &["empty list item"]),
        (
            "1- * * * *",
            &["\"1-\" is missing a value (allowed values: 0-59)"],
        ),
        ("-1 * * * *", &["\"-1\" is missing a value"]),
        ("/5 * * * *", &["\"/5\" is missing a value"]),
        (
            "* * * * SUN-",
            &["day-of-week field", "missing a value", "SUN-SAT"],
        ),
        (
            "abc * * * *",
            &["minute field \"abc\": \"abc\" is not a valid value (allowed values: 0-59)"],
        ),
        (
            "* * * FOO *",
            &["month field", "\"FOO\" is not a valid value", "JAN-DEC"],
        ),
        ("* * * JANUARY *", &["\"JANUARY\" is not a valid value"]),
        (
            "* * * * MONDAY",
            &["day-of-week field", "\"MONDAY\"", "SUN-SAT"],
        ),
        (
            "JAN * * * *",
            &["minute field", "\"JAN\" is not a valid value"],
        ),
        (
            "* * * MON *",
            &["month field", "\"MON\" is not a valid value"],
        ),
        (
            "* * * * JAN",
            &["day-of-week field", "\"JAN\" is not a valid value"],
        ),
        ("*-5 * * * *", &["\"*\" is not a valid value"]),
        ("+5 * * * *", &["\"+5\" is not a valid value"]),
        ("1.5 * * * *", &["\"1.5\" is not a valid value"]),
        ("1-2-3 * * * *", &["\"2-3\" is not a valid value"]),
        ("? * * * *", &["\"?\" is not a valid value"]),
        (
            "* * L * *",
            &["day-of-month field", "\"L\" is not a valid value"],
        ),
        ("* * 15W * *", &["\"15W\" is not a valid value"]),
        ("* * * * 5#2", &["\"5#2\" is not a valid value"]),
        (
            "0 9 * * @daily",
            &["day-of-week field", "\"@daily\" is not a valid value"],
        ),
    ];
    for &(expr, pieces) in cases {
        let err = match CronSchedule::parse(expr) {
            Ok(s) => panic!("{expr:?} should be rejected, parsed as {s:?}"),
            Err(e) => e.to_string(),
        };
        for piece in pieces {
            assert!(
                err.contains(piece),
                "{expr:?}: {err:?} should contain {piece:?}"
            );
        }
    }
}

#[test]
fn errors_are_structured() {
    assert_eq!(
        CronSchedule::parse("61 * * * *"),
        Err(CronError::Field {
            field: CronField::Minute,
            text: "61".to_string(),
            problem: FieldProblem::OutOfRange {
                value: "61".to_string(),
                min: 0,
                max: 59,
            },
        })
    );
    assert_eq!(
        CronSchedule::parse("@reboot"),
        Err(CronError::Reboot("@reboot".to_string()))
    );
    assert_eq!(CronSchedule::parse(" "), Err(CronError::Empty));
}

// ---------------------------------------------------------------- next_after

#[test]
fn next_after_cases() {
    // (expression, from, expected next firing)
    let cases = [
        // Strictly after; seconds of `from` ignored.
        ("0 9 * * *", "2025-01-01 08:00", "2025-01-01 09:00"),
        ("0 9 * * *", "2025-01-01 08:59:59", "2025-01-01 09:00"),
        ("0 9 * * *", "2025-01-01 09:00", "2025-01-02 09:00"),
        ("0 9 * * *", "2025-01-01 09:00:30", "2025-01-02 09:00"),
        ("* * * * *", "2025-06-01 10:00", "2025-06-01 10:01"),
        ("* * * * *", "2025-06-01 10:00:59", "2025-06-01 10:01"),
        ("* * * * *", "2025-12-31 23:59:59", "2026-01-01 00:00"),
        // Month ends.
        ("0 0 31 * *", "2025-01-31 23:59", "2025-03-31 00:00"),
        ("0 0 31 * *", "2025-03-31 00:00", "2025-05-31 00:00"),
        ("0 0 31 * *", "2025-12-31 00:00", "2026-01-31 00:00"),
        ("0 0 30 * *", "2025-01-30 00:00", "2025-03-30 00:00"),
        ("0 0 30 * *", "2024-01-30 00:00", "2024-03-30 00:00"),
        ("0 0 29 * *", "2025-01-29 00:00", "2025-03-29 00:00"),
        ("0 0 29 * *", "2024-01-29 00:00", "2024-02-29 00:00"),
        // Leap days, up to 8 years apart, and beyond with a weekday.
        ("0 12 29 2 *", "2025-01-01 00:00", "2028-02-29 12:00"),
        ("0 12 29 2 *", "2024-02-29 11:59:59", "2024-02-29 12:00"),
        ("0 12 29 2 *", "2024-02-29 12:00", "2028-02-29 12:00"),
        ("0 0 29 2 *", "2096-02-29 00:00", "2104-02-29 00:00"),
        ("0 0 29 2 */7", "2025-01-01 00:00", "2032-02-29 00:00"),
        ("0 0 29 2 */7", "2088-02-29 00:00", "2128-02-29 00:00"),
        // Year rollover.
        ("0 0 1 1 *", "2025-12-31 23:59", "2026-01-01 00:00"),
        ("0 0 1 1 *", "2026-01-01 00:00", "2027-01-01 00:00"),
        ("59 23 31 12 *", "2025-12-31 23:58:59", "2025-12-31 23:59"),
        ("59 23 31 12 *", "2025-12-31 23:59", "2026-12-31 23:59"),
        ("0 0 1 JAN,JUL *", "2025-02-01 00:00", "2025-07-01 00:00"),
        ("0 0 1 JAN,JUL *", "2025-07-01 00:00", "2026-01-01 00:00"),
        // Day-of-month OR day-of-week when both are restricted (2025-06-01 is a Sunday).
        ("0 0 13 * FRI", "2025-06-01 00:00", "2025-06-06 00:00"),
        ("0 0 13 * FRI", "2025-06-06 00:00", "2025-06-13 00:00"),
        ("0 0 13 * FRI", "2025-06-13 00:00", "2025-06-20 00:00"),
        ("0 0 13 * FRI", "2025-07-11 00:00", "2025-07-13 00:00"),
        ("0 0 1 * MON", "2025-08-30 00:00", "2025-09-01 00:00"),
        ("0 0 1 * MON", "2025-09-01 00:00", "2025-09-08 00:00"),
        ("0 0 1 * MON", "2025-09-29 00:00", "2025-10-01 00:00"),
        // Only the restricted one counts when the other is '*'.
        ("0 0 13 * *", "2025-06-01 00:00", "2025-06-13 00:00"),
        ("0 0 * * FRI", "2025-06-07 00:00", "2025-06-13 00:00"),
        // '*/2' counts as unrestricted: both must match (Mondays on odd days).
        ("0 0 */2 * MON", "2025-06-01 00:00", "2025-06-09 00:00"),
        ("0 0 */2 * MON", "2025-06-09 00:00", "2025-06-23 00:00"),
        ("0 0 */2 * MON", "2025-06-23 00:00", "2025-07-07 00:00"),
        // Sunday as 0, 7 and SUN (2025-06-07 is a Saturday).
        ("0 12 * * 0", "2025-06-07 13:00", "2025-06-08 12:00"),
        ("0 12 * * 7", "2025-06-07 13:00", "2025-06-08 12:00"),
        ("0 12 * * sun", "2025-06-07 13:00", "2025-06-08 12:00"),
        ("0 12 * * 7", "2025-06-08 12:00", "2025-06-15 12:00"),
        ("0 0 * * MON-FRI", "2025-06-06 00:00", "2025-06-09 00:00"),
        // Steps.
        ("*/15 * * * *", "2025-06-01 23:50", "2025-06-02 00:00"),
        ("0 8-18/4 * * *", "2025-06-01 16:00", "2025-06-02 08:00"),
        ("0 0 */10 * *", "2025-02-21 00:00", "2025-03-01 00:00"),
        ("0 0 */10 * *", "2025-01-21 00:00", "2025-01-31 00:00"),
        // Macros.
        ("@hourly", "2025-06-01 10:00", "2025-06-01 11:00"),
        ("@daily", "2025-06-01 10:00", "2025-06-02 00:00"),
        ("@midnight", "2025-06-01 23:59:59", "2025-06-02 00:00"),
        ("@weekly", "2025-06-01 00:00", "2025-06-08 00:00"),
        ("@monthly", "2025-01-31 00:00", "2025-02-01 00:00"),
        ("@yearly", "2025-01-01 00:00", "2026-01-01 00:00"),
        ("@annually", "2024-12-31 23:59", "2025-01-01 00:00"),
    ];
    for (expr, from, want) in cases {
        assert_eq!(
            cron(expr).next_after(at(from)),
            Some(at(want)),
            "{expr:?} after {from}"
        );
    }
}

#[test]
fn next_after_sequences() {
    // (expression, from, the next firings in order)
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "*/15 * * * *",
            "2025-06-01 10:00",
            &[
                "2025-06-01 10:15",
                "2025-06-01 10:30",
                "2025-06-01 10:45",
                "2025-06-01 11:00",
            ],
        ),
        (
            "30 */6 * * *",
            "2025-06-01 00:00",
            &[
                "2025-06-01 00:30",
                "2025-06-01 06:30",
                "2025-06-01 12:30",
                "2025-06-01 18:30",
                "2025-06-02 00:30",
            ],
        ),
        (
            "0 8-18/4 * * *",
            "2025-06-01 00:00",
            &[
                "2025-06-01 08:00",
                "2025-06-01 12:00",
                "2025-06-01 16:00",
                "2025-06-02 08:00",
            ],
        ),
        (
            "0 0 * * 5-7",
            "2025-06-05 12:00",
            &[
                "2025-06-06 00:00",
                "2025-06-07 00:00",
                "2025-06-08 00:00",
                "2025-06-13 00:00",
            ],
        ),
        (
            "0 0 31 * *",
            "2025-01-01 00:00",
            &[
                "2025-01-31 00:00",
                "2025-03-31 00:00",
                "2025-05-31 00:00",
                "2025-07-31 00:00",
                "2025-08-31 00:00",
            ],
        ),
    ];
    for &(expr, from, want) in cases {
        let s = cron(expr);
        let mut t = at(from);
        for w in want {
            let next = s.next_after(t);
            assert_eq!(next, Some(at(w)), "{expr:?} after {t}");
            t = at(w);
        }
    }
}

#[test]
fn results_have_zero_seconds() {
    let s = cron("*/7 * * * *");
    let t = at("2025-06-01 10:03:41") + Duration::nanoseconds(123_456_789);
    let next = s.next_after(t).expect("fires");
    assert_eq!(next, at("2025-06-01 10:07"));
    assert_eq!(next.timestamp_subsec_nanos(), 0);
    let prev = s.prev_at_or_before(t, Duration::hours(1)).expect("fired");
    assert_eq!(prev, at("2025-06-01 10:00"));
}

const IMPOSSIBLE: &[&str] = &[
    "0 0 30 2 *",
    "0 0 31 2 *",
    "0 0 30,31 FEB *",
    "0 0 31 4,6,9,11 *",
    "* * 31 FEB-APR/2 *",
    // '*/2' leaves the AND rule in force, so the weekday cannot help.
    "0 0 31 2 */2",
];

#[test]
fn impossible_expressions_never_fire() {
    for expr in IMPOSSIBLE {
        let s = cron(expr);
        assert!(!s.can_fire(), "{expr}");
        assert_eq!(s.next_after(at("2025-01-01 00:00")), None, "{expr}");
        assert_eq!(
            s.prev_at_or_before(at("2025-01-01 00:00"), Duration::MAX),
            None,
            "{expr}"
        );
    }
    // With both day fields restricted the weekday alone makes it fire.
    let s = cron("0 0 31 2 MON");
    assert!(s.can_fire());
    assert_eq!(
        s.next_after(at("2025-01-01 00:00")),
        Some(at("2025-02-03 00:00"))
    );
    // Rare but possible expressions are not mistaken for impossible ones.
    for expr in ["0 0 29 2 *", "0 0 29 2 */7", "0 0 31 * *", "0 0 30 1-2 *"] {
        assert!(cron(expr).can_fire(), "{expr}");
    }
}

#[test]
fn ends_of_chrono_range_give_none_not_panics() {
    let daily = cron("0 0 * * *");
    assert_eq!(daily.next_after(DateTime::<Utc>::MAX_UTC), None);
    assert_eq!(
        cron("0 0 1 1 *").next_after(DateTime::<Utc>::MAX_UTC - Duration::days(2)),
        None
    );
    assert_eq!(
        cron("0 0 2 1 *").prev_at_or_before(DateTime::<Utc>::MIN_UTC, Duration::MAX),
        None
    );
    // The very first representable minute is itself a firing of a daily schedule.
    assert_eq!(
        daily.prev_at_or_before(DateTime::<Utc>::MIN_UTC, Duration::MAX),
        Some(DateTime::<Utc>::MIN_UTC)
    );
    assert_eq!(
        daily.prev_at_or_before(at("2025-06-01 10:00"), Duration::MAX),
        Some(at("2025-06-01 00:00"))
    );
}

// ---------------------------------------------------------------- prev_at_or_before

#[test]
fn prev_at_or_before_cases() {
    let d = Duration::days;
    let h = Duration::hours;
    let m = Duration::minutes;
    let s = Duration::seconds;
    // (expression, t, limit, expected)
    let cases: Vec<(&str, &str, Duration, Option<&str>)> = vec![
        (
            "0 9 * * *",
            "2025-06-10 10:00",
            d(1),
            Some("2025-06-10 09:00"),
        ),
        // At or before: t on a firing returns it, even with no window.
        (
            "0 9 * * *",
            "2025-06-10 09:00",
            m(0),
            Some("2025-06-10 09:00"),
        ),
        (
            "0 9 * * *",
            "2025-06-10 09:00:45",
            s(45),
            Some("2025-06-10 09:00"),
        ),
        ("0 9 * * *", "2025-06-10 09:00:45", s(44), None),
        // The window is inclusive at its far end.
        (
            "0 9 * * *",
            "2025-06-10 10:00",
            h(1),
            Some("2025-06-10 09:00"),
        ),
        ("0 9 * * *", "2025-06-10 10:00", m(59), None),
        ("0 9 * * *", "2025-06-10 08:59", h(1), None),
        (
            "0 9 * * *",
            "2025-06-10 08:59",
            h(24),
            Some("2025-06-09 09:00"),
        ),
        ("0 9 * * *", "2025-06-10 10:00", m(-1), None),
        // Month, year and leap-day boundaries.
        (
            "0 0 31 * *",
            "2025-03-01 00:00",
            d(60),
            Some("2025-01-31 00:00"),
        ),
        ("0 0 31 * *", "2025-03-01 00:00", d(20), None),
        (
            "0 0 30 * *",
            "2025-03-29 00:00",
            d(60),
            Some("2025-01-30 00:00"),
        ),
        (
            "0 0 1 1 *",
            "2025-06-01 00:00",
            d(366),
            Some("2025-01-01 00:00"),
        ),
        (
            "59 23 * * *",
            "2026-01-01 00:00",
            m(1),
            Some("2025-12-31 23:59"),
        ),
        (
            "59 23 31 12 *",
            "2026-06-01 00:00",
            d(365),
            Some("2025-12-31 23:59"),
        ),
        (
            "0 12 29 2 *",
            "2028-01-01 00:00",
            d(3660),
            Some("2024-02-29 12:00"),
        ),
        (
            "0 12 29 2 *",
            "2028-02-29 12:00:59",
            m(1),
            Some("2028-02-29 12:00"),
        ),
        ("0 12 29 2 *", "2028-02-29 11:59", d(365 * 3), None),
        (
            "0 0 29 2 */7",
            "2127-12-31 00:00",
            Duration::MAX,
            Some("2088-02-29 00:00"),
        ),
        // Steps, names and the day rules.
        (
            "*/15 * * * *",
            "2025-06-01 10:14:59",
            m(15),
            Some("2025-06-01 10:00"),
        ),
        (
            "*/15 * * * *",
            "2025-06-01 00:10",
            m(15),
            Some("2025-06-01 00:00"),
        ),
        (
            "*/15 * * * *",
            "2025-06-01 00:10",
            m(10),
            Some("2025-06-01 00:00"),
        ),
        ("*/15 * * * *", "2025-06-01 00:10", m(9), None),
        (
            "30 8-18/2 * * MON-FRI",
            "2025-06-09 07:00",
            d(7),
            Some("2025-06-06 18:30"),
        ),
        (
            "0 0 13 * FRI",
            "2025-06-12 00:00",
            d(30),
            Some("2025-06-06 00:00"),
        ),
        (
            "0 0 13 * FRI",
            "2025-07-14 00:00",
            d(30),
            Some("2025-07-13 00:00"),
        ),
        (
            "0 0 */2 * MON",
            "2025-06-22 00:00",
            d(30),
            Some("2025-06-09 00:00"),
        ),
        (
            "0 12 * * 7",
            "2025-06-14 00:00",
            d(7),
            Some("2025-06-08 12:00"),
        ),
        (
            "@weekly",
            "2025-06-07 23:59",
            d(7),
            Some("2025-06-01 00:00"),
        ),
    ];
    for (expr, t, limit, want) in cases {
        assert_eq!(
            cron(expr).prev_at_or_before(at(t), limit),
            want.map(at),
            "{expr:?} at or before {t} within {limit}"
        );
    }
}

// ---------------------------------------------------------------- against brute force

/// Checks `next_after` and `prev_at_or_before` against a minute-by-minute scan.
#[test]
fn agrees_with_a_minute_by_minute_scan() {
    let exprs = [
        "* * * * *",
        "*/15 * * * *",
        "0 9 * * *",
        "30 8-18/2 * * MON-FRI",
        "0 0 13 * FRI",
        "0 0 */2 * MON",
        "0 0 1 * MON",
        "0 12 * * 0",
        "15 3 31 * *",
        "0 0 29,30 * *",
        "5,35 */5 * JAN,FEB,DEC SUN",
        "0 0 * * 5-7",
        "59 23 * * *",
        "0 0 1-7 * MON",
        "0 0 1-7 * */7",
        "*/20 * 28-31 2 *",
        "7 7 7 * 7",
        "@monthly",
    ];
    let starts = ["2023-12-20 00:00", "2024-02-10 13:17", "2025-02-10 00:00"];
    let window = Duration::days(45);
    for expr in exprs {
        let s = cron(expr);
        for start in starts {
            let start = at(start);
            let end = start + window;
            let mut firings = Vec::new();
            let mut t = start;
            while t < end {
                if s.matches(t) {
                    firings.push(t);
                }
                t += Duration::minutes(1);
            }
            // next_after walks the same sequence.
            let mut cur = start - Duration::minutes(1);
            for &f in &firings {
                assert_eq!(s.next_after(cur), Some(f), "{expr:?} after {cur}");
                assert_eq!(
                    s.next_after(f - Duration::seconds(1)),
                    Some(f),
                    "{expr:?} just before {f}"
                );
                cur = f;
            }
            let after = s.next_after(cur).expect("fires again");
            assert!(after >= end, "{expr:?}: {after} was missed by the scan");
            // prev_at_or_before walks it backwards.
            for (i, &f) in firings.iter().enumerate() {
                assert_eq!(
                    s.prev_at_or_before(f, Duration::zero()),
                    Some(f),
                    "{expr:?} at {f}"
                );
                let later = f + Duration::seconds(59);
                assert_eq!(
                    s.prev_at_or_before(later, window),
                    Some(f),
                    "{expr:?} at {later}"
                );
                if i > 0 {
                    let before = f - Duration::minutes(1);
                    assert_eq!(
                        s.prev_at_or_before(before, window),
                        Some(firings[i - 1]),
                        "{expr:?} at {before}"
                    );
                }
            }
            // Times in between firings, at uneven offsets, see both neighbours.
            for pair in firings.windows(2) {
                let (a, b) = (pair[0], pair[1]);
                if b - a == Duration::minutes(1) {
                    continue; // nothing in between
                }
                for k in 1..7 {
                    let probe = a + (b - a) * k / 7 + Duration::seconds(17);
                    if probe >= b {
                        continue;
                    }
                    assert_eq!(s.next_after(probe), Some(b), "{expr:?} after {probe}");
                    assert_eq!(
                        s.prev_at_or_before(probe, window),
                        Some(a),
                        "{expr:?} at {probe}"
                    );
                }
            }
        }
    }
}

#[test]
fn leap_day_weekday_schedule_matches_the_calendar() {
    // Every Feb 29 that is a Sunday from 2000 to 2400, found one after another.
    let want: Vec<DateTime<Utc>> = (2000..2400)
        .filter_map(|y| NaiveDate::from_ymd_opt(y, 2, 29))
        .filter(|d| d.weekday().num_days_from_sunday() == 0)
        .filter_map(|d| d.and_hms_opt(0, 0, 0))
        .map(|n| n.and_utc())
        .collect();
    assert!(want.len() > 10);
    let s = cron("0 0 29 2 */7");
    let mut t = at("1999-12-31 23:59");
    for w in want {
        let next = s.next_after(t);
        assert_eq!(next, Some(w), "after {t}");
        t = w;
    }
}
