//! Splitting a byte stream into lines, and finding pull-request links in a
//! line of harness output.

/// Longest line the PR scanner keeps; a longer one is scanned in pieces.
pub const SCAN_LINE_MAX: usize = 64 * 1024;

/// Accumulates chunks and hands out complete lines (with their `\n`).
/// A line longer than `max` is handed out in pieces of `max` bytes.
#[derive(Debug)]
pub struct Lines {
    buf: Vec<u8>,
    max: usize,
}

impl Lines {
    pub fn new(max: usize) -> Self {
        Lines {
            buf: Vec::new(),
            max: max.max(1),
        }
    }

    /// Feed a chunk; `f` gets every line completed by it.
    pub fn feed(&mut self, mut chunk: &[u8], mut f: impl FnMut(&[u8])) {
        while !chunk.is_empty() {
            match chunk.iter().position(|b| *b == b'\n') {
                Some(end) => {
                    let (line, rest) = chunk.split_at(end + 1);
                    chunk = rest;
                    if self.buf.is_empty() {
                        f(line);
                    } else {
                        self.buf.extend_from_slice(line);
                        f(&self.buf);
                        self.buf.clear();
                    }
                }
                None => {
                    self.buf.extend_from_slice(chunk);
                    chunk = &[];
                }
            }
            // `buf` never holds a newline: complete lines leave at once.
            while self.buf.len() >= self.max {
                let piece: Vec<u8> = self.buf.drain(..self.max).collect();
                f(&piece);
            }
        }
    }

    /// The last line when the stream did not end with `\n`.
    pub fn finish(&mut self, mut f: impl FnMut(&[u8])) {
        if !self.buf.is_empty() {
            let rest = std::mem::take(&mut self.buf);
            f(&rest);
        }
    }
}

/// Pull-request links in `text`, normalised (no trailing path, query or
/// fragment), in order of appearance, duplicates included:
/// GitHub `https://HOST/OWNER/REPO/pull/N` and GitLab
/// `https://HOST/GROUP…/PROJECT/-/merge_requests/N`. Links to create a pull
/// request (`…/pull/new/branch`, `…/merge_requests/new?…`) are not matched.
pub fn find_pr_urls(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(pos) = text[from..].find("http") {
        let start = from + pos;
        from = start + 4;
        let rest = &text[start..];
        let scheme = if rest.starts_with("https://") {
            "https"
        } else if rest.starts_with("http://") {
            "http"
        } else {
            continue;
        };
        let after = &rest[scheme.len() + 3..];
        let host_len = after
            .bytes()
            .take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':'))
            .count();
        if host_len == 0 {
            continue;
        }
        let host = &after[..host_len];
        let path_len = after[host_len..]
            .bytes()
            .take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'.' | b'-' | b'_'))
            .count();
        let path = &after[host_len..host_len + path_len];
        if let Some(normalised) = pr_path(path) {
            found.push(format!("{scheme}://{host}{normalised}"));
            from = start + scheme.len() + 3 + host_len + path_len;
        }
    }
    found
}

