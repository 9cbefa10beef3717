//! `AmbientAgentConfig` and the objects inside it, checked against the
//! official SDK's models before they are stored.
//!
//! Whatever is stored is later sent back (in runs, schedules, agents), and
//! the SDK's strict mode rejects a whole list answer for one field of the
//! wrong type or one unknown enum value. So a field of the wrong type is a
//! 400 here, not a broken `runs.list()` for the whole team later. Keys the
//! SDK does not know are kept (its models accept extra keys).

use serde_json::{Map, Value};

use crate::error::{ApiError, ApiResult};

/// Harness types of `AmbientAgentConfig.harness.type` in the official SDK.
pub const SDK_HARNESSES: [&str; 4] = ["oz", "claude", "gemini", "codex"];

fn bad(path: &str, what: &str) -> ApiError {
    ApiError::bad_request(format!("{path} must be {what}"))
}

/// `null` or absent is fine everywhere: optional fields may be null.
fn present<'a>(m: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    m.get(key).filter(|v| !v.is_null())
}

fn strings(m: &Map<String, Value>, at: &str, keys: &[&str]) -> ApiResult<()> {
    for k in keys {
        if present(m, k).is_some_and(|v| !v.is_string()) {
            return Err(bad(&format!("{at}{k}"), "a string"));
        }
    }
    Ok(())
}

fn one_of(m: &Map<String, Value>, at: &str, key: &str, allowed: &[&str]) -> ApiResult<()> {
    match present(m, key) {
        None => Ok(()),
        Some(Value::String(s)) if allowed.contains(&s.as_str()) => Ok(()),
        Some(_) => Err(bad(
            &format!("{at}{key}"),
            &format!("one of {}", allowed.join(", ")),
        )),
    }
}

fn object<'a>(v: &'a Value, path: &str) -> ApiResult<&'a Map<String, Value>> {
    v.as_object().ok_or_else(|| bad(path, "an object"))
}

fn string_map(v: &Value, path: &str) -> ApiResult<()> {
    if object(v, path)?.values().all(Value::is_string) {
        Ok(())
    } else {
        Err(bad(path, "an object of strings"))
    }
}

fn string_list(v: &Value, path: &str) -> ApiResult<()> {
    if v.as_array().is_some_and(|a| a.iter().all(Value::is_string)) {
        Ok(())
    } else {
        Err(bad(path, "an array of strings"))
    }
}

/// `harness`: `{type?, model_id?, reasoning_level?}` with an SDK type.
pub fn check_harness(v: &Value, path: &str) -> ApiResult<()> {
    let h = object(v, path)?;
    strings(
        h,
        &format!("{path}."),
        &["type", "model_id", "reasoning_level"],
    )?;
    one_of(h, &format!("{path}."), "type", &SDK_HARNESSES)
}

/// `harness_auth_secrets`.
pub fn check_harness_auth_secrets(v: &Value, path: &str) -> ApiResult<()> {
    let m = object(v, path)?;
    strings(
        m,
        &format!("{path}."),
        &["claude_auth_secret_name", "codex_auth_secret_name"],
    )
}

/// `inference_providers`: `{aws?: {disabled?, region?, role_arn?}}`.
pub fn check_inference_providers(v: &Value, path: &str) -> ApiResult<()> {
    let m = object(v, path)?;
    if let Some(aws) = present(m, "aws") {
        let at = format!("{path}.aws");
        let a = object(aws, &at)?;
        strings(a, &format!("{at}."), &["region", "role_arn"])?;
        if present(a, "disabled").is_some_and(|d| !d.is_boolean()) {
            return Err(bad(&format!("{at}.disabled"), "a boolean"));
        }
    }
    Ok(())
}

/// `mcp_servers`: `{name: {warp_id | command (+args) | url (+headers), env?}}`.
pub fn check_mcp_servers(v: &Value, path: &str) -> ApiResult<()> {
    for (name, server) in object(v, path)? {
        let at = format!("{path}.{name}");
        let s = object(server, &at)?;
        let kinds = ["warp_id", "command", "url"]
            .iter()
            .filter(|k| present(s, k).is_some())
            .count();
        if kinds != 1 {
            return Err(ApiError::bad_request(format!(
                "MCP server {name:?} needs exactly one of warp_id, command or url"
            )));
        }
        strings(s, &format!("{at}."), &["warp_id", "command", "url"])?;
        if let Some(args) = present(s, "args") {
            string_list(args, &format!("{at}.args"))?;
        }
        for k in ["headers", "env"] {
            if let Some(m) = present(s, k) {
                string_map(m, &format!("{at}.{k}"))?;
            }
        }
    }
    Ok(())
}

/// `memory_stores` / `attached_stores`: `[{uid, access, instructions}]`.
pub fn check_memory_stores(v: &Value, path: &str) -> ApiResult<()> {
    let Some(list) = v.as_array() else {
        return Err(bad(path, "an array"));
    };
    for (i, item) in list.iter().enumerate() {
        let at = format!("{path}[{i}]");
        let m = object(item, &at)?;
        for k in ["uid", "instructions"] {
            if !m.get(k).is_some_and(Value::is_string) {
                return Err(bad(&format!("{at}.{k}"), "a string"));
            }
        }
        if !matches!(
            m.get("access").and_then(Value::as_str),
            Some("read_write" | "read_only")
        ) {
            return Err(bad(&format!("{at}.access"), "read_write or read_only"));
        }
    }
    Ok(())
}

