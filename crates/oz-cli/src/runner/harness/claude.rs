//! Claude Code: `claude -p <prompt> --output-format stream-json --verbose`,
//! and the rendering of its stream-json output for people.

use std::path::Path;

use serde_json::{Map, Value};

use super::{Invocation, OutputMode, Request, positional};
use crate::runner::scan::Lines;

pub const PROGRAM: &str = "claude";
pub const INSTALL_HINT: &str = "npm install -g @anthropic-ai/claude-code";
/// Claude's state directory variable; one per workspace in managed runs.
pub const STATE_VAR: &str = "CLAUDE_CONFIG_DIR";

/// A stream-json line can carry a whole file a tool read; past this size it
/// is passed through unparsed.
const MAX_EVENT: usize = 32 * 1024 * 1024;

pub fn invocation(req: &Request<'_>) -> Invocation {
    let mut args = vec![
        "-p".to_owned(),
        positional(req.prompt),
        "--output-format".to_owned(),
        "stream-json".to_owned(),
        "--verbose".to_owned(),
    ];
    if let Some(model) = req.model {
        args.extend(["--model".to_owned(), model.to_owned()]);
    }
    if req.sandboxed {
        args.push("--dangerously-skip-permissions".to_owned());
    }
    if let Some(mcp) = req.mcp_config {
        args.extend(["--mcp-config".to_owned(), mcp.to_owned()]);
    }
    let mut env = Vec::new();
    if req.isolate_state && !req.env.contains(STATE_VAR) {
        env.push((
            STATE_VAR.to_owned(),
            req.cwd.join(".claude").display().to_string(),
        ));
    }
    Invocation {
        label: "claude".to_owned(),
        program: PROGRAM.to_owned(),
        args,
        env,
        output: OutputMode::ClaudeStreamJson,
        install_hint: INSTALL_HINT.to_owned(),
    }
}

/// `--mcp-config` JSON from the `--mcp` values: each one inline JSON or a
/// JSON file, either `{"mcpServers": {…}}` or the server map itself (what
/// the worker passes). Returns the merged config (None when no server is
/// left) and one warning per value that could not be used.
pub fn mcp_config(values: &[String], cwd: &Path) -> (Option<String>, Vec<String>) {
    let mut servers = Map::new();
    let mut warnings = Vec::new();
    for value in values {
        let text = value.trim();
        let parsed = if text.starts_with('{') {
            serde_json::from_str::<Value>(text).map_err(|e| format!("--mcp is not valid JSON: {e}"))
        } else {
            let path = cwd.join(text);
            match std::fs::read_to_string(&path) {
                Ok(body) => serde_json::from_str::<Value>(&body)
                    .map_err(|e| format!("--mcp {}: not valid JSON: {e}", path.display())),
                Err(_) => Err(format!(
                    "--mcp {text:?} is neither JSON nor a readable file (MCP server ids are not supported by this runner)"
                )),
            }
        };
        let map = match parsed {
            Ok(Value::Object(mut map)) => match map.remove("mcpServers") {
                Some(Value::Object(inner)) => inner,
                Some(_) => {
                    warnings.push("--mcp: mcpServers must be a JSON object; ignored".to_owned());
                    continue;
                }
                None => map,
            },
            Ok(_) => {
                warnings.push("--mcp must be a JSON object; ignored".to_owned());
                continue;
            }
            Err(e) => {
                warnings.push(format!("{e}; ignored"));
                continue;
            }
        };
        servers.extend(map);
    }
    if servers.is_empty() {
        return (None, warnings);
    }
    let mut config = Map::new();
    config.insert("mcpServers".to_owned(), Value::Object(servers));
    (Some(Value::Object(config).to_string()), warnings)
}

/// Turns claude's stream-json into readable text: assistant text as is,
/// each tool use as `→ <name>`, the final result (unless it repeats the
/// last text), lines that are not JSON unchanged. Other events are skipped.
#[derive(Debug)]
pub struct StreamRenderer {
    lines: Lines,
    last_text: Option<String>,
    error: Option<String>,
}

impl Default for StreamRenderer {
    fn default() -> Self {
        StreamRenderer {
            lines: Lines::new(MAX_EVENT),
            last_text: None,
            error: None,
        }
    }
}