/// The normalised PR path of a URL path, if it is one.
fn pr_path(path: &str) -> Option<String> {
    let segments: Vec<&str> = path.strip_prefix('/')?.split('/').collect();
    // GitHub: /OWNER/REPO/pull/N
    if let [owner, repo, "pull", number, ..] = segments.as_slice()
        && is_name(owner)
        && is_name(repo)
        && let Some(n) = pr_number(number)
    {
        return Some(format!("/{owner}/{repo}/pull/{n}"));
    }
    // GitLab: /GROUP[/SUBGROUP…]/PROJECT/-/merge_requests/N
    let dash = segments.iter().position(|s| *s == "-")?;
    let project = &segments[..dash];
    if project.len() < 2 || !project.iter().all(|s| is_name(s)) {
        return None;
    }
    if segments.get(dash + 1) != Some(&"merge_requests") {
        return None;
    }
    let n = pr_number(segments.get(dash + 2)?)?;
    Some(format!("/{}/-/merge_requests/{n}", project.join("/")))
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

/// The leading digits of a segment, when nothing word-like follows them
/// ("12", "12.diff" → 12; "12abc", "new" → none).
fn pr_number(segment: &str) -> Option<&str> {
    let digits = segment.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return None;
    }
    match segment.as_bytes().get(digits) {
        None | Some(b'.') => Some(&segment[..digits]),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines_of(chunks: &[&[u8]], max: usize) -> Vec<Vec<u8>> {
        let mut lines = Lines::new(max);
        let mut out = Vec::new();
        for c in chunks {
            lines.feed(c, |l| out.push(l.to_vec()));
        }
        lines.finish(|l| out.push(l.to_vec()));
        out
    }

    #[test]
    fn lines_are_reassembled_across_chunks() {
        let got = lines_of(&[b"ab", b"c\nde", b"f\n\ng", b"h"], 1024);
        let want: Vec<Vec<u8>> = vec![
            b"abc\n".to_vec(),
            b"def\n".to_vec(),
            b"\n".to_vec(),
            b"gh".to_vec(),
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn invalid_utf8_is_kept() {
        let got = lines_of(&[b"\xff\xfe\n\xc3"], 1024);
        assert_eq!(got, vec![b"\xff\xfe\n".to_vec(), b"\xc3".to_vec()]);
    }

    #[test]
    fn long_lines_come_in_pieces() {
        let got = lines_of(&[b"abcdefg\nxy"], 3);
        let want: Vec<Vec<u8>> = vec![b"abcdefg\n".to_vec(), b"xy".to_vec()];
        assert_eq!(got, want);
        let got = lines_of(&[b"abcd", b"efg"], 3);
        let want: Vec<Vec<u8>> = vec![b"abc".to_vec(), b"def".to_vec(), b"g".to_vec()];
        assert_eq!(got, want);
    }

    #[test]
    fn github_pull_requests() {
        assert_eq!(
            find_pr_urls("Created https://github.com/acme/web-app/pull/42 for you"),
            vec!["https://github.com/acme/web-app/pull/42"]
        );
        assert_eq!(
            find_pr_urls(
                "see (https://github.com/a/b/pull/7/files#diff-1). and https://ghe.corp.example:8443/o.x/r_y/pull/12."
            ),
            vec![
                "https://github.com/a/b/pull/7",
                "https://ghe.corp.example:8443/o.x/r_y/pull/12"
            ]
        );
        assert_eq!(
            find_pr_urls(r#"{"text":"PR: https://github.com/a/b/pull/3\n"}"#),
            vec!["https://github.com/a/b/pull/3"]
        );
        assert_eq!(
            find_pr_urls("[#9](https://github.com/a/b/pull/9) https://github.com/a/b/pull/9.diff"),
            vec![
                "https://github.com/a/b/pull/9",
                "https://github.com/a/b/pull/9"
            ]
        );
    }

    #[test]
    fn gitlab_merge_requests() {
        assert_eq!(
            find_pr_urls("MR: https://gitlab.com/group/sub/project/-/merge_requests/15 done"),
            vec!["https://gitlab.com/group/sub/project/-/merge_requests/15"]
        );
        assert_eq!(
            find_pr_urls("http://gitlab.local/g/p/-/merge_requests/3/diffs?x=1"),
            vec!["http://gitlab.local/g/p/-/merge_requests/3"]
        );
    }

    #[test]
    fn things_that_are_not_pull_requests() {
        for text in [
            "remote: Create a pull request for 'fix' on GitHub by visiting:\nremote:      https://github.com/a/b/pull/new/fix",
            "https://gitlab.com/g/p/-/merge_requests/new?merge_request%5Bsource_branch%5D=fix",
            "https://github.com/a/b/pulls",
            "https://github.com/a/b/issues/4",
            "https://github.com/a/pull/4",
            "https://github.com/a/b/pull/12abc",
            "https://gitlab.com/p/-/merge_requests/2",
            "github.com/a/b/pull/4",
            "http",
            "https://",
            "https:///a/b/pull/1",
        ] {
            assert_eq!(find_pr_urls(text), Vec::<String>::new(), "{text}");
        }
    }

    #[test]
    fn non_ascii_text_around_links() {
        assert_eq!(
            find_pr_urls("✓ PR → https://github.com/a/b/pull/1 ✓ httpé"),
            vec!["https://github.com/a/b/pull/1"]
        );
    }
}
