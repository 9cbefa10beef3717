//! Files a managed run leaves for the server: artifacts and handoff files.
//!
//! Before the harness starts, the runner creates `.oz/artifacts/` and
//! `.oz/handoff/` in the working directory and exports their absolute paths
//! as `OZ_ARTIFACTS_DIR` and `OZ_HANDOFF_DIR`. After the harness exits
//! (whatever its status; not when the runner was told to stop), it uploads:
//!
//! - every regular file under `OZ_ARTIFACTS_DIR`, recursively, as an
//!   artifact (`POST /agent/runs/{id}/artifacts`): `SCREENSHOT` for a PNG,
//!   JPEG, GIF or WebP image inside a directory named `screenshots`, `PLAN`
//!   for a top-level `plan.md` (when it is UTF-8), else `FILE`; `filepath`
//!   is the path relative to the directory, `filename` its last component,
//!   `mime_type` from the extension ([`mime_type`]). Files that were already
//!   there, unchanged, when the runner started (a reused workspace) are not
//!   uploaded again.
//! - then every regular file under `OZ_HANDOFF_DIR` as a handoff attachment
//!   of the current execution (`POST /agent/runs/{id}/handoff/attachments`).
//!   Attachments are flat: only the file name is kept, and a second file
//!   with the same name is skipped.
//!
//! Symbolic links are never followed (a link is skipped with a warning, and
//! a file is read only if it is still the one the walk saw), nor are files
//! that are not regular; a file over 32 MiB is skipped with a warning; at
//! most 100 artifacts and 20 handoff files are uploaded per execution.
//! An upload that fails is a warning and never changes the run's result;
//! one summary line counts what was uploaded, what failed and what was
//! skipped.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::env::Env;
use super::exec::Sink;
use crate::client::{encode_segment, error_chain, problem_detail};

/// Where the agent puts artifacts, relative to the working directory.
pub const ARTIFACTS_DIR: &str = ".oz/artifacts";
/// Where the agent puts handoff files, relative to the working directory.
pub const HANDOFF_DIR: &str = ".oz/handoff";
pub const ENV_ARTIFACTS_DIR: &str = "OZ_ARTIFACTS_DIR";
pub const ENV_HANDOFF_DIR: &str = "OZ_HANDOFF_DIR";
/// Largest file uploaded (the server's limit).
pub const MAX_FILE_BYTES: u64 = 32 * 1024 * 1024;
/// Most artifacts uploaded per execution.
pub const MAX_ARTIFACTS: usize = 100;
/// Most handoff files uploaded per execution.
pub const MAX_HANDOFF: usize = 20;
/// Most directory entries looked at per directory tree, so that a huge
/// tree dropped in by mistake does not stall the end of the run.
const MAX_ENTRIES: usize = 10_000;
/// Longest a single upload may take.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest all uploads of a run may take together.
const UPLOAD_BUDGET: Duration = Duration::from_secs(300);
/// After this many uploads in a row that could not reach the server, the
/// rest are not tried.
const MAX_TRANSPORT_FAILURES: u32 = 3;

/// Images that may be screenshots.
const SCREENSHOT_TYPES: &[&str] = &["image/png", "image/jpeg", "image/gif", "image/webp"];

/// The MIME type of a file name, from its extension (case-insensitive).
pub fn mime_type(name: &str) -> &'static str {
    let ext = match name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() => ext.to_ascii_lowercase(),
        _ => return "application/octet-stream",
    };
    match ext.as_str() {
        "txt" | "log" => "text/plain",
        "md" => "text/markdown",
        "json" => "application/json",
        "html" | "htm" => "text/html",
        "csv" => "text/csv",
        "patch" | "diff" => "text/x-diff",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "pdf" => "application/pdf",
        "zip" => "application/zip",
        "tar" => "application/x-tar",
        "gz" => "application/gzip",
        _ => "application/octet-stream",
    }
}

/// The artifact type a file is uploaded as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Screenshot,
    Plan,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::File => "FILE",
            Kind::Screenshot => "SCREENSHOT",
            Kind::Plan => "PLAN",
        }
    }
}