impl StreamRenderer {
    /// Render a chunk of claude's stdout.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut lines = std::mem::replace(&mut self.lines, Lines::new(1));
        lines.feed(chunk, |line| self.render_line(line, &mut out));
        self.lines = lines;
        out
    }

    /// Render what is left at the end of the stream.
    pub fn finish(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut lines = std::mem::replace(&mut self.lines, Lines::new(1));
        lines.finish(|line| self.render_line(line, &mut out));
        self.lines = lines;
        out
    }

    /// The error claude reported in its `result` event (`is_error: true`).
    pub fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }

    fn render_line(&mut self, line: &[u8], out: &mut Vec<u8>) {
        let event = match serde_json::from_slice::<Value>(line) {
            Ok(Value::Object(event)) => event,
            // Not JSON (or not an event): pass it on byte for byte.
            _ => {
                out.extend_from_slice(line);
                return;
            }
        };
        match event.get("type").and_then(Value::as_str) {
            Some("assistant") => self.render_assistant(&event, out),
            Some("result") => self.render_result(&event, out),
            _ => {}
        }
    }

    fn render_assistant(&mut self, event: &Map<String, Value>, out: &mut Vec<u8>) {
        let content = event
            .get("message")
            .and_then(|m| m.get("content"))
            .and_then(Value::as_array);
        for item in content.into_iter().flatten() {
            match item.get("type").and_then(Value::as_str) {
                Some("text") => {
                    if let Some(text) = item.get("text").and_then(Value::as_str) {
                        push_line(out, text);
                        self.last_text = Some(text.trim().to_owned());
                    }
                }
                Some("tool_use") => {
                    let name = item.get("name").and_then(Value::as_str).unwrap_or("tool");
                    push_line(out, &format!("→ {name}"));
                }
                _ => {}
            }
        }
    }

    fn render_result(&mut self, event: &Map<String, Value>, out: &mut Vec<u8>) {
        let text = event
            .get("result")
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|t| !t.is_empty());
        if event.get("is_error").and_then(Value::as_bool) == Some(true) {
            let reason = text
                .or_else(|| event.get("subtype").and_then(Value::as_str))
                .unwrap_or("no details")
                .to_owned();
            push_line(out, &format!("claude reported an error: {reason}"));
            self.error = Some(reason);
            return;
        }
        if let Some(text) = text
            && self.last_text.as_deref() != Some(text)
        {
            push_line(out, text);
        }
    }
}

