//! Parser for the dotenv file a task's setup hook writes to `OZ_ENVIRONMENT_FILE`.
//!
//! The accepted syntax is a compatible subset of godotenv v1.5.1 (the library the Go worker
//! uses), with one deliberate difference: a bad entry produces a [`Warning`] and is skipped, while
//! every good entry before and after it still applies. godotenv drops the whole file instead.
//!
//! Summary of the syntax:
//! - `KEY=value`, `KEY: value` and `export KEY=value`; blank lines and `#` comment lines.
//! - Keys are ASCII letters, digits, `_` and `.`.
//! - Unquoted values end at the end of the line, are trimmed, lose a ` #comment` and expand
//!   `$NAME` / `${NAME}` (`\$` is a literal dollar).
//! - `'single'` values are literal; `"double"` values take `\n`, `\r`, `\t`, `\X` escapes and
//!   expand references. Both may span lines. Only whitespace or a comment may follow the
//!   closing quote.
//! - A value containing NUL is rejected: it cannot be passed in a process environment.
//! - References only see keys defined earlier in the same file, never the process environment:
//!   the file describes the task's additions, and the worker's own environment must not leak
//!   into them through `$VAR`.
//!
//! Warning messages never quote values, because values are often secrets.

use std::collections::HashMap;

/// One problem found in the file; the line is 1-based (the line where the bad entry starts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub line: usize,
    pub message: String,
}

/// The result of [`parse`]: one `(key, value)` per key, in order of first appearance, holding
/// the last value given; and the problems found, in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Parsed {
    pub vars: Vec<(String, String)>,
    pub warnings: Vec<Warning>,
}

/// Parse dotenv text. Never panics, never fails as a whole.
#[must_use]
pub fn parse(input: &[u8]) -> Parsed {
    // The file is written by arbitrary user scripts: salvage what we can from bad encodings.
    let decoded = String::from_utf8_lossy(input);
    let text = decoded.strip_prefix('\u{FEFF}').unwrap_or(&decoded);
    let text = text.replace("\r\n", "\n");
    Parser::new(&text).run()
}

/// Why an entry was rejected, and the 0-based line index where parsing resumes.
struct Skip {
    message: String,
    resume: usize,
}

impl Skip {
    fn new(message: impl Into<String>, resume: usize) -> Self {
        Skip {
            message: message.into(),
            resume,
        }
    }
}

/// A successfully read line: maybe an entry, and the 0-based index of the next line to read.
type Step = (Option<(String, String)>, usize);

struct Parser<'a> {
    text: &'a str,
    /// Byte offset where each line starts; lets quoted values run across lines while
    /// warnings still report line numbers.
    line_starts: Vec<usize>,
    vars: Vec<(String, String)>,
    /// Position of each key in `vars`, so duplicates keep their first slot.
    index: HashMap<String, usize>,
    warnings: Vec<Warning>,
}

