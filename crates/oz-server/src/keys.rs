//! Creating keys and the first-start bootstrap.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use oz_store::{ApiKey, KeyKind, NewApiKey, Store, StoreError};

use crate::auth;

/// Create a key; returns the stored record and the secret (shown once).
pub async fn create_key(
    store: &dyn Store,
    team_id: &str,
    name: &str,
    kind: KeyKind,
) -> Result<(ApiKey, String), StoreError> {
    let secret = auth::new_secret(auth::key_prefix_for(kind));
    let key = store
        .insert_api_key(NewApiKey {
            id: uuid::Uuid::now_v7().to_string(),
            team_id: team_id.to_owned(),
            name: name.to_owned(),
            kind,
            prefix: auth::display_prefix(&secret),
            hash: auth::hash(&secret),
            created_at: crate::now(),
        })
        .await?;
    Ok((key, secret))
}

/// Name of the file the first admin key is written to.
pub const ADMIN_KEY_FILE: &str = "admin-api-key";

/// On first start: create the first team and an admin key, write the key to
/// `<data_dir>/admin-api-key` (0600) and return it so it can be printed once.
pub async fn bootstrap(
    store: &dyn Store,
    data_dir: &Path,
) -> anyhow::Result<Option<(String, PathBuf)>> {
    if store.first_team().await?.is_some() {
        return Ok(None);
    }
    let team_id = uuid::Uuid::now_v7().to_string();
    store
        .create_team(&team_id, "default", &crate::now())
        .await?;
    let (_key, secret) = create_key(
        store,
        &team_id,
        "admin (created at first start)",
        KeyKind::Admin,
    )
    .await?;
    std::fs::create_dir_all(data_dir)?;
    let path = data_dir.join(ADMIN_KEY_FILE);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    writeln!(f, "{secret}")?;
    Ok(Some((secret, path)))
}
