//! `oz agent run-cloud`: submit a run (optionally from a YAML file) and,
//! with `--follow`, follow it to the end.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;
use serde_json::{Map, Value, json};

use super::{api_error, exit};
use crate::client::Client;
use crate::output::{self, Format};

#[derive(Debug, Clone, Args)]
pub struct RunCloudArgs {
    /// What the agent should do (for the command harness: the shell script to run).
    #[arg(long)]
    pub prompt: Option<String>,
    /// Worker id that should run it (config.worker_host).
    #[arg(long, value_name = "WORKER_ID")]
    pub host: Option<String>,
    /// Title shown in lists (default: the prompt's first line).
    #[arg(long)]
    pub title: Option<String>,
    /// Label for grouping runs (config.name; filter with `oz run list --name`).
    #[arg(long)]
    pub name: Option<String>,
    /// Model id (config.model_id, or config.harness.model_id for a third-party harness).
    #[arg(long)]
    pub model: Option<String>,
    /// Agent harness: claude, codex, gemini, command, or one from the runner's harness config.
    #[arg(long)]
    pub harness: Option<String>,
    /// Skill spec, "owner/repo:path/to/SKILL.md".
    #[arg(long)]
    pub skill: Option<String>,
    /// MCP servers as a JSON object {name: config}, or @FILE to read it from a file.
    #[arg(long, value_name = "JSON|@FILE")]
    pub mcp: Option<String>,
    /// YAML (or JSON) file with the run: prompt, title, config, metadata, …; flags override it.
    #[arg(long, value_name = "PATH")]
    pub file: Option<PathBuf>,
    /// Metadata KEY=VALUE (repeatable).
    #[arg(long = "metadata", value_name = "KEY=VALUE")]
    pub metadata: Vec<String>,
    /// Follow the run until it ends; the exit status is the run's outcome.
    #[arg(long)]
    pub follow: bool,
    /// Output of the submission.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub output: Format,
}

/// Build the `POST /agent/runs` body from the file and the flags.
pub fn build_params(a: &RunCloudArgs) -> Result<Value, String> {
    let mut body: Map<String, Value> = match &a.file {
        None => Map::new(),
        Some(path) => read_run_file(path)?,
    };
    let mut config = match body.remove("config") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m,
        Some(_) => return Err("config in the run file must be a mapping".into()),
    };
    if let Some(p) = &a.prompt {
        body.insert("prompt".into(), json!(p));
    }
    if let Some(t) = &a.title {
        body.insert("title".into(), json!(t));
    }
    if let Some(s) = &a.skill {
        body.insert("skill".into(), json!(s));
    }
    if let Some(h) = &a.host {
        config.insert("worker_host".into(), json!(h));
    }
    if let Some(n) = &a.name {
        config.insert("name".into(), json!(n));
    }
    if let Some(h) = &a.harness {
        let harness = config.entry("harness").or_insert_with(|| json!({}));
        if !harness.is_object() {
            *harness = json!({});
        }
        harness["type"] = json!(h);
    }
    if let Some(m) = &a.model {
        set_model(&mut config, m);
    }
    if let Some(raw) = &a.mcp {
        config.insert("mcp_servers".into(), parse_mcp(raw)?);
    }
    if !a.metadata.is_empty() {
        let meta = body.entry("metadata").or_insert_with(|| json!({}));
        for kv in &a.metadata {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| format!("--metadata {kv:?} must be KEY=VALUE"))?;
            meta[k] = json!(v);
        }
    }
    if !config.is_empty() {
        body.insert("config".into(), Value::Object(config));
    }
    let has_prompt = body
        .get("prompt")
        .and_then(Value::as_str)
        .is_some_and(|p| !p.trim().is_empty());
    if !has_prompt && !body.contains_key("skill") {
        return Err("nothing to run: pass --prompt (or --skill), or a --file with a prompt".into());
    }
    Ok(Value::Object(body))
}

/// A run file (YAML, or JSON when it starts with `{`) as a mapping; empty
/// when the file holds nothing. Shared by `run-cloud` and `schedule create`.
pub fn read_run_file(path: &Path) -> Result<Map<String, Value>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let v: Value = if text.trim_start().starts_with('{') {
        serde_json::from_str(&text)
            .map_err(|e| format!("{} is not valid JSON: {e}", path.display()))?
    } else {
        // YAML 1.2 booleans: `name: n` stays a string.
        serde_saphyr::from_str_with_options(&text, serde_saphyr::options! { strict_booleans: true })
            .map_err(|e| format!("{} is not valid YAML:\n{e}", path.display()))?
    };
    match v {
        Value::Object(m) => Ok(m),
        Value::Null => Ok(Map::new()),
        _ => Err(format!(
            "{} must hold a mapping (prompt, config, …)",
            path.display()
        )),
    }
}

