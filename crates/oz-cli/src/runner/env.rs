//! The environment the runner reads and hands to the harness, as a value:
//! tests give the runner their own (a PATH without `claude`, a fake server
//! URL) without touching the process environment.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// PATH used when none is set (what a login shell would start from).
const FALLBACK_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Env {
    vars: BTreeMap<OsString, OsString>,
}

impl Env {
    /// A snapshot of this process's environment.
    pub fn from_process() -> Self {
        Env {
            vars: std::env::vars_os().collect(),
        }
    }

    pub fn from_pairs<K, V>(pairs: impl IntoIterator<Item = (K, V)>) -> Self
    where
        K: Into<OsString>,
        V: Into<OsString>,
    {
        Env {
            vars: pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }

    /// The value, when set and valid UTF-8.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.vars.get(OsStr::new(key)).and_then(|v| v.to_str())
    }

    /// The value, when set, valid UTF-8 and not blank; trimmed.
    pub fn non_empty(&self, key: &str) -> Option<&str> {
        self.get(key).map(str::trim).filter(|v| !v.is_empty())
    }

    pub fn contains(&self, key: &str) -> bool {
        self.vars.contains_key(OsStr::new(key))
    }

    pub fn set(&mut self, key: impl Into<OsString>, value: impl Into<OsString>) {
        self.vars.insert(key.into(), value.into());
    }

    pub fn remove(&mut self, key: &str) {
        self.vars.remove(OsStr::new(key));
    }

    pub fn iter(&self) -> impl Iterator<Item = (&OsString, &OsString)> {
        self.vars.iter()
    }

    /// Where `program` would be run from: a path with a slash is taken
    /// relative to `cwd`; a bare name is searched on this environment's PATH.
    /// Only executable regular files count.
    pub fn find_program(&self, program: &str, cwd: &Path) -> Option<PathBuf> {
        if program.is_empty() {
            return None;
        }
        if program.contains('/') {
            let path = cwd.join(program);
            return is_executable(&path).then_some(path);
        }
        let path_var = self
            .vars
            .get(OsStr::new("PATH"))
            .cloned()
            .unwrap_or_else(|| OsString::from(FALLBACK_PATH));
        std::env::split_paths(&path_var)
            .map(|dir| {
                // An empty PATH entry means the current directory.
                let dir = if dir.as_os_str().is_empty() {
                    cwd.to_path_buf()
                } else {
                    cwd.join(dir)
                };
                dir.join(program)
            })
            .find(|candidate| is_executable(candidate))
    }
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups() {
        let env = Env::from_pairs([("A", " x "), ("B", "  "), ("C", "")]);
        assert_eq!(env.get("A"), Some(" x "));
        assert_eq!(env.non_empty("A"), Some("x"));
        assert_eq!(env.non_empty("B"), None);
        assert!(env.contains("C"));
        assert_eq!(env.get("D"), None);
    }

    #[test]
    fn programs_are_found_on_path_only_when_executable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let exe = dir.path().join("tool");
        std::fs::write(&exe, "#!/bin/sh\n").expect("write");
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let plain = dir.path().join("plain");
        std::fs::write(&plain, "").expect("write");

        let env = Env::from_pairs([("PATH", dir.path().as_os_str())]);
        assert_eq!(env.find_program("tool", Path::new("/")), Some(exe.clone()));
        assert_eq!(env.find_program("plain", Path::new("/")), None);
        assert_eq!(env.find_program("missing", Path::new("/")), None);
        assert_eq!(
            env.find_program("./tool", dir.path()),
            Some(dir.path().join("./tool"))
        );
        assert_eq!(env.find_program("", dir.path()), None);

        let empty = Env::from_pairs([("PATH", "/nonexistent")]);
        assert_eq!(empty.find_program("tool", Path::new("/")), None);
    }
}