/// `rel` is the '/'-separated path under the artifacts directory.
pub fn classify(rel: &str, mime: &str) -> Kind {
    if rel == "plan.md" {
        return Kind::Plan;
    }
    let in_screenshots = rel
        .rsplit_once('/')
        .is_some_and(|(dir, _)| dir.split('/').any(|c| c == "screenshots"));
    if in_screenshots && SCREENSHOT_TYPES.contains(&mime) {
        Kind::Screenshot
    } else {
        Kind::File
    }
}

/// What identifies a file's version: a file that was replaced or changed
/// has another stamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Self {
        Stamp {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
        }
    }
}

/// A regular file found by [`walk`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Relative to the walked directory, '/'-separated.
    pub rel: String,
    pub path: PathBuf,
    pub stamp: Stamp,
}

#[derive(Debug, Default)]
pub struct Walk {
    /// Sorted by `rel`.
    pub files: Vec<Found>,
    /// One sentence per thing skipped or not readable.
    pub warnings: Vec<String>,
    /// Files skipped (links, special files, too large).
    pub skipped: usize,
}

/// Every regular file under `root`, recursively, without following
/// symbolic links. `label` names `root` in warnings; files larger than
/// `max_size` are skipped.
pub fn walk(root: &Path, label: &str, max_size: u64) -> Walk {
    let mut out = Walk::default();
    let mut stack = vec![(root.to_path_buf(), String::new())];
    let mut seen = 0usize;
    while let Some((dir, rel_dir)) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) => {
                out.warnings
                    .push(format!("cannot list {}: {e}", join(label, &rel_dir)));
                continue;
            }
        };
        let mut entries: Vec<_> = entries.filter_map(Result::ok).collect();
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            seen += 1;
            if seen > MAX_ENTRIES {
                out.warnings.push(format!(
                    "{label} has more than {MAX_ENTRIES} entries; the rest are not looked at"
                ));
                out.files.sort_by(|a, b| a.rel.cmp(&b.rel));
                return out;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            let rel = if rel_dir.is_empty() {
                name
            } else {
                format!("{rel_dir}/{name}")
            };
            let path = entry.path();
            // lstat: a link is looked at, not followed.
            let meta = match std::fs::symlink_metadata(&path) {
                Ok(m) => m,
                Err(e) => {
                    out.warnings
                        .push(format!("cannot read {}: {e}", join(label, &rel)));
                    continue;
                }
            };
            let kind = meta.file_type();
            if kind.is_dir() {
                stack.push((path, rel));
            } else if kind.is_symlink() {
                out.skipped += 1;
                out.warnings.push(format!(
                    "{} is a symbolic link; links are not followed, skipped",
                    join(label, &rel)
                ));
            } else if !kind.is_file() {
                out.skipped += 1;
                out.warnings.push(format!(
                    "{} is not a regular file; skipped",
                    join(label, &rel)
                ));
            } else if meta.len() > max_size {
                out.skipped += 1;
                out.warnings.push(format!(
                    "{} is larger than {} MiB; skipped",
                    join(label, &rel),
                    max_size / (1024 * 1024)
                ));
            } else {
                out.files.push(Found {
                    rel,
                    path,
                    stamp: Stamp::of(&meta),
                });
            }
        }
    }
    out.files.sort_by(|a, b| a.rel.cmp(&b.rel));
    out
}

fn join(label: &str, rel: &str) -> String {
    if rel.is_empty() {
        label.to_owned()
    } else {
        format!("{label}/{rel}")
    }
}

/// The content of a file found by [`walk`], if it is still that file: the
/// last component is opened without following links, and the open file
/// must be the one the walk saw (a directory on the way replaced by a link
/// gives another file).
fn read_found(f: &Found, max_size: u64) -> Result<Vec<u8>, String> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        // Non-blocking: a FIFO put there meanwhile does not hang the open.
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(&f.path)
        .map_err(|e| e.to_string())?;
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() || meta.dev() != f.stamp.dev || meta.ino() != f.stamp.ino {
        return Err("it was replaced while the runner was reading it".to_owned());
    }
    let mut content = Vec::with_capacity(usize::try_from(meta.len().min(max_size)).unwrap_or(0));
    file.take(max_size + 1)
        .read_to_end(&mut content)
        .map_err(|e| e.to_string())?;
    if content.len() as u64 > max_size {
        return Err(format!("it grew past {} MiB", max_size / (1024 * 1024)));
    }
    Ok(content)
}