fn push_line(out: &mut Vec<u8>, text: &str) {
    out.extend_from_slice(text.as_bytes());
    if !text.ends_with('\n') {
        out.push(b'\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::env::Env;
    use crate::runner::harness::tests::{request, s};

    #[test]
    fn argv_minimal() {
        let env = Env::default();
        let inv = invocation(&request(&env, "fix it"));
        assert_eq!(inv.program, "claude");
        assert_eq!(
            inv.args,
            s(&[
                "-p",
                "fix it",
                "--output-format",
                "stream-json",
                "--verbose"
            ])
        );
        assert_eq!(inv.env, vec![]);
        assert_eq!(inv.output, OutputMode::ClaudeStreamJson);
    }

    #[test]
    fn argv_with_model_sandbox_and_mcp() {
        let env = Env::default();
        let mut req = request(&env, "fix it");
        req.model = Some("claude-sonnet-4-5");
        req.sandboxed = true;
        req.mcp_config = Some(r#"{"mcpServers":{}}"#);
        assert_eq!(
            invocation(&req).args,
            s(&[
                "-p",
                "fix it",
                "--output-format",
                "stream-json",
                "--verbose",
                "--model",
                "claude-sonnet-4-5",
                "--dangerously-skip-permissions",
                "--mcp-config",
                r#"{"mcpServers":{}}"#,
            ])
        );
    }

    #[test]
    fn prompt_starting_with_a_dash_is_not_an_option() {
        let env = Env::default();
        let inv = invocation(&request(&env, "--help is broken"));
        assert_eq!(inv.args[1], " --help is broken");
    }

    #[test]
    fn state_dir_in_managed_runs_unless_set() {
        let env = Env::default();
        let mut req = request(&env, "p");
        req.isolate_state = true;
        assert_eq!(
            invocation(&req).env,
            vec![(
                "CLAUDE_CONFIG_DIR".to_owned(),
                "/work/space/.claude".to_owned()
            )]
        );
        let set = Env::from_pairs([("CLAUDE_CONFIG_DIR", "/elsewhere")]);
        let mut req = request(&set, "p");
        req.isolate_state = true;
        assert_eq!(invocation(&req).env, vec![]);
    }

    #[test]
    fn mcp_config_from_worker_map_and_full_config() {
        let cwd = Path::new("/");
        let (cfg, warnings) = mcp_config(&s(&[r#"{"a":{"command":"x"}}"#]), cwd);
        assert_eq!(
            cfg.as_deref(),
            Some(r#"{"mcpServers":{"a":{"command":"x"}}}"#)
        );
        assert!(warnings.is_empty());
        let (cfg, _) = mcp_config(
            &s(&[r#"{"mcpServers":{"b":{"url":"u"}}}"#, r#"{"a":{}}"#]),
            cwd,
        );
        assert_eq!(
            cfg.as_deref(),
            Some(r#"{"mcpServers":{"a":{},"b":{"url":"u"}}}"#)
        );
    }

    #[test]
    fn mcp_config_from_a_file_and_bad_values() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("mcp.json"), r#"{"f":{"command":"y"}}"#).expect("write");
        let (cfg, warnings) = mcp_config(
            &s(&["mcp.json", "0b5f3d52-uuid", "{bad", "[1]"]),
            dir.path(),
        );
        assert_eq!(
            cfg.as_deref(),
            Some(r#"{"mcpServers":{"f":{"command":"y"}}}"#)
        );
        assert_eq!(warnings.len(), 3, "{warnings:?}");
        assert_eq!(mcp_config(&[], dir.path()), (None, vec![]));
    }

    fn render(chunks: &[&[u8]]) -> (String, Option<String>) {
        let mut r = StreamRenderer::default();
        let mut out = Vec::new();
        for c in chunks {
            out.extend(r.feed(c));
        }
        out.extend(r.finish());
        (
            String::from_utf8(out).expect("utf-8"),
            r.error().map(str::to_owned),
        )
    }

    #[test]
    fn renders_a_session() {
        let stream = concat!(
            r#"{"type":"system","subtype":"init","model":"m","tools":[]}"#,
            "\n",
            r#"{"type":"assistant","message":{"content":[{"type":"text","text":"Looking at the code."},{"type":"tool_use","id":"t1","name":"Bash","input":{"command":"ls"}}]}}"#,
            "\n",
            r#"{"type":"user","message":{"content":[{"type":"tool_result","tool_use_id":"t1","content":"a b"}]}}"#,
            "\n",
            r#"{"type":"assistant","message":{"content":[{"type":"thinking","thinking":"hm"},{"type":"text","text":"Done: https://github.com/a/b/pull/1"}]}}"#,
            "\n",
            r#"{"type":"result","subtype":"success","is_error":false,"result":"Done: https://github.com/a/b/pull/1"}"#,
            "\n",
        );
        // Split in awkward places to exercise reassembly.
        let bytes = stream.as_bytes();
        let (out, err) = render(&[&bytes[..17], &bytes[17..200], &bytes[200..]]);
        assert_eq!(
            out,
            "Looking at the code.\n→ Bash\nDone: https://github.com/a/b/pull/1\n"
        );
        assert_eq!(err, None);
    }

    #[test]
    fn result_text_is_shown_when_new() {
        let (out, _) = render(&[
            br#"{"type":"result","subtype":"success","is_error":false,"result":"All good"}"#,
        ]);
        assert_eq!(out, "All good\n");
    }

    #[test]
    fn error_result_is_reported() {
        let (out, err) =
            render(&[b"{\"type\":\"result\",\"subtype\":\"error_max_turns\",\"is_error\":true}\n"]);
        assert_eq!(out, "claude reported an error: error_max_turns\n");
        assert_eq!(err.as_deref(), Some("error_max_turns"));
        let (_, err) = render(&[
            b"{\"type\":\"result\",\"is_error\":true,\"result\":\"Credit balance is too low\"}\n",
        ]);
        assert_eq!(err.as_deref(), Some("Credit balance is too low"));
    }

    #[test]
    fn non_json_lines_pass_through_and_unknown_events_are_skipped() {
        let mut r = StreamRenderer::default();
        let mut out =
            r.feed(b"plain warning\n{\"type\":\"stream_event\"}\n{\"no\":\"type\"}\n42\n\xff\nta");
        out.extend(r.feed(b"il"));
        out.extend(r.finish());
        assert_eq!(out, b"plain warning\n42\n\xff\ntail".to_vec());
        assert_eq!(r.error(), None);
    }
}