/// Check a request's `AmbientAgentConfig` (at `path`, e.g. `config`) and
/// normalise it: a harness type the SDK does not name (our runner's
/// `command`, custom ones) moves to `runner_harness`.
pub fn normalize(mut c: Map<String, Value>, path: &str) -> ApiResult<Map<String, Value>> {
    if let Some(kind) = c
        .get("harness")
        .and_then(|h| h.get("type"))
        .and_then(Value::as_str)
        && !SDK_HARNESSES.contains(&kind)
        && let Some(h) = c.remove("harness")
    {
        c.insert("runner_harness".into(), h);
    }
    let at = format!("{path}.");
    strings(
        &c,
        &at,
        &[
            "model_id",
            "environment_id",
            "worker_host",
            "runner_id",
            "name",
            "base_prompt",
            "skill_spec",
            "computer_use_model_id",
        ],
    )?;
    one_of(&c, &at, "credential_strategy", &["CREATOR", "EXECUTOR"])?;
    if let Some(v) = present(&c, "skills") {
        string_list(v, &format!("{at}skills"))?;
    }
    if present(&c, "computer_use_enabled").is_some_and(|v| !v.is_boolean()) {
        return Err(bad(&format!("{at}computer_use_enabled"), "a boolean"));
    }
    if present(&c, "idle_timeout_minutes").is_some_and(|v| !(v.is_i64() || v.is_u64())) {
        return Err(bad(&format!("{at}idle_timeout_minutes"), "an integer"));
    }
    if let Some(v) = present(&c, "harness") {
        check_harness(v, &format!("{at}harness"))?;
    }
    if let Some(v) = present(&c, "runner_harness") {
        let h = object(v, &format!("{at}harness"))?;
        strings(
            h,
            &format!("{at}harness."),
            &["type", "model_id", "reasoning_level"],
        )?;
    }
    if let Some(v) = present(&c, "harness_auth_secrets") {
        check_harness_auth_secrets(v, &format!("{at}harness_auth_secrets"))?;
    }
    if let Some(v) = present(&c, "inference_providers") {
        check_inference_providers(v, &format!("{at}inference_providers"))?;
    }
    if let Some(v) = present(&c, "mcp_servers") {
        check_mcp_servers(v, &format!("{at}mcp_servers"))?;
    }
    if let Some(v) = present(&c, "memory_stores") {
        check_memory_stores(v, &format!("{at}memory_stores"))?;
    }
    if let Some(v) = present(&c, "session_sharing") {
        let s = object(v, &format!("{at}session_sharing"))?;
        one_of(
            s,
            &format!("{at}session_sharing."),
            "public_access",
            &["VIEWER", "EDITOR"],
        )?;
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn norm(v: Value) -> ApiResult<Value> {
        normalize(v.as_object().cloned().unwrap_or_default(), "config").map(Value::Object)
    }

    #[test]
    fn foreign_harness_types_move_to_runner_harness() {
        let c = norm(json!({"harness": {"type": "command"}})).unwrap();
        assert_eq!(c, json!({"runner_harness": {"type": "command"}}));
        let c = norm(json!({"harness": {"type": "claude", "model_id": "m"}})).unwrap();
        assert_eq!(c["harness"]["type"], "claude");
    }

    #[test]
    fn wrong_types_are_refused_with_their_path() {
        for (config, words) in [
            (
                json!({"harness": "claude"}),
                "config.harness must be an object",
            ),
            (json!({"harness": {"type": 5}}), "config.harness.type"),
            (json!({"model_id": 3}), "config.model_id must be a string"),
            (json!({"skills": ["a", 1]}), "config.skills"),
            (json!({"computer_use_enabled": "yes"}), "a boolean"),
            (json!({"idle_timeout_minutes": 1.5}), "an integer"),
            (json!({"credential_strategy": "ME"}), "CREATOR, EXECUTOR"),
            (
                json!({"mcp_servers": {"m": {"url": "u", "headers": {"a": 1}}}}),
                "headers",
            ),
            (json!({"mcp_servers": {"m": {}}}), "exactly one"),
            (json!({"memory_stores": [{"uid": "u"}]}), "instructions"),
            (
                json!({"inference_providers": {"aws": {"disabled": "no"}}}),
                "disabled",
            ),
            (
                json!({"session_sharing": {"public_access": "OWNER"}}),
                "VIEWER",
            ),
            (
                json!({"harness_auth_secrets": {"claude_auth_secret_name": 1}}),
                "claude_auth",
            ),
        ] {
            let err = norm(config.clone()).unwrap_err();
            assert!(err.detail.contains(words), "{config}: {}", err.detail);
        }
    }

    #[test]
    fn nulls_and_unknown_keys_pass() {
        let c = json!({"model_id": null, "harness": null, "x_custom": [1, 2]});
        assert_eq!(norm(c.clone()).unwrap(), c);
    }
}