/// Whether `cwd/rel` is a directory reached without any symbolic link
/// below `cwd` (the agent cannot redirect uploads outside the workspace).
fn plain_dir(cwd: &Path, rel: &str) -> bool {
    let mut path = cwd.to_path_buf();
    rel.split('/').all(|component| {
        path.push(component);
        std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_dir())
    })
}

/// Create `cwd/rel` one component at a time, never through a link (so that
/// nothing is created outside the workspace).
fn make_plain_dir(cwd: &Path, rel: &str) -> Result<PathBuf, String> {
    let mut path = cwd.to_path_buf();
    for component in rel.split('/') {
        path.push(component);
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_dir() => {}
            Ok(_) => {
                return Err(format!(
                    "{rel} is not a plain directory ({} is a link or a file)",
                    path.display()
                ));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // Someone else making it meanwhile is fine; checked below.
                if let Err(e) = std::fs::create_dir(&path)
                    && e.kind() != std::io::ErrorKind::AlreadyExists
                {
                    return Err(format!("cannot create {}: {e}", path.display()));
                }
                if !std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_dir()) {
                    return Err(format!("{rel} is not a plain directory"));
                }
            }
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        }
    }
    Ok(path)
}

/// The two directories of a managed run.
#[derive(Debug)]
pub struct Outbox {
    cwd: PathBuf,
    artifacts: Option<PathBuf>,
    handoff: Option<PathBuf>,
    /// Artifacts already there at the start, by relative path.
    before: HashMap<String, Stamp>,
}

impl Outbox {
    /// Create both directories under `cwd`. A directory that cannot be made
    /// (or is reached through a link) is left out, with a warning.
    pub fn prepare(cwd: &Path) -> (Outbox, Vec<String>) {
        let cwd = std::path::absolute(cwd).unwrap_or_else(|_| cwd.to_path_buf());
        let mut warnings = Vec::new();
        let mut make = |rel: &str| match make_plain_dir(&cwd, rel) {
            Ok(path) => Some(path),
            Err(why) => {
                warnings.push(format!("{why}; its files are not uploaded"));
                None
            }
        };
        let artifacts = make(ARTIFACTS_DIR);
        let handoff = make(HANDOFF_DIR);
        let before = artifacts
            .as_deref()
            .map(|dir| {
                walk(dir, ARTIFACTS_DIR, MAX_FILE_BYTES)
                    .files
                    .into_iter()
                    .map(|f| (f.rel, f.stamp))
                    .collect()
            })
            .unwrap_or_default();
        (
            Outbox {
                cwd,
                artifacts,
                handoff,
                before,
            },
            warnings,
        )
    }

    /// Tell the harness where the directories are (and nothing about one
    /// that could not be made, whatever the environment said before).
    pub fn export(&self, env: &mut Env) {
        for (key, dir) in [
            (ENV_ARTIFACTS_DIR, &self.artifacts),
            (ENV_HANDOFF_DIR, &self.handoff),
        ] {
            match dir {
                Some(dir) => env.set(key, dir),
                None => env.remove(key),
            }
        }
    }

    /// The directory `rel`, if it was made and is still a plain directory.
    fn dir(
        &self,
        made: &Option<PathBuf>,
        rel: &str,
        warnings: &mut Vec<String>,
    ) -> Option<PathBuf> {
        let dir = made.as_ref()?;
        if plain_dir(&self.cwd, rel) {
            Some(dir.clone())
        } else {
            warnings.push(format!(
                "{rel} is no longer a plain directory (replaced by a link?); its files are not uploaded"
            ));
            None
        }
    }
}

/// What was uploaded.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    pub artifacts: usize,
    pub handoff: usize,
    pub failed: usize,
    pub skipped: usize,
}

