//! API keys and run-scoped tokens: random 256-bit secrets with a readable
//! prefix, stored only as SHA-256 hashes, compared in constant time.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use oz_store::{ApiKey, KeyKind, Run, RunState};
use rand::RngExt;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use crate::state::AppState;

/// Prefix of a team or admin key.
pub const TEAM_KEY_PREFIX: &str = "ozk_";
/// Prefix of a worker key (the official docs say worker keys start `wk-`).
pub const WORKER_KEY_PREFIX: &str = "wk-";
/// Prefix of a run-scoped token.
pub const RUN_TOKEN_PREFIX: &str = "ozr_";

/// `api_keys.last_used_at` is written at most this often per key: it tells
/// people whether a key is still in use, and a write transaction on every
/// request was a large part of the server's cost per request.
pub const TOUCH_EVERY: Duration = Duration::from_secs(60);

/// When each key's `last_used_at` was last written by this process.
static TOUCHED: Mutex<BTreeMap<String, Instant>> = Mutex::new(BTreeMap::new());

/// Is it time to write this key's `last_used_at`? Claims the write if so.
fn claim_touch(key_id: &str) -> bool {
    let now = Instant::now();
    let mut touched = TOUCHED.lock().unwrap_or_else(|p| p.into_inner());
    match touched.get(key_id) {
        Some(at) if now.duration_since(*at) < TOUCH_EVERY => false,
        _ => {
            touched.insert(key_id.to_owned(), now);
            true
        }
    }
}

/// Live API keys found recently, by hash, so that a busy client is not one
/// extra database read per request (bench/REPORT.md: the key lookup was two
/// of the twelve statements of a run).
///
/// Only keys that exist and are live are kept, each for [`KeyCache::TTL`]:
/// a key revoked through this process stops working at once (the revoke
/// clears the cache); one revoked by another process sharing the database
/// (`oz-server api-key revoke`, a replica) stops working within the TTL.
#[derive(Debug, Default)]
pub struct KeyCache {
    inner: Mutex<CachedKeys>,
}

#[derive(Debug, Default)]
struct CachedKeys {
    keys: HashMap<String, (ApiKey, Instant)>,
    /// Bumped by every clear: a key read from the store before a revoke
    /// committed must not be cached after the clear.
    generation: u64,
}

impl KeyCache {
    pub const TTL: Duration = Duration::from_secs(1);
    /// More live keys than this in one second is not a client pattern worth
    /// caching for; past it, expired entries go and then everything.
    const MAX_ENTRIES: usize = 4096;

    fn lock(&self) -> std::sync::MutexGuard<'_, CachedKeys> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A live key seen within the TTL, or else the generation to hand to
    /// [`KeyCache::put`] after reading the store.
    fn get(&self, hash: &str) -> Result<ApiKey, u64> {
        let c = self.lock();
        c.keys
            .get(hash)
            .filter(|(_, at)| at.elapsed() < Self::TTL)
            .map(|(key, _)| key.clone())
            .ok_or(c.generation)
    }

    /// Remember a key read from the store, unless the cache was cleared
    /// since `generation` (the read may predate a revoke).
    fn put(&self, generation: u64, hash: String, key: ApiKey) {
        let mut c = self.lock();
        if c.generation != generation {
            return;
        }
        if c.keys.len() >= Self::MAX_ENTRIES {
            c.keys.retain(|_, (_, at)| at.elapsed() < Self::TTL);
            if c.keys.len() >= Self::MAX_ENTRIES {
                c.keys.clear();
            }
        }
        c.keys.insert(hash, (key, Instant::now()));
    }

    /// Forget every key: call after revoking one.
    pub fn clear(&self) {
        let mut c = self.lock();
        c.keys.clear();
        c.generation += 1;
    }
}

/// A new random secret: prefix + 64 hex chars (256 bits).
pub fn new_secret(prefix: &str) -> String {
    let bytes: [u8; 32] = rand::rng().random();
    format!("{prefix}{}", hex::encode(bytes))
}

pub fn key_prefix_for(kind: KeyKind) -> &'static str {
    match kind {
        KeyKind::Worker => WORKER_KEY_PREFIX,
        KeyKind::Admin | KeyKind::Team => TEAM_KEY_PREFIX,
    }
}

/// Lower-case hex SHA-256.
pub fn hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// What people see of a key: its prefix and a few characters.
pub fn display_prefix(secret: &str) -> String {
    secret.chars().take(12).collect()
}

/// Who is calling.
#[derive(Debug, Clone)]
pub enum Principal {
    Key(ApiKey),
    /// A run-scoped token: may read and update its own run only.
    RunToken {
        run_id: String,
        team_id: String,
    },
}

impl Principal {
    pub fn team_id(&self) -> &str {
        match self {
            Principal::Key(k) => &k.team_id,
            Principal::RunToken { team_id, .. } => team_id,
        }
    }

    /// Team and admin keys may use the REST API; worker keys may not.
    pub fn require_team(&self) -> Result<&ApiKey, ApiError> {
        match self {
            Principal::Key(k) if k.kind != KeyKind::Worker => Ok(k),
            Principal::Key(_) => Err(ApiError::forbidden(
                "worker keys can only open the worker WebSocket; use a team API key",
            )),
            Principal::RunToken { .. } => Err(ApiError::forbidden(
                "a run token can only read and update its own run",
            )),
        }
    }

    pub fn require_admin(&self) -> Result<&ApiKey, ApiError> {
        match self {
            Principal::Key(k) if k.kind == KeyKind::Admin => Ok(k),
            _ => Err(ApiError::forbidden(
                "managing API keys needs an admin API key",
            )),
        }
    }

