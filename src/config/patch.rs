//! A partial update of config.json, as `PUT /.parachute/config` sends it
//! (SPEC §9.3): check every field, merge into the file, move a token into
//! secrets.json, write, and load the result. The caller serializes
//! updates; this module only knows files and keys.

use serde_json::{Map, Value};

use super::{
    Config, Env, Overrides, TOKEN_ENTRY, VaultTarget, keys, load, read_config_doc, write_config_doc,
};
use crate::error::Problem;

/// A patch that took.
pub struct Patched {
    pub config: Config,
    /// Whether the patch stored a new vault token.
    pub token_stored: bool,
}

/// Applies `patch` to the config file of `overrides` (or the default one)
/// and loads the result. A key set to null is removed from the file.
pub fn apply(
    patch: &Map<String, Value>,
    env: &Env,
    overrides: &Overrides,
) -> Result<Patched, Vec<Problem>> {
    let non_null: Map<String, Value> = patch
        .iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let checked = keys::parse_file(&Value::Object(non_null));
    // A key set to null (removed) must still be a known one.
    let mut unknown: Vec<Problem> = patch
        .iter()
        .filter(|(k, v)| v.is_null() && keys::key(k).is_none())
        .map(|(k, _)| Problem::new(k.as_str(), "unknown key"))
        .collect();
    let checked = match checked {
        Ok(c) if unknown.is_empty() => c,
        Ok(_) => return Err(unknown),
        Err(list) => {
            unknown.extend(list);
            return Err(unknown);
        }
    };
    if patch.get("vault_url").is_some_and(Value::is_null) {
        return Err(vec![Problem::new(
            "vault_url",
            "required; cannot be removed",
        )]);
    }
    for (key, var) in [
        ("claude_bin", "PARACHUTE_RUNNER_CLAUDE_BIN"),
        ("notify", "PARACHUTE_RUNNER_NOTIFY"),
    ] {
        if patch.contains_key(key) {
            return Err(vec![Problem::new(
                key,
                format!(
                    "cannot be set over HTTP (it decides what program runs); set it in config.json or {var}"
                ),
            )]);
        }
    }
    let whole = |e: &dyn std::fmt::Display| vec![Problem::whole(e.to_string())];
    let paths = super::Paths::new(env, overrides.config.as_deref()).map_err(|e| whole(&e))?;
    let mut doc = match read_config_doc(&paths.config_file) {
        Ok(Some(Value::Object(m))) => m,
        Ok(_) => Map::new(),
        Err(e) => return Err(whole(&e)),
    };
    // The stored token goes only to the host it was entered for.
    if let Some(VaultTarget::Rest { url }) = &checked.vault_url {
        let current = doc
            .get("vault_url")
            .and_then(Value::as_str)
            .and_then(|u| keys::parse_vault_url(u).ok());
        let moved = current != Some(VaultTarget::Rest { url: url.clone() });
        let token_in_effect = env.get("PARACHUTE_RUNNER_VAULT_TOKEN").is_some()
            || paths
                .secret_store()
                .get(TOKEN_ENTRY)
                .map_or(true, |t| t.is_some());
        if moved && token_in_effect && checked.vault_token.is_none() {
            return Err(vec![Problem::new(
                "vault_url",
                "changing it needs vault_token in the same request, so the stored token is never sent to a host it was not entered for",
            )]);
        }
    }
    for (k, v) in patch {
        if k == TOKEN_ENTRY {
            continue;
        }
        if v.is_null() {
            doc.remove(k);
        } else {
            doc.insert(k.clone(), v.clone());
        }
    }
    keys::parse_file(&Value::Object(doc.clone()))?;
    if let Some(token) = &checked.vault_token {
        paths
            .secret_store()
            .set(TOKEN_ENTRY, token)
            .map_err(|e| vec![Problem::new(TOKEN_ENTRY, e.to_string())])?;
    }
    write_config_doc(&paths.config_file, &doc).map_err(|e| whole(&e))?;
    let config = load(env, overrides).map_err(|e| whole(&e))?;
    Ok(Patched {
        config,
        token_stored: checked.vault_token.is_some(),
    })
}

/// The keys of `patch` whose new value does not take effect because an
/// environment variable or a command-line flag of this process wins.
pub fn deferred(patch: &Map<String, Value>, env: &Env, overrides: &Overrides) -> Vec<String> {
    patch
        .keys()
        .filter(|k| {
            let by_env = keys::key(k)
                .and_then(|key| key.env)
                .is_some_and(|var| env.get(var).is_some());
            let by_flag = match k.as_str() {
                "poll_interval_seconds" => overrides.poll_interval.is_some(),
                "vault_url" | "vault_name" | "vault_token" => overrides.vault_dir.is_some(),
                _ => false,
            };
            by_env || by_flag
        })
        .cloned()
        .collect()
}