impl Summary {
    /// The one line about the uploads; none when there was nothing.
    pub fn line(&self) -> Option<String> {
        if self.artifacts + self.handoff + self.failed + self.skipped == 0 {
            return None;
        }
        let mut line = format!(
            "uploaded {} and {}",
            count(self.artifacts, "artifact", "artifacts"),
            count(self.handoff, "handoff file", "handoff files")
        );
        if self.failed > 0 {
            line = format!(
                "warning: {line}; {} failed",
                count(self.failed, "upload", "uploads")
            );
        }
        if self.skipped > 0 {
            line.push_str(&format!(
                "; {} skipped",
                count(self.skipped, "file", "files")
            ));
        }
        Some(line)
    }
}

fn count(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// Why an upload failed.
#[derive(Debug)]
enum UploadError {
    /// The server answered with an error.
    Api { status: u16, detail: String },
    /// The server could not be reached (or did not answer in time).
    Transport(String),
}

impl std::fmt::Display for UploadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UploadError::Api { status, detail } => write!(f, "{detail} (HTTP {status})"),
            UploadError::Transport(reason) => f.write_str(reason),
        }
    }
}

/// Posts raw file content with the run token.
pub struct Uploader {
    http: reqwest::Client,
    /// Including `/api/v1`, without a trailing slash.
    base: String,
    key: String,
    run_id: String,
}

impl Uploader {
    /// `base` as the API client has it (normalised, with `/api/v1`).
    pub fn new(base: &str, key: &str, run_id: &str) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .user_agent(concat!("oz-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot set up the HTTP client: {e}"))?;
        Ok(Uploader {
            http,
            base: base.trim_end_matches('/').to_owned(),
            key: key.to_owned(),
            run_id: run_id.to_owned(),
        })
    }

    async fn post(
        &self,
        endpoint: &str,
        query: &[(&str, &str)],
        content: Vec<u8>,
        mime: &str,
        timeout: Duration,
    ) -> Result<(), UploadError> {
        let url = format!(
            "{}/agent/runs/{}/{endpoint}",
            self.base,
            encode_segment(&self.run_id)
        );
        let request = self
            .http
            .post(&url)
            .query(query)
            .bearer_auth(&self.key)
            .header(reqwest::header::CONTENT_TYPE, mime)
            .header(reqwest::header::ACCEPT, "application/json")
            .body(content);
        let exchange = async {
            let resp = request.send().await?;
            let status = resp.status();
            let body = resp.bytes().await?;
            Ok::<_, reqwest::Error>((status, body))
        };
        let (status, body) = match tokio::time::timeout(timeout, exchange).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => {
                return Err(UploadError::Transport(format!(
                    "cannot reach the Oz API at {}: {}",
                    self.base,
                    error_chain(&e)
                )));
            }
            Err(_) => {
                return Err(UploadError::Transport(format!(
                    "no answer within {}s",
                    timeout.as_secs()
                )));
            }
        };
        if status.is_success() {
            return Ok(());
        }
        let detail = problem_detail(status, &body);
        Err(UploadError::Api {
            status: status.as_u16(),
            detail,
        })
    }
}

/// One file to send.
struct Item {
    found: Found,
    /// What the warnings call it.
    label: String,
    target: Target,
}

enum Target {
    Artifact {
        kind: Kind,
        mime: &'static str,
    },
    Handoff {
        filename: String,
        mime: &'static str,
    },
}

/// What to upload, in order, with the warnings about what is not.
struct Collected {
    items: Vec<Item>,
    warnings: Vec<String>,
    skipped: usize,
}

