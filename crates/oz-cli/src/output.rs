//! Terminal output: tables that fit the terminal, colour only on a TTY,
//! stable JSON for scripts.

use std::io::{IsTerminal, Write};

/// `println!` that ends the process quietly when the reader went away
/// (`oz run list | head`): Rust ignores SIGPIPE, so a plain `println!`
/// would panic on the broken pipe.
#[macro_export]
macro_rules! say {
    () => { $crate::output::emit("\n") };
    ($($arg:tt)*) => { $crate::output::emit(&format!("{}\n", format_args!($($arg)*))) };
}

/// `print!` with the same broken-pipe handling as [`say!`].
#[macro_export]
macro_rules! say_raw {
    ($($arg:tt)*) => { $crate::output::emit(&format!($($arg)*)) };
}

/// Write to stdout; exit 0 on a broken pipe, report other errors once.
pub fn emit(text: &str) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: cannot write to stdout: {e}");
        std::process::exit(1);
    }
}

use clap::ValueEnum;
use oz_protocol::api::RunState;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum Format {
    /// Human-readable table.
    #[default]
    Table,
    /// The API's JSON, pretty-printed; stable for scripts.
    Json,
}

/// Where output goes and how it may look.
#[derive(Debug, Clone, Copy)]
pub struct Style {
    pub colour: bool,
    /// Columns available for a table line.
    pub width: usize,
}

impl Style {
    /// Colour only when stdout is a terminal and `NO_COLOR` is unset; the
    /// width is the terminal's, else `COLUMNS`, else 120.
    pub fn detect() -> Self {
        let tty = std::io::stdout().is_terminal();
        let colour = tty && std::env::var_os("NO_COLOR").is_none();
        let width = tty
            .then(|| terminal_size::terminal_size().map(|(w, _)| w.0 as usize))
            .flatten()
            .or_else(|| std::env::var("COLUMNS").ok().and_then(|c| c.parse().ok()))
            .unwrap_or(120)
            .max(40);
        Style { colour, width }
    }

    pub fn plain(width: usize) -> Self {
        Style {
            colour: false,
            width,
        }
    }

    fn paint(&self, code: &str, text: &str) -> String {
        if self.colour {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    }

    pub fn bold(&self, text: &str) -> String {
        self.paint("1", text)
    }

    pub fn dim(&self, text: &str) -> String {
        self.paint("2", text)
    }

    pub fn state(&self, state: RunState) -> String {
        let code = match state {
            RunState::Succeeded => "32",
            RunState::Failed | RunState::Error => "31",
            RunState::Queued | RunState::Pending => "33",
            RunState::Claimed | RunState::Inprogress => "36",
            RunState::Cancelled | RunState::Blocked => "2",
        };
        self.paint(code, state.as_str())
    }
}

/// Pretty JSON on stdout.
pub fn print_json<T: Serialize>(value: &T) {
    match serde_json::to_string_pretty(value) {
        Ok(s) => crate::say!("{s}"),
        Err(e) => eprintln!("error: cannot encode the answer as JSON: {e}"),
    }
}

/// One table column: header, and whether it may shrink to fit.
pub struct Column {
    pub header: &'static str,
    pub flexible: bool,
}

/// Render rows under headers, padding columns, shrinking the flexible ones
/// (with `…`) so every line fits `style.width`. `paint` colours a cell
/// after its width is fixed (colour codes take no columns).
pub fn table(
    style: &Style,
    columns: &[Column],
    rows: &[Vec<String>],
    paint: &dyn Fn(usize, &str) -> String,
) -> String {
    let n = columns.len();
    let mut widths: Vec<usize> = columns.iter().map(|c| c.header.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate().take(n) {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let gaps = 2 * n.saturating_sub(1);
    let total: usize = widths.iter().sum::<usize>() + gaps;
    if total > style.width {
        let fixed: usize = columns
            .iter()
            .zip(&widths)
            .filter(|(c, _)| !c.flexible)
            .map(|(_, w)| *w)
            .sum();
        let flex: Vec<usize> = (0..n).filter(|i| columns[*i].flexible).collect();
        let room = style.width.saturating_sub(fixed + gaps);
        if !flex.is_empty() {
            let each = (room / flex.len()).max(8);
            for i in flex {
                widths[i] = widths[i].min(each).max(columns[i].header.chars().count());
            }
        }
    }
    // Still too wide (narrow terminal): shrink the widest columns, fixed
    // ones included, down to 4 characters each; the first column (the id
    // people copy) goes last.
    let mut total: usize = widths.iter().sum::<usize>() + gaps;
    while total > style.width {
        let widest = |from: usize| {
            widths
                .iter()
                .enumerate()
                .skip(from)
                .filter(|(_, w)| **w > 4)
                .max_by_key(|(_, w)| **w)
                .map(|(i, _)| i)
        };
        let Some(i) = widest(1).or_else(|| widest(0)) else {
            break;
        };
        widths[i] -= 1;
        total -= 1;
    }
    let mut out = String::new();
    let line = |cells: Vec<String>, header: bool| -> String {
        let mut parts = Vec::with_capacity(n);
        for (i, cell) in cells.into_iter().enumerate().take(n) {
            let fitted = fit(&cell, widths[i]);
            let pad = widths[i].saturating_sub(fitted.chars().count());
            let shown = if header {
                style.bold(&fitted)
            } else {
                paint(i, &fitted)
            };
            if i + 1 == n {
                parts.push(shown);
            } else {
                parts.push(format!("{shown}{}", " ".repeat(pad)));
            }
        }
        parts.join("  ").trim_end().to_owned()
    };
    out.push_str(&line(
        columns.iter().map(|c| c.header.to_owned()).collect(),
        true,
    ));
    out.push('\n');
    for row in rows {
        out.push_str(&line(row.clone(), false));
        out.push('\n');
    }
    out
}

/// Cut to `width` characters, ending with `…` when cut.
pub fn fit(text: &str, width: usize) -> String {
    let one_line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if one_line.chars().count() <= width {
        return one_line;
    }
    if width == 0 {
        return String::new();
    }
    let mut s: String = one_line.chars().take(width - 1).collect();
    s.push('…');
    s
}

/// "2m ago" style age of an RFC 3339 timestamp.
pub fn ago(ts: &str) -> String {
    let Some(t) = oz_store::parse_ts(ts) else {
        return ts.to_owned();
    };
    let secs = (chrono::Utc::now() - t).num_seconds().max(0);
    match secs {
        0..=59 => format!("{secs}s ago"),
        60..=3599 => format!("{}m ago", secs / 60),
        3600..=86_399 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_cuts_with_an_ellipsis() {
        assert_eq!(fit("hello", 10), "hello");
        assert_eq!(fit("hello world", 6), "hello…");
        assert_eq!(fit("a\nb", 5), "a b");
    }

    #[test]
    fn tables_shrink_flexible_columns_to_fit() {
        let cols = [
            Column {
                header: "ID",
                flexible: false,
            },
            Column {
                header: "TITLE",
                flexible: true,
            },
        ];
        let rows = vec![vec![
            "abc".into(),
            "a very long title that will not fit".into(),
        ]];
        let t = table(&Style::plain(20), &cols, &rows, &|_, s| s.to_owned());
        for line in t.lines() {
            assert!(line.chars().count() <= 20, "{line:?}");
        }
        assert!(t.contains('…'));
    }
}
