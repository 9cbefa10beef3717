//! Text to [`CronSchedule`]: macros, fields, list items, ranges and steps.

use crate::{CronError, CronField, CronSchedule, FieldProblem};

/// The limits and names of one field.
struct Spec {
    field: CronField,
    min: u32,
    max: u32,
    /// Names for `min`, `min + 1`, ... (upper-case; matched case-insensitively).
    names: &'static [&'static str],
    /// Shown in errors.
    allowed: &'static str,
}

const MONTHS: &[&str] = &[
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const WEEKDAYS: &[&str] = &["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

const SPECS: [Spec; 5] = [
    Spec {
        field: CronField::Minute,
        min: 0,
        max: 59,
        names: &[],
        allowed: "0-59",
    },
    Spec {
        field: CronField::Hour,
        min: 0,
        max: 23,
        names: &[],
        allowed: "0-23",
    },
    Spec {
        field: CronField::DayOfMonth,
        min: 1,
        max: 31,
        names: &[],
        allowed: "1-31",
    },
    Spec {
        field: CronField::Month,
        min: 1,
        max: 12,
        names: MONTHS,
        allowed: "1-12 or JAN-DEC",
    },
    Spec {
        field: CronField::DayOfWeek,
        min: 0,
        max: 7,
        names: WEEKDAYS,
        allowed: "0-7 (0 and 7 are Sunday) or SUN-SAT",
    },
];

const MACROS: &[(&str, &str)] = &[
    ("@yearly", "0 0 1 1 *"),
    ("@annually", "0 0 1 1 *"),
    ("@monthly", "0 0 1 * *"),
    ("@weekly", "0 0 * * 0"),
    ("@daily", "0 0 * * *"),
    ("@midnight", "0 0 * * *"),
    ("@hourly", "0 * * * *"),
];

pub(crate) fn parse(expr: &str) -> Result<CronSchedule, CronError> {
    let tokens: Vec<&str> = expr.split_whitespace().collect();
    let Some(&first) = tokens.first() else {
        return Err(CronError::Empty);
    };
    if first.starts_with('@') {
        let name = first.to_ascii_lowercase();
        if name == "@reboot" {
            return Err(CronError::Reboot(first.to_string()));
        }
        let Some(&(_, fields)) = MACROS.iter().find(|(m, _)| *m == name) else {
            return Err(CronError::UnknownMacro(first.to_string()));
        };
        if tokens.len() > 1 {
            return Err(CronError::MacroWithFields {
                name: first.to_string(),
                extra: tokens[1..].join(" "),
            });
        }
        return parse_fields(&fields.split(' ').collect::<Vec<_>>());
    }
    if tokens.len() != 5 {
        return Err(CronError::FieldCount(tokens.len()));
    }
    parse_fields(&tokens)
}

/// Parses exactly five field texts.
fn parse_fields(tokens: &[&str]) -> Result<CronSchedule, CronError> {
    let mut masks = [0u64; 5];
    let mut normalised = Vec::with_capacity(5);
    for ((spec, &text), mask) in SPECS.iter().zip(tokens).zip(&mut masks) {
        *mask = parse_field(spec, text).map_err(|problem| CronError::Field {
            field: spec.field,
            text: text.to_string(),
            problem,
        })?;
        normalised.push(if spec.names.is_empty() {
            text.to_string()
        } else {
            text.to_ascii_uppercase()
        });
    }
    let [minutes, hours, days, months, mut weekdays] = masks;
    if weekdays & (1 << 7) != 0 {
        weekdays = (weekdays & !(1 << 7)) | 1;
    }
    // Vixie's test for an unrestricted day field is its first character.
    let dom_star = tokens[2].starts_with('*');
    let dow_star = tokens[4].starts_with('*');
    Ok(CronSchedule {
        expr: normalised.join(" "),
        minutes,
        hours,
        days,
        months,
        weekdays,
        days_either: !dom_star && !dow_star,
    })
}

/// One field: a comma-separated list of items, as a bit set of values.
fn parse_field(spec: &Spec, text: &str) -> Result<u64, FieldProblem> {
    text.split(',')
        .try_fold(0, |mask, item| Ok(mask | parse_item(spec, item)?))
}

/// One list item: `*`, `a`, `a-b`, each optionally followed by `/step`.
fn parse_item(spec: &Spec, item: &str) -> Result<u64, FieldProblem> {
    if item.is_empty() {
        return Err(FieldProblem::EmptyItem);
    }
    let (base, step) = match item.split_once('/') {
        None => (item, None),
        Some((_, step)) if step.contains('/') => {
            return Err(FieldProblem::TooManySlashes {
                item: item.to_string(),
            });
        }
        Some((base, step)) => (base, Some(parse_step(spec, item, step)?)),
    };
    let (lo, hi) = if base == "*" {
        (spec.min, spec.max)
    } else if let Some((a, b)) = base.split_once('-') {
        let (lo, hi) = (value(spec, item, a)?, value(spec, item, b)?);
        if lo > hi {
            return Err(FieldProblem::ReversedRange {
                start: a.to_string(),
                end: b.to_string(),
            });
        }
        (lo, hi)
    } else {
        let a = value(spec, item, base)?;
        // `a/n` means `a-max/n`.
        (a, if step.is_some() { spec.max } else { a })
    };
    Ok((lo..=hi)
        .step_by(step.unwrap_or(1) as usize)
        .fold(0, |mask, v| mask | (1 << v)))
}

fn parse_step(spec: &Spec, item: &str, step: &str) -> Result<u32, FieldProblem> {
    if step.is_empty() {
        return Err(FieldProblem::MissingStep {
            item: item.to_string(),
        });
    }
    if !step.bytes().all(|b| b.is_ascii_digit()) {
        return Err(FieldProblem::InvalidStep {
            step: step.to_string(),
        });
    }
    let span = spec.max - spec.min + 1;
    match step.parse::<u32>() {
        Ok(n) if (1..=span).contains(&n) => Ok(n),
        // Too many digits for u32 is out of range as well.
        _ => Err(FieldProblem::StepOutOfRange {
            step: step.to_string(),
            max: span,
        }),
    }
}

/// One value: a decimal number or, for month and day-of-week, a name.
fn value(spec: &Spec, item: &str, text: &str) -> Result<u32, FieldProblem> {
    if text.is_empty() {
        return Err(FieldProblem::MissingValue {
            item: item.to_string(),
            allowed: spec.allowed,
        });
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        return match text.parse::<u32>() {
            Ok(n) if (spec.min..=spec.max).contains(&n) => Ok(n),
            _ => Err(FieldProblem::OutOfRange {
                value: text.to_string(),
                min: spec.min,
                max: spec.max,
            }),
        };
    }
    match spec.names.iter().position(|n| n.eq_ignore_ascii_case(text)) {
        Some(i) => Ok(spec.min + i as u32),
        None => Err(FieldProblem::InvalidValue {
            value: text.to_string(),
            allowed: spec.allowed,
        }),
    }
}