/// Walk both directories and pick the files to upload.
fn collect(outbox: &Outbox) -> Collected {
    let mut c = Collected {
        items: Vec::new(),
        warnings: Vec::new(),
        skipped: 0,
    };

    if let Some(dir) = outbox.dir(&outbox.artifacts, ARTIFACTS_DIR, &mut c.warnings) {
        let w = walk(&dir, ARTIFACTS_DIR, MAX_FILE_BYTES);
        c.warnings.extend(w.warnings);
        c.skipped += w.skipped;
        let fresh: Vec<Found> = w
            .files
            .into_iter()
            .filter(|f| outbox.before.get(&f.rel) != Some(&f.stamp))
            .collect();
        let extra = fresh.len().saturating_sub(MAX_ARTIFACTS);
        if extra > 0 {
            c.skipped += extra;
            c.warnings.push(format!(
                "{ARTIFACTS_DIR} holds {} new files; only the first {MAX_ARTIFACTS} are uploaded, {extra} skipped",
                fresh.len()
            ));
        }
        for found in fresh.into_iter().take(MAX_ARTIFACTS) {
            let mime = if found.rel == "plan.md" {
                "text/markdown"
            } else {
                mime_type(last_component(&found.rel))
            };
            let kind = classify(&found.rel, mime);
            c.items.push(Item {
                label: join(ARTIFACTS_DIR, &found.rel),
                found,
                target: Target::Artifact { kind, mime },
            });
        }
    }

    if let Some(dir) = outbox.dir(&outbox.handoff, HANDOFF_DIR, &mut c.warnings) {
        let w = walk(&dir, HANDOFF_DIR, MAX_FILE_BYTES);
        c.warnings.extend(w.warnings);
        c.skipped += w.skipped;
        let mut names = HashSet::new();
        let mut taken = 0usize;
        let mut extra = 0usize;
        for found in w.files {
            let filename = last_component(&found.rel).to_owned();
            let label = join(HANDOFF_DIR, &found.rel);
            if !names.insert(filename.clone()) {
                c.skipped += 1;
                c.warnings.push(format!(
                    "{label}: another handoff file is already named {filename:?} (attachments keep only the file name); skipped"
                ));
                continue;
            }
            if taken == MAX_HANDOFF {
                extra += 1;
                continue;
            }
            taken += 1;
            let mime = mime_type(&filename);
            c.items.push(Item {
                label,
                found,
                target: Target::Handoff { filename, mime },
            });
        }
        if extra > 0 {
            c.skipped += extra;
            c.warnings.push(format!(
                "{HANDOFF_DIR} holds more than {MAX_HANDOFF} files; only the first {MAX_HANDOFF} are uploaded, {extra} skipped"
            ));
        }
    }
    c
}

fn last_component(rel: &str) -> &str {
    rel.rsplit('/').next().unwrap_or(rel)
}

/// Upload both directories' files; warnings go to `stderr`. Returns the
/// counts (the caller prints [`Summary::line`]).
pub async fn upload(outbox: &Outbox, up: &Uploader, stderr: &Sink) -> Summary {
    let c = collect(outbox);
    for w in &c.warnings {
        stderr.say(&format!("warning: {w}")).await;
    }
    let mut summary = Summary {
        skipped: c.skipped,
        ..Default::default()
    };
    send_all(c.items, up, stderr, &mut summary).await;
    summary
}