impl<'a> Parser<'a> {
    fn new(text: &'a str) -> Self {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Parser {
            text,
            line_starts,
            vars: Vec::new(),
            index: HashMap::new(),
            warnings: Vec::new(),
        }
    }

    fn run(mut self) -> Parsed {
        let mut line = 0;
        while line < self.line_starts.len() {
            line = match self.entry(line) {
                Ok((Some((key, value)), next)) => {
                    self.set(key, value);
                    next
                }
                Ok((None, next)) => next,
                Err(skip) => {
                    self.warnings.push(Warning {
                        line: line + 1,
                        message: skip.message,
                    });
                    skip.resume
                }
            };
        }
        Parsed {
            vars: self.vars,
            warnings: self.warnings,
        }
    }

    fn set(&mut self, key: String, value: String) {
        match self.index.get(&key) {
            Some(&slot) => self.vars[slot].1 = value,
            None => {
                self.index.insert(key.clone(), self.vars.len());
                self.vars.push((key, value));
            }
        }
    }

    /// Value of a key defined earlier in the file; unknown keys are empty, like in a shell.
    fn lookup(&self, name: &str) -> &str {
        self.index
            .get(name)
            .map_or("", |&slot| self.vars[slot].1.as_str())
    }

    /// Byte offset of the `\n` ending the line that contains `pos`, or the end of the text.
    fn line_end(&self, pos: usize) -> usize {
        self.text[pos..]
            .find('\n')
            .map_or(self.text.len(), |i| pos + i)
    }

    /// 0-based index of the line containing byte offset `pos`.
    fn line_of(&self, pos: usize) -> usize {
        self.line_starts.partition_point(|&start| start <= pos) - 1
    }

    /// Read the entry (if any) that starts on line `line`.
    fn entry(&self, line: usize) -> Result<Step, Skip> {
        let next = line + 1;
        let start = self.line_starts[line];
        let end = self.line_end(start);
        let body = self.text[start..end].trim_start();
        if body.is_empty() || body.starts_with('#') {
            return Ok((None, next));
        }
        let body = strip_export(body);

        let Some(sep) = body.find(['=', ':']) else {
            return Err(Skip::new("expected KEY=VALUE", next));
        };
        let key = body[..sep].trim();
        check_key(key).map_err(|message| Skip::new(message, next))?;

        // Everything from here on is a suffix of the line, so its offset follows from its length.
        let raw_value = &body[sep + 1..];
        let value = raw_value.trim_start();
        let value_pos = end - value.len();

        let (value, next) = match value.chars().next() {
            Some(quote @ ('\'' | '"')) => {
                let kind = if quote == '"' { "double" } else { "single" };
                let Some((value, close)) = self.quoted(quote, value_pos + 1) else {
                    // Skip only the key's line: a stray quote must not swallow the rest of the file.
                    return Err(Skip::new(
                        format!("unterminated {kind}-quoted value for {key}"),
                        next,
                    ));
                };
                let close_line_end = self.line_end(close);
                let after_line = self.line_of(close) + 1;
                let tail = self.text[close + 1..close_line_end].trim_start();
                if !(tail.is_empty() || tail.starts_with('#')) {
                    return Err(Skip::new(
                        format!("unexpected text after closing quote for {key}"),
                        after_line,
                    ));
                }
                (value, after_line)
            }
            _ => (self.unquoted(strip_comment(raw_value).trim()), next),
        };

        // The value ends up in a process environment, where a NUL cannot be represented and
        // would make spawning the agent fail.
        if value.contains('\0') {
            return Err(Skip::new(
                format!("value for {key} contains a NUL byte"),
                next,
            ));
        }
        Ok((Some((key.to_string(), value)), next))
    }

    /// Expand references in an unquoted value; backslashes are literal except before `$`.
    fn unquoted(&self, s: &str) -> String {
        let mut out = String::with_capacity(s.len());
        let mut i = 0;
        while let Some(c) = s[i..].chars().next() {
            if c == '\\' && s[i + 1..].starts_with('$') {
                out.push('$');
                i += 2;
            } else if c == '$' {
                i += self.reference(&s[i..], &mut out);
            } else {
                out.push(c);
                i += c.len_utf8();
            }
        }
        out
    }

    /// Read a quoted value whose content starts at byte `from`.
    /// Returns the value and the byte offset of the closing quote, or `None` if there is none.
    fn quoted(&self, quote: char, from: usize) -> Option<(String, usize)> {
        let rest = &self.text[from..];
        if quote == '\'' {
            let close = rest.find('\'')?;
            return Some((rest[..close].to_string(), from + close));
        }
        let mut out = String::new();
        let mut i = 0;
        while let Some(c) = rest[i..].chars().next() {
            match c {
                '"' => return Some((out, from + i)),
                '\\' => {
                    // A backslash as the last character escapes nothing: the quote stays open.
                    let escaped = rest[i + 1..].chars().next()?;
                    out.push(match escaped {
                        'n' => '\n',
                        'r' => '\r',
                        't' => '\t',
                        other => other,
                    });
                    i += 1 + escaped.len_utf8();
                }
                '$' => i += self.reference(&rest[i..], &mut out),
                _ => {
                    out.push(c);
                    i += c.len_utf8();
                }
            }
        }
        None
    }

    /// `s` starts with `$`. Append the expansion of `$NAME` or `${NAME}` to `out` and return the
    /// bytes consumed; anything else is a literal `$` (one byte).
    fn reference(&self, s: &str, out: &mut String) -> usize {
        let after = &s[1..];
        let (name, consumed) = if let Some(braced) = after.strip_prefix('{') {
            let len = name_len(braced);
            if len == 0 || !braced[len..].starts_with('}') {
                out.push('$');
                return 1;
            }
            (&braced[..len], len + 3)
        } else {
            let len = name_len(after);
            if len == 0 {
                out.push('$');
                return 1;
            }
            (&after[..len], len + 1)
        };
        out.push_str(self.lookup(name));
        consumed
    }
}