/// `--mcp`: a JSON object `{name: server config}`, or `@FILE` holding one.
pub fn parse_mcp(raw: &str) -> Result<Value, String> {
    let text = match raw.strip_prefix('@') {
        Some(path) => {
            std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?
        }
        None => raw.to_owned(),
    };
    let v: Value =
        serde_json::from_str(&text).map_err(|e| format!("--mcp is not valid JSON: {e}"))?;
    if !v.is_object() {
        return Err("--mcp must be a JSON object {name: server config}".into());
    }
    Ok(v)
}

/// `--model`: `model_id`, or `harness.model_id` when the config names a
/// third-party harness (the built-in one's model is `model_id`).
pub fn set_model(config: &mut Map<String, Value>, model: &str) {
    let third_party = config
        .get("harness")
        .and_then(|h| h.get("type"))
        .and_then(Value::as_str)
        .is_some_and(|t| !t.is_empty() && t != "oz");
    match config.get_mut("harness") {
        Some(h) if third_party => h["model_id"] = json!(model),
        _ => {
            config.insert("model_id".into(), json!(model));
        }
    }
}

pub async fn run_cloud(client: &Client, a: RunCloudArgs) -> ExitCode {
    let params = match build_params(&a) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let created = match client.create_run(&params).await {
        Ok(r) => r,
        Err(e) => return api_error(&e),
    };
    let id = created.run_id.clone();
    if a.output == Format::Json {
        output::print_json(&created);
    } else {
        let host = params
            .pointer("/config/worker_host")
            .and_then(Value::as_str)
            .map(|h| format!(" for worker {h:?}"))
            .unwrap_or_default();
        crate::say!("Run {id} queued{host}.");
        crate::say!("  See it:  oz run get {id}");
        crate::say!("  API:     {}/agent/runs/{id}", client.base_url());
    }
    if a.follow {
        return super::follow::follow_to_exit(client, &id, a.output == Format::Json).await;
    }
    ExitCode::from(exit::OK)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        a: RunCloudArgs,
    }

    fn params(args: &[&str]) -> Result<Value, String> {
        let mut argv = vec!["t"];
        argv.extend_from_slice(args);
        build_params(&T::parse_from(argv).a)
    }

    #[test]
    fn flags_become_the_documented_fields() {
        let p = params(&[
            "--prompt",
            "fix it",
            "--host",
            "box",
            "--title",
            "T",
            "--name",
            "nightly",
            "--harness",
            "claude",
            "--model",
            "sonnet",
            "--skill",
            "o/r:SKILL.md",
            "--mcp",
            r#"{"gh":{"url":"http://x"}}"#,
            "--metadata",
            "ticket=ABC-1",
        ])
        .unwrap();
        assert_eq!(
            p,
            json!({
                "prompt": "fix it", "title": "T", "skill": "o/r:SKILL.md",
                "metadata": {"ticket": "ABC-1"},
                "config": {
                    "worker_host": "box", "name": "nightly",
                    "harness": {"type": "claude", "model_id": "sonnet"},
                    "mcp_servers": {"gh": {"url": "http://x"}}
                }
            })
        );
        let p = params(&["--prompt", "x", "--model", "m1"]).unwrap();
        assert_eq!(p["config"]["model_id"], "m1");
    }

    #[test]
    fn the_file_is_the_base_and_flags_win() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("run.yaml");
        std::fs::write(
            &f,
            "prompt: from file\ntitle: File title\nconfig:\n  worker_host: a\n  name: n\n",
        )
        .unwrap();
        let p = params(&["--file", f.to_str().unwrap(), "--host", "b"]).unwrap();
        assert_eq!(p["prompt"], "from file");
        assert_eq!(p["title"], "File title");
        assert_eq!(p["config"]["worker_host"], "b");
        assert_eq!(p["config"]["name"], "n");
    }

    #[test]
    fn bad_input_is_a_clear_error() {
        assert!(params(&[]).unwrap_err().contains("--prompt"));
        assert!(
            params(&["--prompt", "x", "--mcp", "[1]"])
                .unwrap_err()
                .contains("object")
        );
        assert!(
            params(&["--prompt", "x", "--metadata", "nokey"])
                .unwrap_err()
                .contains("KEY=VALUE")
        );
        assert!(
            params(&["--file", "/nonexistent.yaml"])
                .unwrap_err()
                .contains("cannot read")
        );
    }
}