async fn send_all(items: Vec<Item>, up: &Uploader, stderr: &Sink, summary: &mut Summary) {
    let deadline = tokio::time::Instant::now() + UPLOAD_BUDGET;
    let mut transport_failures = 0u32;
    let mut handoff_refused = false;
    let total = items.len();
    for (i, item) in items.into_iter().enumerate() {
        let left = total - i;
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        if remaining.is_zero() {
            summary.failed += left;
            stderr
                .say(&format!(
                    "warning: uploads took longer than {}s; {} not uploaded",
                    UPLOAD_BUDGET.as_secs(),
                    count(left, "file", "files")
                ))
                .await;
            return;
        }
        if transport_failures >= MAX_TRANSPORT_FAILURES {
            summary.failed += left;
            stderr
                .say(&format!(
                    "warning: the server cannot be reached; {} not uploaded",
                    count(left, "file", "files")
                ))
                .await;
            return;
        }
        let is_handoff = matches!(item.target, Target::Handoff { .. });
        if is_handoff && handoff_refused {
            summary.failed += 1;
            continue;
        }
        let found = item.found.clone();
        let content =
            match tokio::task::spawn_blocking(move || read_found(&found, MAX_FILE_BYTES)).await {
                Ok(Ok(c)) => c,
                Ok(Err(why)) => {
                    summary.skipped += 1;
                    stderr
                        .say(&format!("warning: {}: {why}; skipped", item.label))
                        .await;
                    continue;
                }
                Err(e) => {
                    summary.failed += 1;
                    stderr
                        .say(&format!("warning: {}: cannot read it: {e}", item.label))
                        .await;
                    continue;
                }
            };
        let timeout = remaining.min(UPLOAD_TIMEOUT);
        let result = match &item.target {
            Target::Artifact { kind, mime } => {
                // The server takes a PLAN only as UTF-8 markdown.
                let kind = if *kind == Kind::Plan && std::str::from_utf8(&content).is_err() {
                    Kind::File
                } else {
                    *kind
                };
                let query = [
                    ("artifact_type", kind.as_str()),
                    ("filename", last_component(&item.found.rel)),
                    ("filepath", item.found.rel.as_str()),
                    ("mime_type", *mime),
                ];
                up.post("artifacts", &query, content, mime, timeout).await
            }
            Target::Handoff { filename, mime } => {
                let query = [("filename", filename.as_str()), ("mime_type", *mime)];
                up.post("handoff/attachments", &query, content, mime, timeout)
                    .await
            }
        };
        match result {
            Ok(()) => {
                transport_failures = 0;
                if is_handoff {
                    summary.handoff += 1;
                } else {
                    summary.artifacts += 1;
                }
            }
            Err(e) => {
                summary.failed += 1;
                match &e {
                    UploadError::Transport(_) => transport_failures += 1,
                    // The run has no execution: no handoff file will be taken.
                    UploadError::Api { status: 409, .. } if is_handoff => handoff_refused = true,
                    UploadError::Api { .. } => transport_failures = 0,
                }
                stderr
                    .say(&format!("warning: cannot upload {}: {e}", item.label))
                    .await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    #[test]
    fn mime_types_from_extensions() {
        for (name, want) in [
            ("notes.txt", "text/plain"),
            ("run.log", "text/plain"),
            ("README.MD", "text/markdown"),
            ("data.json", "application/json"),
            ("page.html", "text/html"),
            ("page.htm", "text/html"),
            ("table.csv", "text/csv"),
            ("fix.patch", "text/x-diff"),
            ("fix.diff", "text/x-diff"),
            ("shot.png", "image/png"),
            ("shot.JPG", "image/jpeg"),
            ("shot.jpeg", "image/jpeg"),
            ("anim.gif", "image/gif"),
            ("pic.webp", "image/webp"),
            ("doc.pdf", "application/pdf"),
            ("bundle.zip", "application/zip"),
            ("bundle.tar", "application/x-tar"),
            ("bundle.tar.gz", "application/gzip"),
            ("binary", "application/octet-stream"),
            ("weird.xyz", "application/octet-stream"),
            (".png", "application/octet-stream"),
            ("trailing.", "application/octet-stream"),
        ] {
            assert_eq!(mime_type(name), want, "{name}");
        }
    }

    #[test]
    fn classification() {
        assert_eq!(classify("plan.md", "text/markdown"), Kind::Plan);
        // Only the top-level plan.md is the plan.
        assert_eq!(classify("docs/plan.md", "text/markdown"), Kind::File);
        assert_eq!(classify("screenshots/a.png", "image/png"), Kind::Screenshot);
        assert_eq!(
            classify("ui/screenshots/b.webp", "image/webp"),
            Kind::Screenshot
        );
        assert_eq!(
            classify("screenshots/x/c.jpg", "image/jpeg"),
            Kind::Screenshot
        );
        // An image elsewhere, or something else in screenshots/, is a file.
        assert_eq!(classify("a.png", "image/png"), Kind::File);
        assert_eq!(classify("screenshots.png", "image/png"), Kind::File);
        assert_eq!(classify("screenshots/notes.txt", "text/plain"), Kind::File);
        assert_eq!(classify("screenshots/a.svg", "image/svg+xml"), Kind::File);
        assert_eq!(Kind::Screenshot.as_str(), "SCREENSHOT");
    }

    fn write(path: &Path, content: &[u8]) {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(path, content).expect("write");
    }

    #[test]
    fn walk_finds_nested_files_and_skips_links_and_big_files() {
        let outside = tempfile::tempdir().expect("tempdir");
        write(&outside.path().join("secret"), b"do not upload");
        write(&outside.path().join("dir/inner"), b"nor this");

        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        write(&root.join("report.txt"), b"r");
        write(&root.join("sub/data.json"), b"{}");
        write(&root.join("sub/deeper/x.log"), b"x");
        write(&root.join("big.bin"), &[0u8; 11]);
        write(&root.join("exactly.bin"), &[0u8; 10]);
        symlink(outside.path().join("secret"), root.join("link-file")).expect("symlink");
        symlink(outside.path().join("dir"), root.join("link-dir")).expect("symlink");
        symlink(root.join("report.txt"), root.join("sub/link-inside")).expect("symlink");
        nix::unistd::mkfifo(&root.join("fifo"), nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");

        let w = walk(root, ".oz/artifacts", 10);
        let rels: Vec<&str> = w.files.iter().map(|f| f.rel.as_str()).collect();
        assert_eq!(
            rels,
            vec![
                "exactly.bin",
                "report.txt",
                "sub/data.json",
                "sub/deeper/x.log"
            ]
        );
        assert_eq!(w.skipped, 5, "{:?}", w.warnings);
        let all = w.warnings.join("\n");
        for want in [
            ".oz/artifacts/link-file is a symbolic link",
            ".oz/artifacts/link-dir is a symbolic link",
            ".oz/artifacts/sub/link-inside is a symbolic link",
            ".oz/artifacts/fifo is not a regular file",
            ".oz/artifacts/big.bin is larger than",
        ] {
            assert!(all.contains(want), "{want}: {all}");
        }
        assert!(!all.contains("inner"), "{all}");

        // Content is read only from the file the walk saw.
        let report = &w.files[1];
        assert_eq!(read_found(report, 10).expect("read"), b"r");
        std::fs::remove_file(root.join("report.txt")).expect("rm");
        symlink(outside.path().join("secret"), root.join("report.txt")).expect("symlink");
        assert!(read_found(report, 10).is_err());
        let grown = &w.files[0];
        write(&root.join("exactly.bin"), &[1u8; 20]);
        let err = read_found(grown, 10).expect_err("grew");
        assert!(err.contains("grew"), "{err}");
    }

    #[test]
    fn walk_of_a_missing_directory_warns() {
        let dir = tempfile::tempdir().expect("tempdir");
        let w = walk(&dir.path().join("nope"), "x", 10);
        assert!(w.files.is_empty());
        assert_eq!(w.warnings.len(), 1, "{:?}", w.warnings);
    }

    #[test]
    fn prepare_makes_the_directories_and_exports_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (outbox, warnings) = Outbox::prepare(dir.path());
        assert!(warnings.is_empty(), "{warnings:?}");
        let mut env = Env::from_pairs([(ENV_HANDOFF_DIR, "/elsewhere")]);
        outbox.export(&mut env);
        let artifacts = dir.path().join(".oz/artifacts");
        assert!(artifacts.is_dir());
        assert!(dir.path().join(".oz/handoff").is_dir());
        assert_eq!(env.get(ENV_ARTIFACTS_DIR), artifacts.to_str());
        assert_eq!(
            env.get(ENV_HANDOFF_DIR),
            dir.path().join(".oz/handoff").to_str()
        );
    }

    #[test]
    fn prepare_refuses_a_linked_directory() {
        let outside = tempfile::tempdir().expect("tempdir");
        let dir = tempfile::tempdir().expect("tempdir");
        symlink(outside.path(), dir.path().join(".oz")).expect("symlink");
        let (outbox, warnings) = Outbox::prepare(dir.path());
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(
            warnings[0].contains("not a plain directory"),
            "{warnings:?}"
        );
        // Nothing was made through the link.
        assert!(!outside.path().join("artifacts").exists());
        let mut env = Env::from_pairs([(ENV_ARTIFACTS_DIR, "/inherited")]);
        outbox.export(&mut env);
        assert_eq!(env.get(ENV_ARTIFACTS_DIR), None);
        assert_eq!(env.get(ENV_HANDOFF_DIR), None);
    }

    fn picked(c: &Collected) -> Vec<String> {
        c.items
            .iter()
            .map(|i| match &i.target {
                Target::Artifact { kind, mime } => {
                    format!("{} {} {mime}", kind.as_str(), i.found.rel)
                }
                Target::Handoff { filename, mime } => format!("HANDOFF {filename} {mime}"),
            })
            .collect()
    }

    #[test]
    fn collect_picks_new_files_and_classifies_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let artifacts = dir.path().join(ARTIFACTS_DIR);
        let handoff = dir.path().join(HANDOFF_DIR);
        // Left by an earlier execution in the same workspace.
        write(&artifacts.join("old.txt"), b"old");
        write(&artifacts.join("changed.txt"), b"v1");
        let (outbox, warnings) = Outbox::prepare(dir.path());
        assert!(warnings.is_empty(), "{warnings:?}");

        write(&artifacts.join("changed.txt"), b"version 2");
        write(&artifacts.join("plan.md"), b"# Plan");
        write(&artifacts.join("screenshots/home.png"), b"png");
        write(&artifacts.join("sub/data.json"), b"{}");
        write(&handoff.join("snapshot.patch"), b"diff");
        write(&handoff.join("nested/snapshot.patch"), b"other");
        write(&handoff.join("nested/state.tar.gz"), b"gz");

        let c = collect(&outbox);
        assert_eq!(
            picked(&c),
            vec![
                "FILE changed.txt text/plain",
                "PLAN plan.md text/markdown",
                "SCREENSHOT screenshots/home.png image/png",
                "FILE sub/data.json application/json",
                "HANDOFF snapshot.patch text/x-diff",
                "HANDOFF state.tar.gz application/gzip",
            ]
        );
        assert_eq!(c.skipped, 1);
        assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
        assert!(
            c.warnings[0].contains(".oz/handoff/snapshot.patch: another handoff file"),
            "{:?}",
            c.warnings
        );
    }

    #[test]
    fn collect_caps_the_number_of_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (outbox, _) = Outbox::prepare(dir.path());
        for i in 0..MAX_ARTIFACTS + 3 {
            write(
                &dir.path().join(ARTIFACTS_DIR).join(format!("a{i:03}")),
                b"a",
            );
        }
        for i in 0..MAX_HANDOFF + 2 {
            write(&dir.path().join(HANDOFF_DIR).join(format!("h{i:03}")), b"h");
        }
        let c = collect(&outbox);
        let handoff = c
            .items
            .iter()
            .filter(|i| matches!(i.target, Target::Handoff { .. }))
            .count();
        assert_eq!(c.items.len() - handoff, MAX_ARTIFACTS);
        assert_eq!(handoff, MAX_HANDOFF);
        assert_eq!(c.skipped, 5);
        assert_eq!(c.warnings.len(), 2, "{:?}", c.warnings);
        assert!(c.warnings[0].contains("3 skipped"), "{:?}", c.warnings);
        assert!(c.warnings[1].contains("2 skipped"), "{:?}", c.warnings);
        // The first ones, in name order.
        assert_eq!(c.items[0].found.rel, "a000");
        assert_eq!(c.items[MAX_ARTIFACTS - 1].found.rel, "a099");
    }

    #[test]
    fn collect_skips_a_directory_replaced_by_a_link() {
        let outside = tempfile::tempdir().expect("tempdir");
        write(&outside.path().join("secret"), b"s");
        let dir = tempfile::tempdir().expect("tempdir");
        let (outbox, _) = Outbox::prepare(dir.path());
        let artifacts = dir.path().join(ARTIFACTS_DIR);
        std::fs::remove_dir(&artifacts).expect("rmdir");
        symlink(outside.path(), &artifacts).expect("symlink");
        let c = collect(&outbox);
        assert!(c.items.is_empty());
        assert!(
            c.warnings[0].contains("no longer a plain directory"),
            "{:?}",
            c.warnings
        );
    }

    #[test]
    fn summary_lines() {
        assert_eq!(Summary::default().line(), None);
        let ok = Summary {
            artifacts: 3,
            handoff: 1,
            ..Default::default()
        };
        assert_eq!(
            ok.line().as_deref(),
            Some("uploaded 3 artifacts and 1 handoff file")
        );
        let bad = Summary {
            artifacts: 1,
            handoff: 0,
            failed: 2,
            skipped: 1,
        };
        assert_eq!(
            bad.line().as_deref(),
            Some(
                "warning: uploaded 1 artifact and 0 handoff files; 2 uploads failed; 1 file skipped"
            )
        );
    }
}