/// Length in bytes of the reference name (`[A-Za-z0-9_]*`) at the start of `s`.
fn name_len(s: &str) -> usize {
    s.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len())
}

/// Drop a leading `export` keyword (it must be followed by whitespace, so `exporter=1` is a key).
fn strip_export(body: &str) -> &str {
    match body.strip_prefix("export") {
        Some(rest) if rest.starts_with(char::is_whitespace) => rest.trim_start(),
        _ => body,
    }
}

fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("empty variable name".to_string());
    }
    match key
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
    {
        Some(bad) => Err(format!(
            "invalid character '{}' in variable name",
            bad.escape_debug()
        )),
        None => Ok(()),
    }
}

/// Cut an inline comment from an unquoted value: it starts at the first `#` that follows
/// whitespace, so `a#b` keeps its `#` (URL fragments, colour codes).
fn strip_comment(raw: &str) -> &str {
    let mut prev_space = false;
    for (i, c) in raw.char_indices() {
        if c == '#' && prev_space {
            return &raw[..i];
        }
        prev_space = c.is_whitespace();
    }
    raw
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Parsed {
        parse(text.as_bytes())
    }

    fn kv(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn w(line: usize, message: &str) -> Warning {
        Warning {
            line,
            message: message.to_string(),
        }
    }

    /// Parse input that must produce no warnings, and return its variables.
    fn clean(text: &str) -> Vec<(String, String)> {
        let parsed = p(text);
        assert_eq!(parsed.warnings, vec![], "unexpected warnings for {text:?}");
        parsed.vars
    }

    #[test]
    fn empty_and_blank_inputs() {
        assert_eq!(p(""), Parsed::default());
        assert_eq!(p("\n\n  \n\t\n"), Parsed::default());
        assert_eq!(p("# only\n  # comments\n"), Parsed::default());
    }

    #[test]
    fn simple_pairs_with_and_without_final_newline() {
        assert_eq!(clean("A=1\nB=2\n"), kv(&[("A", "1"), ("B", "2")]));
        assert_eq!(clean("A=1\nB=2"), kv(&[("A", "1"), ("B", "2")]));
        assert_eq!(clean("A=\"x\""), kv(&[("A", "x")]));
        assert_eq!(clean("A='x'"), kv(&[("A", "x")]));
    }

    #[test]
    fn export_prefix() {
        assert_eq!(
            clean("export A=1\nexport\tB=2\n  export   C = 3\n"),
            kv(&[("A", "1"), ("B", "2"), ("C", "3")])
        );
        // Without whitespace after it, `export` is part of the key.
        assert_eq!(
            clean("exporter=1\nexport=2\n"),
            kv(&[("exporter", "1"), ("export", "2")])
        );
        assert_eq!(p("export FOO\n").warnings, vec![w(1, "expected KEY=VALUE")]);
    }

    #[test]
    fn colon_separator() {
        assert_eq!(
            clean("A: 1\nB:2\nC : \"x y\"\n"),
            kv(&[("A", "1"), ("B", "2"), ("C", "x y")])
        );
        // The first separator wins, whichever it is.
        assert_eq!(
            clean("URL=http://h:80/\nT: a=b\n"),
            kv(&[("URL", "http://h:80/"), ("T", "a=b")])
        );
    }

    #[test]
    fn keys_are_trimmed_and_may_use_dots_digits_and_lowercase() {
        assert_eq!(
            clean("  A  =1\n\tb.c_9=2\n"),
            kv(&[("A", "1"), ("b.c_9", "2")])
        );
    }

    #[test]
    fn full_line_comments() {
        assert_eq!(
            clean("# first\nA=1\n   # indented\n#B=2\n"),
            kv(&[("A", "1")])
        );
    }

    #[test]
    fn inline_comments_need_preceding_whitespace() {
        assert_eq!(
            clean(
                "A=b #c\nB=b#c\nC=b\t# c\nD= # only a comment\nE=#hash\nF=x # one # two\nG=a #\n"
            ),
            kv(&[
                ("A", "b"),
                ("B", "b#c"),
                ("C", "b"),
                ("D", ""),
                ("E", "#hash"),
                ("F", "x"),
                ("G", "a"),
            ])
        );
    }

    #[test]
    fn unquoted_values_are_trimmed_and_may_contain_equals() {
        assert_eq!(
            clean("A=  b c  \nB=b=c\nC=postgres://u:p@h/db?x=1&y=2\nD=\nE=   \n"),
            kv(&[
                ("A", "b c"),
                ("B", "b=c"),
                ("C", "postgres://u:p@h/db?x=1&y=2"),
                ("D", ""),
                ("E", ""),
            ])
        );
    }

    #[test]
    fn unquoted_backslashes_are_literal() {
        assert_eq!(clean(r"A=C:\dir\n"), kv(&[("A", r"C:\dir\n")]));
    }

    #[test]
    fn single_quoted_values_are_literal() {
        assert_eq!(
            clean("X=1\nA='  $X ${X} \\n \"q\" # not a comment  '\n"),
            kv(&[("X", "1"), ("A", "  $X ${X} \\n \"q\" # not a comment  ")])
        );
        assert_eq!(clean("A=''\n"), kv(&[("A", "")]));
    }

    #[test]
    fn double_quoted_escapes() {
        assert_eq!(
            clean(r#"A="a\nb\rc\td\"e\\f\$g\qh""#),
            kv(&[("A", "a\nb\rc\td\"e\\f$gqh")])
        );
        assert_eq!(
            clean("A=\"  padded # kept  \"\nB=\"\"\n"),
            kv(&[("A", "  padded # kept  "), ("B", "")])
        );
    }

    #[test]
    fn multi_line_values() {
        assert_eq!(
            clean("A=\"line1\nline2\n\"\nB='x\n  y'\nC=after\n"),
            kv(&[("A", "line1\nline2\n"), ("B", "x\n  y"), ("C", "after")])
        );
        // An escaped quote does not close the value; a backslash before a line break keeps it.
        assert_eq!(
            clean("A=\"say \\\"hi\\\\\\\"\nthere\\\nend\"\n"),
            kv(&[("A", "say \"hi\\\"\nthere\nend")])
        );
        // A PEM key, the usual reason for multi-line values.
        assert_eq!(
            clean("KEY=\"-----BEGIN-----\nabc\n-----END-----\"\nN=1\n"),
            kv(&[("KEY", "-----BEGIN-----\nabc\n-----END-----"), ("N", "1")])
        );
    }

    #[test]
    fn comment_after_closing_quote() {
        assert_eq!(
            clean("A=\"x\"  # c\nB='y' #c\nC=\"z\"#c\nD=\"w\"   \n"),
            kv(&[("A", "x"), ("B", "y"), ("C", "z"), ("D", "w")])
        );
    }

    #[test]
    fn text_after_closing_quote_is_a_warning() {
        let parsed = p("A=1\nB=\"x\" y\nC='it's'\nD=2\n");
        assert_eq!(parsed.vars, kv(&[("A", "1"), ("D", "2")]));
        assert_eq!(
            parsed.warnings,
            vec![
                w(2, "unexpected text after closing quote for B"),
                w(3, "unexpected text after closing quote for C"),
            ]
        );
    }

    #[test]
    fn text_after_multi_line_quote_skips_the_whole_value() {
        let parsed = p("A=\"1\n2\" junk\nB=3\n");
        assert_eq!(parsed.vars, kv(&[("B", "3")]));
        assert_eq!(
            parsed.warnings,
            vec![w(1, "unexpected text after closing quote for A")]
        );
    }

    #[test]
    fn expansion_of_earlier_keys() {
        assert_eq!(
            clean("A=1\nB=${A}2\nC=$A$B\nD=\"$A-${B}\"\nE=x${A}y$A.z\n"),
            kv(&[
                ("A", "1"),
                ("B", "12"),
                ("C", "112"),
                ("D", "1-12"),
                ("E", "x1y1.z"),
            ])
        );
    }

    #[test]
    fn expansion_ignores_process_environment() {
        // PATH is set in any test environment; only the file's own keys count.
        assert_eq!(clean("PATH=$PATH:/x\n"), kv(&[("PATH", ":/x")]));
        assert_eq!(clean("H=${HOME}/x\n"), kv(&[("H", "/x")]));
    }

    #[test]
    fn expansion_sees_only_earlier_keys() {
        assert_eq!(
            clean("B=$A\nA=1\nC=$A\n"),
            kv(&[("B", ""), ("A", "1"), ("C", "1")])
        );
        // Redefining a key can build on its previous value.
        assert_eq!(clean("A=1\nA=${A}2\n"), kv(&[("A", "12")]));
        assert_eq!(clean("P=/a\nP=\"$P:/b\"\n"), kv(&[("P", "/a:/b")]));
    }

    #[test]
    fn expansion_names_are_alphanumeric_and_underscore() {
        assert_eq!(
            clean("a_1=v\nB=$a_1-x\nC=${a_1}y\nD=$a.b\n"),
            kv(&[("a_1", "v"), ("B", "v-x"), ("C", "vy"), ("D", ".b")])
        );
    }

    #[test]
    fn dollar_escape_and_literal_dollars() {
        assert_eq!(
            clean(
                "A=1\nB=\\$A\nC=\\${A}\nD=\"\\$A\"\nE=cost$\nF=${A\nG=${}\nH=$ A\nI=$-\nJ=${A-x}\n"
            ),
            kv(&[
                ("A", "1"),
                ("B", "$A"),
                ("C", "${A}"),
                ("D", "$A"),
                ("E", "cost$"),
                ("F", "${A"),
                ("G", "${}"),
                ("H", "$ A"),
                ("I", "$-"),
                ("J", "${A-x}"),
            ])
        );
    }

    #[test]
    fn duplicates_keep_first_position_and_last_value() {
        assert_eq!(
            clean("A=1\nB=2\nA=3\nC=4\nB=5\n"),
            kv(&[("A", "3"), ("B", "5"), ("C", "4")])
        );
    }

    #[test]
    fn crlf_line_endings() {
        let parsed = p("A=1\r\n# c\r\nB=\"x\r\ny\"\r\nC='p\r\nq'\r\nD=2 #c\r\nbad\r\nE=3");
        assert_eq!(
            parsed.vars,
            kv(&[
                ("A", "1"),
                ("B", "x\ny"),
                ("C", "p\nq"),
                ("D", "2"),
                ("E", "3")
            ])
        );
        assert_eq!(parsed.warnings, vec![w(8, "expected KEY=VALUE")]);
    }

    #[test]
    fn byte_order_mark_is_skipped() {
        let parsed = parse(b"\xEF\xBB\xBFA=1\nB=2\n");
        assert_eq!(parsed.vars, kv(&[("A", "1"), ("B", "2")]));
        assert_eq!(parsed.warnings, vec![]);
    }

    #[test]
    fn invalid_utf8_is_replaced() {
        let parsed = parse(b"A=x\xFFy\nB=\"\xC3\x28\"\nC\xFE=1\nD=2\n");
        assert_eq!(
            parsed.vars,
            kv(&[("A", "x\u{FFFD}y"), ("B", "\u{FFFD}("), ("D", "2")])
        );
        assert_eq!(
            parsed.warnings,
            vec![w(3, "invalid character '\u{FFFD}' in variable name")]
        );
    }

    #[test]
    fn malformed_lines_between_good_ones() {
        let parsed = p("A=1\nnot a pair\nB-C=2\n=3\n  : 4\nD=4\nE F=5\nG=6");
        assert_eq!(parsed.vars, kv(&[("A", "1"), ("D", "4"), ("G", "6")]));
        assert_eq!(
            parsed.warnings,
            vec![
                w(2, "expected KEY=VALUE"),
                w(3, "invalid character '-' in variable name"),
                w(4, "empty variable name"),
                w(5, "empty variable name"),
                w(7, "invalid character ' ' in variable name"),
            ]
        );
    }

    #[test]
    fn invalid_key_characters_are_named_readably() {
        let parsed = p("\"A\"=1\nA\tB=2\nA'=3\n");
        assert_eq!(parsed.vars, vec![]);
        assert_eq!(
            parsed.warnings,
            vec![
                w(1, "invalid character '\\\"' in variable name"),
                w(2, "invalid character '\\t' in variable name"),
                w(3, "invalid character '\\'' in variable name"),
            ]
        );
    }

    #[test]
    fn bad_entry_after_multi_line_value_has_its_own_line_number() {
        let parsed = p("A=\"line1\nline2\"\nbad line\nB='x\ny\nz'\nC=!x\n$D=1\nE=ok\n");
        assert_eq!(
            parsed.vars,
            kv(&[
                ("A", "line1\nline2"),
                ("B", "x\ny\nz"),
                ("C", "!x"),
                ("E", "ok")
            ])
        );
        assert_eq!(
            parsed.warnings,
            vec![
                w(3, "expected KEY=VALUE"),
                w(8, "invalid character '$' in variable name"),
            ]
        );
    }

    #[test]
    fn unterminated_quotes_skip_one_line_only() {
        let parsed = p("A=1\nB=\"secret-one\nC=3\nD='secret-two\nE=5");
        assert_eq!(parsed.vars, kv(&[("A", "1"), ("C", "3"), ("E", "5")]));
        assert_eq!(
            parsed.warnings,
            vec![
                w(2, "unterminated double-quoted value for B"),
                w(4, "unterminated single-quoted value for D"),
            ]
        );
        // A trailing backslash escapes nothing, so the quote is still open.
        assert_eq!(
            p("A=\"x\\").warnings,
            vec![w(1, "unterminated double-quoted value for A")]
        );
    }

    #[test]
    fn warnings_never_contain_values() {
        let parsed = p(concat!(
            "B='hunter2' hunter2\n",
            "C=\"hunter2\0\"\n",
            "hunter2\n",
            // Last, so that no later quote can close it.
            "A=\"hunter2\n",
        ));
        assert_eq!(parsed.vars, vec![]);
        assert_eq!(parsed.warnings.len(), 4);
        for warning in &parsed.warnings {
            assert!(!warning.message.contains("hunter2"), "{warning:?}");
        }
    }

    #[test]
    fn nul_in_value_is_rejected() {
        let parsed = p("A=x\0y\nB=\"\\\0\"\nC=1\n");
        assert_eq!(parsed.vars, kv(&[("C", "1")]));
        assert_eq!(
            parsed.warnings,
            vec![
                w(1, "value for A contains a NUL byte"),
                w(2, "value for B contains a NUL byte"),
            ]
        );
    }

    #[test]
    fn lone_carriage_return_is_not_a_line_break() {
        // Only CRLF is normalised; a bare CR inside quotes is kept, outside it is trimmed.
        assert_eq!(
            clean("A=\"x\ry\"\nB=z\r\n"),
            kv(&[("A", "x\ry"), ("B", "z")])
        );
    }

    /// Every string of up to four symbols from an alphabet of the tricky bytes: no panic, and
    /// whatever comes out respects the output invariants.
    #[test]
    fn never_panics_on_short_inputs() {
        const ALPHABET: &[&[u8]] = &[
            b"A",
            b"=",
            b":",
            b"\"",
            b"'",
            b"\\",
            b"$",
            b"{",
            b"}",
            b"#",
            b" ",
            b"\n",
            b"\r",
            b"\xFF",
            b"\xEF\xBB\xBF",
            b"export ",
            b"\xC3",
        ];
        let n = ALPHABET.len();
        for len in 0..=4u32 {
            for mut code in 0..n.pow(len) {
                let mut input = Vec::new();
                for _ in 0..len {
                    input.extend_from_slice(ALPHABET[code % n]);
                    code /= n;
                }
                let parsed = parse(&input);
                let lines = input.iter().filter(|&&b| b == b'\n').count() + 1;
                let mut seen = std::collections::HashSet::new();
                for (key, value) in &parsed.vars {
                    assert!(check_key(key).is_ok(), "{input:?}");
                    assert!(seen.insert(key), "duplicate key for {input:?}");
                    assert!(!value.contains('\0'));
                }
                for warning in &parsed.warnings {
                    assert!((1..=lines).contains(&warning.line), "{input:?}");
                }
            }
        }
    }
}
