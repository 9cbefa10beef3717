//! Ordered environment lists and the layering rules of the Direct backend.
//!
//! A list keeps keys in the order they first appear; setting a key again
//! replaces its value in place, so the last layer wins.

use std::ffi::OsString;

/// An ordered `KEY=VALUE` list with last-write-wins semantics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnvList(Vec<(String, String)>);

impl EnvList {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn set(&mut self, key: impl Into<String>, value: impl Into<String>) {
        let key = key.into();
        let value = value.into();
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.0.push((key, value)),
        }
    }

    pub fn extend<K: Into<String>, V: Into<String>>(
        &mut self,
        items: impl IntoIterator<Item = (K, V)>,
    ) {
        for (k, v) in items {
            self.set(k, v);
        }
    }

    pub fn remove(&mut self, key: &str) {
        self.0.retain(|(k, _)| k != key);
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The worker process's own environment, as a list, without its API key:
/// the key authenticates the worker and must never reach a task or a hook.
/// Besides `WARP_API_KEY`, any variable holding the same value is dropped
/// (the key may have come from a differently named variable via `--api-key`).
pub fn worker_env_without_key(
    vars: impl IntoIterator<Item = (OsString, OsString)>,
    api_key: &str,
) -> EnvList {
    let mut list = EnvList::new();
    for (k, v) in vars {
        // Names or values that are not UTF-8 cannot be carried in our string
        // lists; such variables are rare and never ones we rely on.
        let (Ok(k), Ok(v)) = (k.into_string(), v.into_string()) else {
            continue;
        };
        if k == "WARP_API_KEY" || (!api_key.is_empty() && v == api_key) {
            continue;
        }
        list.set(k, v);
    }
    list
}

/// The minimal host base every agent starts from: only HOME, TMPDIR and PATH.
pub fn minimal_base(host: &EnvList) -> EnvList {
    let mut list = EnvList::new();
    for key in ["HOME", "TMPDIR", "PATH"] {
        if let Some(v) = host.get(key) {
            list.set(key, v);
        }
    }
    list
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_write_wins_in_place() {
        let mut l = EnvList::new();
        l.set("A", "1");
        l.set("B", "2");
        l.set("A", "3");
        assert_eq!(l.iter().collect::<Vec<_>>(), vec![("A", "3"), ("B", "2")]);
        l.remove("A");
        assert_eq!(l.get("A"), None);
        assert_eq!(l.len(), 1);
    }

    #[test]
    fn worker_key_is_stripped_by_name_and_value() {
        let vars = [
            ("WARP_API_KEY", "wk-secret"),
            ("OTHER_NAME", "wk-secret"),
            ("PATH", "/bin"),
            ("AWS_PROFILE", "prod"),
        ]
        .map(|(k, v)| (OsString::from(k), OsString::from(v)));
        let l = worker_env_without_key(vars, "wk-secret");
        assert_eq!(
            l.iter().collect::<Vec<_>>(),
            vec![("PATH", "/bin"), ("AWS_PROFILE", "prod")]
        );
    }

    #[test]
    fn minimal_base_keeps_only_three() {
        let mut host = EnvList::new();
        host.extend([
            ("HOME", "/h"),
            ("SECRET", "x"),
            ("PATH", "/bin"),
            ("TMPDIR", "/t"),
            ("USER", "u"),
        ]);
        let base = minimal_base(&host);
        assert_eq!(
            base.iter().collect::<Vec<_>>(),
            vec![("HOME", "/h"), ("TMPDIR", "/t"), ("PATH", "/bin")]
        );
    }
}