    /// May this caller read or update this run?
    pub fn can_access_run(&self, run: &Run) -> bool {
        match self {
            Principal::Key(k) => k.kind != KeyKind::Worker && k.team_id == run.team_id,
            Principal::RunToken { run_id, .. } => *run_id == run.run_id,
        }
    }
}

fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Resolve a secret to a principal. The store is searched by hash; the hash
/// found is compared again in constant time before it is trusted.
pub async fn authenticate(state: &AppState, secret: &str) -> Result<Principal, ApiError> {
    let h = hash(secret);
    if secret.starts_with(RUN_TOKEN_PREFIX) {
        let run = state.store.find_run_by_token(&h).await?;
        return match run {
            Some(run)
                if !run.state.is_terminal()
                    && run
                        .token_hash
                        .as_deref()
                        .is_some_and(|t| bool::from(t.as_bytes().ct_eq(h.as_bytes()))) =>
            {
                Ok(Principal::RunToken {
                    run_id: run.run_id,
                    team_id: run.team_id,
                })
            }
            _ => Err(ApiError::unauthorized(
                "the run token is invalid or its run has ended",
            )),
        };
    }
    let generation = match state.keys.get(&h) {
        Ok(key) => return Ok(Principal::Key(key)),
        Err(generation) => generation,
    };
    match state.store.find_api_key(&h).await? {
        Some(key) => {
            state.keys.put(generation, h, key.clone());
            if claim_touch(&key.id) {
                let now = crate::now();
                if let Err(e) = state.store.touch_api_key(&key.id, &now).await {
                    tracing::debug!(error = %e, "cannot record key use");
                    // Try again on the next request.
                    TOUCHED
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&key.id);
                }
            }
            Ok(Principal::Key(key))
        }
        None => Err(ApiError::unauthorized(
            "the API key is missing, invalid or revoked; send Authorization: Bearer <key>",
        )),
    }
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        // The full path, also inside nested routers (which strip their prefix).
        let path = parts
            .extensions
            .get::<axum::extract::OriginalUri>()
            .map_or_else(|| parts.uri.path().to_owned(), |u| u.0.path().to_owned());
        let Some(secret) = bearer(parts) else {
            return Err(
                ApiError::unauthorized("no API key: send Authorization: Bearer <key>").at(&path),
            );
        };
        authenticate(state, secret).await.map_err(|e| e.at(&path))
    }
}

/// True when a run's state allows its token to be used.
pub fn token_live(state: RunState) -> bool {
    !state.is_terminal()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str) -> ApiKey {
        ApiKey {
            id: id.into(),
            team_id: "t".into(),
            name: id.into(),
            kind: KeyKind::Team,
            prefix: "ozk_".into(),
            created_at: "2026-01-01T00:00:00.000000Z".into(),
            last_used_at: None,
            revoked_at: None,
        }
    }

    #[test]
    fn key_cache_hits_forgets_on_clear_and_ignores_reads_from_before_a_clear() {
        let cache = KeyCache::default();
        let generation = cache.get("h1").expect_err("empty cache");
        cache.put(generation, "h1".into(), key("k1"));
        assert_eq!(cache.get("h1").map(|k| k.id), Ok("k1".to_owned()));
        assert!(cache.get("h2").is_err(), "only the key put is cached");

        // A revoke clears it...
        cache.clear();
        let stale = generation;
        let fresh = cache.get("h1").expect_err("cleared");
        assert_ne!(stale, fresh);
        // ...and a lookup that read the store before the revoke committed
        // cannot put the key back.
        cache.put(stale, "h1".into(), key("k1"));
        assert!(
            cache.get("h1").is_err(),
            "a read from before the clear was cached"
        );
        cache.put(fresh, "h1".into(), key("k1"));
        assert!(cache.get("h1").is_ok());
    }

    #[test]
    fn key_cache_stays_bounded() {
        let cache = KeyCache::default();
        for i in 0..KeyCache::MAX_ENTRIES + 10 {
            let generation = cache.get("x").expect_err("not cached");
            cache.put(generation, format!("h{i}"), key(&format!("k{i}")));
        }
        assert!(cache.lock().keys.len() <= KeyCache::MAX_ENTRIES);
        let last = KeyCache::MAX_ENTRIES + 9;
        assert!(
            cache.get(&format!("h{last}")).is_ok(),
            "the newest key is kept"
        );
    }

    #[test]
    fn key_use_is_recorded_at_most_once_a_minute_per_key() {
        let a = new_secret("test-key-a-");
        let b = new_secret("test-key-b-");
        assert!(claim_touch(&a));
        assert!(
            !claim_touch(&a),
            "a second use within a minute is not written"
        );
        assert!(claim_touch(&b), "each key has its own minute");
        // A minute later it is written again.
        if let Some(earlier) = Instant::now().checked_sub(TOUCH_EVERY) {
            TOUCHED.lock().unwrap().insert(a.clone(), earlier);
            assert!(claim_touch(&a));
        }
    }

    #[test]
    fn secrets_are_long_random_and_prefixed() {
        let a = new_secret(TEAM_KEY_PREFIX);
        let b = new_secret(TEAM_KEY_PREFIX);
        assert_ne!(a, b);
        assert!(a.starts_with("ozk_"));
        assert_eq!(a.len(), 4 + 64);
        assert_eq!(hash(&a).len(), 64);
        assert_eq!(
            hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
