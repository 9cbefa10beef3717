//! The OpenAPI document (`crates/oz-server/openapi.json`, served at
//! `GET /api/v1/openapi.json`).
//!
//! - its structure: OpenAPI 3.1, every `$ref` resolves, operation ids,
//!   tags, path parameters, security, error bodies;
//! - route coverage against the router's source (`src/api/mod.rs` plus the
//!   `/api/v1` nest in `src/lib.rs`), both ways;
//! - the real `oz-server` binary serves the file unchanged without a key,
//!   and its answers validate against the documented schemas.
//!
//! Coverage rules: every `.route("PATH", method(..).method(..))` of
//! `api::routes()` and of the `.nest("/api/v1", …)` in lib.rs (that is where
//! `/selfhosted/worker/ws` lives) is one documented (path, method), with the
//! same `{param}` names. The alias `POST /agent/run` is an official path, so
//! it is documented and routed like any other. HEAD (which axum adds to every
//! GET) and the routes outside `/api/v1` (`/healthz`, `/readyz`) are not
//! part of the document.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::time::timeout;

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "patch", "head", "options", "trace",
];

/// The endpoints of the official SDK (reference/oz-api.md §2) and the
/// documented alias `POST /agent/run`: everything else must be marked as an
/// extension.
const OFFICIAL: [(&str, &str); 24] = [
    ("get", "/agent"),
    ("get", "/agent/artifacts/{artifact_uid}"),
    ("get", "/agent/environments"),
    ("post", "/agent/runs"),
    ("post", "/agent/run"),
    ("get", "/agent/runs/{run_id}"),
    ("get", "/agent/runs"),
    ("post", "/agent/runs/{run_id}/cancel"),
    ("get", "/agent/runs/{run_id}/handoff/attachments"),
    ("post", "/agent/runs/{run_id}/followups"),
    ("post", "/agent/schedules"),
    ("get", "/agent/schedules/{schedule_id}"),
    ("put", "/agent/schedules/{schedule_id}"),
    ("get", "/agent/schedules"),
    ("delete", "/agent/schedules/{schedule_id}"),
    ("post", "/agent/schedules/{schedule_id}/pause"),
    ("post", "/agent/schedules/{schedule_id}/resume"),
    ("post", "/agent/identities"),
    ("put", "/agent/identities/{uid}"),
    ("get", "/agent/identities"),
    ("delete", "/agent/identities/{uid}"),
    ("get", "/agent/identities/{uid}"),
    ("get", "/agent/sessions/{session_uuid}/redirect"),
    ("get", "/agent/conversations/{conversation_id}/redirect"),
];

/// Operations that need no key (`security: []`).
const PUBLIC: [(&str, &str); 5] = [
    ("get", "/agent/sessions/{session_uuid}/redirect"),
    ("get", "/agent/conversations/{conversation_id}/redirect"),
    ("get", "/agent/artifacts/{artifact_uid}/download"),
    (
        "get",
        "/agent/runs/{run_id}/handoff/attachments/{attachment_id}/download",
    ),
    ("get", "/openapi.json"),
];

fn manifest_file(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn read(rel: &str) -> String {
    let path = manifest_file(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn document_text() -> String {
    read("openapi.json")
}

fn document() -> Value {
    serde_json::from_str(&document_text()).unwrap_or_else(|e| panic!("openapi.json: {e}"))
}

/// Every (method, path, operation) of the document.
fn operations(doc: &Value) -> Vec<(String, String, &Value)> {
    let mut out = Vec::new();
    let paths = doc["paths"].as_object().expect("paths is an object");
    for (path, item) in paths {
        let item = item.as_object().expect("a path item is an object");
        for (method, op) in item {
            if METHODS.contains(&method.as_str()) {
                out.push((method.clone(), path.clone(), op));
            }
        }
    }
    out
}

/// Follow `$ref`s (local only) to the object they name.
fn resolve<'a>(doc: &'a Value, mut v: &'a Value) -> &'a Value {
    for _ in 0..16 {
        match v.get("$ref").and_then(Value::as_str) {
            Some(r) => {
                let ptr = r
                    .strip_prefix('#')
                    .unwrap_or_else(|| panic!("non-local $ref {r}"));
                v = doc
                    .pointer(ptr)
                    .unwrap_or_else(|| panic!("dangling $ref {r}"));
            }
            None => return v,
        }
    }
    panic!("$ref chain too long");
}

fn walk<'a>(v: &'a Value, at: String, f: &mut impl FnMut(&str, &'a Value)) {
    f(&at, v);
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                walk(child, format!("{at}/{k}"), f);
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                walk(child, format!("{at}/{i}"), f);
            }
        }
        _ => {}
    }
}

// ------------------------------------------------------------------------------------------------
// (a) structure

#[test]
fn the_document_is_openapi_3_1_with_bearer_auth_under_api_v1() {
    let doc = document();
    let version = doc["openapi"].as_str().unwrap_or_default();
    assert!(version.starts_with("3.1."), "openapi is {version:?}");
    assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());
    assert_eq!(doc["servers"], json!([{ "url": "/api/v1" }]));
    assert_eq!(doc["security"], json!([{ "bearer": [] }]));
    let scheme = &doc["components"]["securitySchemes"]["bearer"];
    assert_eq!(scheme["type"], "http");
    assert_eq!(scheme["scheme"], "bearer");
}

#[test]
fn every_ref_resolves() {
    let doc = document();
    let mut refs = 0;
    walk(&doc, String::new(), &mut |at, v| {
        if let Some(r) = v.get("$ref").and_then(Value::as_str) {
            refs += 1;
            let ptr = r
                .strip_prefix('#')
                .unwrap_or_else(|| panic!("{at}: non-local $ref {r}"));
            assert!(doc.pointer(ptr).is_some(), "{at}: dangling $ref {r}");
        }
    });
    assert!(refs > 0);
}

#[test]
fn operations_have_unique_ids_responses_and_declared_tags() {
    let doc = document();
    let declared: HashSet<&str> = doc["tags"]
        .as_array()
        .expect("top-level tags")
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    let mut ids = HashSet::new();
    let mut used_tags = HashSet::new();
    for (method, path, op) in operations(&doc) {
        let id = op["operationId"]
            .as_str()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| panic!("{method} {path}: no operationId"));
        assert!(
            ids.insert(id),
            "{method} {path}: operationId {id} is used twice"
        );
        let responses = op["responses"]
            .as_object()
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| panic!("{method} {path}: no responses"));
        assert!(
            responses
                .keys()
                .any(|s| s.starts_with('2') || s.as_str() == "101"),
            "{method} {path}: no success response"
        );
        let tags = op["tags"]
            .as_array()
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| panic!("{method} {path}: no tags"));
        for t in tags {
            let t = t.as_str().expect("a tag is a string");
            assert!(
                declared.contains(t),
                "{method} {path}: tag {t:?} is not declared"
            );
            used_tags.insert(t);
        }
        assert!(
            op["summary"].as_str().is_some_and(|s| !s.is_empty()),
            "{method} {path}: no summary"
        );
    }
    let unused: Vec<_> = declared.difference(&used_tags).collect();
    assert!(unused.is_empty(), "declared tags nobody uses: {unused:?}");
}

#[test]
fn path_parameters_match_the_path_templates() {
    let doc = document();
    for (method, path, op) in operations(&doc) {
        let in_path: BTreeSet<String> = path
            .split('/')
            .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(str::to_owned)
            .collect();
        let declared: BTreeSet<String> = op["parameters"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|p| resolve(&doc, p))
            .filter(|p| p["in"] == "path")
            .map(|p| {
                assert_eq!(
                    p["required"], true,
                    "{method} {path}: path parameter not required"
                );
                p["name"].as_str().unwrap_or_default().to_owned()
            })
            .collect();
        assert_eq!(in_path, declared, "{method} {path}: path parameters");
    }
}

#[test]
fn only_the_public_operations_skip_auth() {
    let doc = document();
    let public: HashSet<(&str, &str)> = PUBLIC.into_iter().collect();
    for (method, path, op) in operations(&doc) {
        if public.contains(&(method.as_str(), path.as_str())) {
            assert_eq!(
                op.get("security"),
                Some(&json!([])),
                "{method} {path} must say security: []"
            );
            assert!(
                !op["responses"].as_object().unwrap().contains_key("401"),
                "{method} {path} is public but documents 401"
            );
        } else {
            assert!(
                op.get("security").is_none(),
                "{method} {path} must use the global bearer security"
            );
            assert!(
                op["responses"].get("401").is_some(),
                "{method} {path} needs a key but does not document 401"
            );
        }
    }
    for (method, path) in PUBLIC {
        assert!(
            doc["paths"][path][method].is_object(),
            "{method} {path} is not documented"
        );
    }
}

#[test]
fn official_endpoints_are_plain_and_every_other_one_is_a_marked_extension() {
    let doc = document();
    let official: HashSet<(&str, &str)> = OFFICIAL.into_iter().collect();
    for (method, path) in OFFICIAL {
        assert!(
            doc["paths"][path][method].is_object(),
            "official endpoint {method} {path} is not documented"
        );
    }
    for (method, path, op) in operations(&doc) {
        let marked = op.get("x-oz-extension");
        if official.contains(&(method.as_str(), path.as_str())) {
            assert!(
                marked.is_none(),
                "{method} {path} is official, not an extension"
            );
        } else {
            assert_eq!(
                marked,
                Some(&json!(true)),
                "{method} {path} is ours: mark it x-oz-extension: true"
            );
            assert!(
                op["description"].as_str().is_some_and(|d| d.len() > 20),
                "{method} {path}: say what the extension is for"
            );
        }
    }
}

#[test]
fn errors_are_problem_json_and_cancel_documents_its_statuses() {
    let doc = document();
    for (method, path, op) in operations(&doc) {
        for (status, resp) in op["responses"].as_object().unwrap() {
            if !(status.starts_with('4') || status.starts_with('5')) {
                continue;
            }
            let resp = resolve(&doc, resp);
            let content = resp["content"]
                .as_object()
                .unwrap_or_else(|| panic!("{method} {path} {status}: no content"));
            assert_eq!(
                content.keys().collect::<Vec<_>>(),
                vec!["application/problem+json"],
                "{method} {path} {status}"
            );
            assert_eq!(
                content["application/problem+json"]["schema"]["$ref"], "#/components/schemas/Error",
                "{method} {path} {status}"
            );
        }
    }
    let cancel = &doc["paths"]["/agent/runs/{run_id}/cancel"]["post"]["responses"];
    for s in ["200", "400", "404", "409"] {
        assert!(cancel.get(s).is_some(), "cancel does not document {s}");
    }
    let error = &doc["components"]["schemas"]["Error"];
    assert_eq!(
        error["required"],
        json!(["type", "title", "status", "error"])
    );
}

#[test]
fn schemas_list_only_known_required_fields_and_discriminate_artifacts() {
    let doc = document();
    walk(&doc["components"], "components".into(), &mut |at, v| {
        let (Some(req), Some(props)) = (
            v.get("required").and_then(Value::as_array),
            v.get("properties").and_then(Value::as_object),
        ) else {
            return;
        };
        for r in req {
            let r = r.as_str().expect("required names are strings");
            assert!(
                props.contains_key(r),
                "{at}: required {r} is not a property"
            );
        }
    });
    let schemas = &doc["components"]["schemas"];
    for (name, kinds) in [
        (
            "ArtifactItem",
            &[
                "PLAN",
                "PULL_REQUEST",
                "SCREENSHOT",
                "FILE",
                "EXTERNAL_REFERENCE",
            ][..],
        ),
        (
            "AgentGetArtifactResponse",
            &["PLAN", "SCREENSHOT", "FILE"][..],
        ),
    ] {
        let s = &schemas[name];
        assert_eq!(
            s["discriminator"]["propertyName"], "artifact_type",
            "{name}"
        );
        let mapping = s["discriminator"]["mapping"].as_object().expect("mapping");
        let keys: BTreeSet<&str> = mapping.keys().map(String::as_str).collect();
        assert_eq!(keys, kinds.iter().copied().collect(), "{name}");
        for (kind, target) in mapping {
            let link = json!({ "$ref": target });
            let target = resolve(&doc, &link);
            assert_eq!(target["properties"]["artifact_type"]["enum"], json!([kind]));
        }
    }
    assert_eq!(
        schemas["RunState"]["enum"],
        json!([
            "QUEUED",
            "PENDING",
            "CLAIMED",
            "INPROGRESS",
            "SUCCEEDED",
            "FAILED",
            "BLOCKED",
            "ERROR",
            "CANCELLED"
        ])
    );
}

// ------------------------------------------------------------------------------------------------
// (b) route coverage

/// The text with `//` comments removed (outside string literals).
fn strip_comments(src: &str) -> String {
    let mut out = String::with_capacity(src.len());
    for line in src.lines() {
        let mut in_str = false;
        let mut escaped = false;
        let mut cut = line.len();
        let bytes = line.as_bytes();
        for (i, &b) in bytes.iter().enumerate() {
            if in_str {
                match b {
                    _ if escaped => escaped = false,
                    b'\\' => escaped = true,
                    b'"' => in_str = false,
                    _ => {}
                }
            } else if b == b'"' {
                in_str = true;
            } else if b == b'/' && bytes.get(i + 1) == Some(&b'/') {
                cut = i;
                break;
            }
        }
        out.push_str(&line[..cut]);
        out.push('\n');
    }
    out
}

/// The text inside the parenthesis that `s` starts right after, up to the
/// matching `)` (strings respected).
fn inside_parens(s: &str) -> &str {
    let mut depth = 1;
    let mut in_str = false;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if in_str {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_str = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_str = true,
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => {
                depth -= 1;
                if depth == 0 {
                    return &s[..i];
                }
            }
            _ => {}
        }
    }
    panic!("unbalanced parentheses in {s:?}");
}

/// Calls at nesting depth 0 of a method-router expression such as
/// `post(runs::create).get(runs::list)`: the function names, last path
/// segment only.
fn top_level_calls(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0;
    let mut in_str = false;
    let mut ident = String::new();
    for c in expr.chars() {
        if in_str {
            if c == '"' {
                in_str = false;
            }
            continue;
        }
        match c {
            '"' => in_str = true,
            '(' => {
                if depth == 0 && !ident.is_empty() {
                    let name = ident.rsplit("::").next().unwrap_or_default();
                    out.push(name.to_owned());
                }
                ident.clear();
                depth += 1;
            }
            ')' => {
                depth -= 1;
                ident.clear();
            }
            '[' | '{' => depth += 1,
            ']' | '}' => depth -= 1,
            c if depth == 0 && (c.is_alphanumeric() || c == '_' || c == ':') => ident.push(c),
            _ => ident.clear(),
        }
    }
    out
}

/// Every `(method, path)` of the `.route("PATH", …)` calls in `src`.
fn routes_in(src: &str) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    let mut rest = src;
    while let Some(i) = rest.find(".route(") {
        let args = inside_parens(&rest[i + ".route(".len()..]);
        let args_t = args.trim_start();
        let lit = args_t
            .strip_prefix('"')
            .unwrap_or_else(|| panic!(".route( without a string literal path: {args}"));
        let end = lit.find('"').expect("closing quote of the route path");
        let path = &lit[..end];
        let router = lit[end + 1..]
            .trim_start()
            .strip_prefix(',')
            .unwrap_or_else(|| panic!("route {path}: no method router"));
        let calls = top_level_calls(router);
        assert!(!calls.is_empty(), "route {path}: no method in {router:?}");
        for call in calls {
            // Layers and state wrap the handlers; they add no method.
            if matches!(call.as_str(), "layer" | "route_layer" | "with_state") {
                continue;
            }
            assert!(
                METHODS.contains(&call.as_str()),
                "route {path}: `{call}(…)` is not an HTTP method this test understands; teach tests/openapi.rs"
            );
            out.insert((call, path.to_owned()));
        }
        rest = &rest[i + ".route(".len() + args.len()..];
    }
    out
}

/// The routes served under `/api/v1`: `api::routes()` in src/api/mod.rs and
/// whatever src/lib.rs adds inside `.nest("/api/v1", …)`.
fn router_routes() -> BTreeSet<(String, String)> {
    let api = strip_comments(&read("src/api/mod.rs"));
    for combinator in [".nest(", ".merge(", ".nest_service(", ".route_service("] {
        assert!(
            !api.contains(combinator),
            "src/api/mod.rs uses {combinator}…); teach tests/openapi.rs to follow it"
        );
    }
    let mut routes = routes_in(&api);
    let lib = strip_comments(&read("src/lib.rs"));
    let at = lib
        .find(".nest(")
        .expect("src/lib.rs nests the API with .nest(\"/api/v1\", …)");
    let nest = inside_parens(&lib[at + ".nest(".len()..]);
    assert!(
        nest.trim_start().starts_with("\"/api/v1\"") && nest.contains("api::routes()"),
        "src/lib.rs no longer nests api::routes() under /api/v1: {nest}"
    );
    routes.extend(routes_in(nest));
    routes
}

#[test]
fn the_route_parser_reads_axum_route_calls() {
    let src = r#"
        Router::new()
            // .route("/commented", get(x))
            .route("/a/{id}", post(m::create).get(m::list))
            .route("/b", axum::routing::delete(|| async { "ok()" }))
            .route_layer(x)
            .route("/c", get(h).put(h2).delete(h3)) // trailing "comment" ( x
            .route("/d", post(u).layer(DefaultBodyLimit::max(9)))
    "#;
    let got = routes_in(&strip_comments(src));
    let want: BTreeSet<(String, String)> = [
        ("post", "/a/{id}"),
        ("get", "/a/{id}"),
        ("delete", "/b"),
        ("get", "/c"),
        ("put", "/c"),
        ("delete", "/c"),
        ("post", "/d"),
    ]
    .into_iter()
    .map(|(m, p)| (m.to_owned(), p.to_owned()))
    .collect();
    assert_eq!(got, want);
}

#[test]
fn every_route_is_documented_and_every_documented_route_exists() {
    let routed = router_routes();
    assert!(routed.contains(&("get".to_owned(), "/openapi.json".to_owned())));
    assert!(routed.contains(&("get".to_owned(), "/selfhosted/worker/ws".to_owned())));
    let doc = document();
    let documented: BTreeSet<(String, String)> = operations(&doc)
        .into_iter()
        .map(|(m, p, _)| (m, p))
        .collect();
    let undocumented: Vec<String> = routed
        .difference(&documented)
        .map(|(m, p)| format!("{} {p}", m.to_uppercase()))
        .collect();
    let unrouted: Vec<String> = documented
        .difference(&routed)
        .map(|(m, p)| format!("{} {p}", m.to_uppercase()))
        .collect();
    assert!(
        undocumented.is_empty() && unrouted.is_empty(),
        "routes missing from openapi.json: {undocumented:#?}\n\
         documented but not routed in src/api/mod.rs or the /api/v1 nest of src/lib.rs: {unrouted:#?}"
    );
}

// ------------------------------------------------------------------------------------------------
// (c) the served document, and live answers against the schemas

const WAIT: Duration = Duration::from_secs(30);

struct Server {
    _child: Child,
    _dir: tempfile::TempDir,
    addr: String,
    admin: String,
}

impl Server {
    /// The real binary on 127.0.0.1:0 with its own data dir, no `OZ_*`
    /// variables from the caller's environment.
    async fn start() -> Server {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_oz-server"));
        cmd.arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(dir.path())
            .arg("--default-worker-host")
            .arg("nobody-here")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        for (k, _) in std::env::vars() {
            if k.starts_with("OZ_") {
                cmd.env_remove(k);
            }
        }
        let mut child = cmd.spawn().expect("spawn oz-server");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let addr = timeout(WAIT, async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(a) = line.trim().strip_prefix("oz-server listening on http://") {
                    return Some(a.to_owned());
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
        .expect("oz-server reports its address");
        // Keep draining stdout so the server never blocks on it.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let admin = std::fs::read_to_string(dir.path().join("admin-api-key"))
            .expect("admin-api-key file")
            .trim()
            .to_owned();
        Server {
            _child: child,
            _dir: dir,
            addr,
            admin,
        }
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<&Value>,
    ) -> Resp {
        let body = body.map(Value::to_string);
        http(
            &self.addr,
            method,
            &format!("/api/v1{path}"),
            key,
            body.as_deref().map(|b| ("application/json", b.as_bytes())),
        )
        .await
    }
}

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

impl Resp {
    fn content_type(&self) -> &str {
        self.headers
            .get("content-type")
            .map(String::as_str)
            .unwrap_or("")
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

/// One HTTP/1.1 request over a fresh connection; reads to the end.
async fn http(
    addr: &str,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<(&str, &[u8])>,
) -> Resp {
    let fut = async {
        let mut stream = TcpStream::connect(addr).await?;
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.map_or(0, |(_, b)| b.len())
        );
        if let Some((ctype, _)) = body {
            head.push_str(&format!("Content-Type: {ctype}\r\n"));
        }
        if let Some(k) = key {
            head.push_str(&format!("Authorization: Bearer {k}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).await?;
        if let Some((_, b)) = body {
            stream.write_all(b).await?;
        }
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        Ok::<_, std::io::Error>(raw)
    };
    let raw = timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("{method} {path}: no complete answer in time"))
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    parse_response(&raw).unwrap_or_else(|| {
        panic!(
            "{method} {path}: malformed answer {:?}",
            String::from_utf8_lossy(&raw)
        )
    })
}

fn parse_response(raw: &[u8]) -> Option<Resp> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..split]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: BTreeMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if headers
        .get("transfer-encoding")
        .is_some_and(|t| t.contains("chunked"))
    {
        body = dechunk(&body)?;
    }
    Some(Resp {
        status,
        headers,
        body,
    })
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = data.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&data[..eol]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        data = &data[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

#[tokio::test]
async fn the_server_serves_the_file_without_a_key() {
    let server = Server::start().await;
    let file = document_text();
    for key in [None, Some("ozk_not-a-real-key")] {
        let r = server.call("GET", "/openapi.json", key, None).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert!(
            r.content_type().starts_with("application/json"),
            "content type {:?}",
            r.content_type()
        );
        assert_eq!(
            String::from_utf8_lossy(&r.body),
            file,
            "the served document differs from openapi.json"
        );
        assert_eq!(r.json(), document());
    }
}

// ---- a small JSON Schema checker: the keywords the document uses ----------------------------

struct Checker<'a> {
    doc: &'a Value,
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn type_matches(t: &str, v: &Value) -> bool {
    match t {
        "integer" => v.as_i64().is_some() || v.as_u64().is_some(),
        t => json_type(v) == t,
    }
}

impl Checker<'_> {
    /// Errors of `v` against `schema`. Stricter than JSON Schema in one way:
    /// an object schema with `properties` and no `additionalProperties`
    /// rejects undocumented fields, so the document must list all we send.
    fn check(&self, schema: &Value, v: &Value, at: &str) -> Vec<String> {
        let schema = resolve(self.doc, schema);
        let mut errs = Vec::new();
        if let Some(t) = schema.get("type") {
            let ok = match t {
                Value::String(t) => type_matches(t, v),
                Value::Array(ts) => ts
                    .iter()
                    .filter_map(Value::as_str)
                    .any(|t| type_matches(t, v)),
                _ => false,
            };
            if !ok {
                errs.push(format!("{at}: {v} is not of type {t}"));
                return errs;
            }
        }
        if let Some(e) = schema.get("enum").and_then(Value::as_array)
            && !e.contains(v)
        {
            errs.push(format!("{at}: {v} is not one of {e:?}"));
        }
        if let Some(any) = schema.get("anyOf").and_then(Value::as_array)
            && !any.iter().any(|s| self.check(s, v, at).is_empty())
        {
            errs.push(format!("{at}: {v} matches none of anyOf"));
        }
        if let Some(one) = schema.get("oneOf").and_then(Value::as_array) {
            errs.extend(self.check_one_of(schema, one, v, at));
        }
        match v {
            Value::String(s) => {
                if schema["format"] == "date-time"
                    && chrono::DateTime::parse_from_rfc3339(s).is_err()
                {
                    errs.push(format!("{at}: {s:?} is not an RFC 3339 date-time"));
                }
                if let Some(min) = schema["minLength"].as_u64()
                    && (s.chars().count() as u64) < min
                {
                    errs.push(format!("{at}: {s:?} is shorter than {min}"));
                }
            }
            Value::Number(n) => {
                let x = n.as_f64().unwrap_or_default();
                if schema["minimum"].as_f64().is_some_and(|m| x < m)
                    || schema["maximum"].as_f64().is_some_and(|m| x > m)
                {
                    errs.push(format!("{at}: {x} is out of range"));
                }
            }
            Value::Array(items) => {
                if let Some(item) = schema.get("items") {
                    for (i, it) in items.iter().enumerate() {
                        errs.extend(self.check(item, it, &format!("{at}/{i}")));
                    }
                }
            }
            Value::Object(m) => {
                for r in schema["required"]
                    .as_array()
                    .map(Vec::as_slice)
                    .unwrap_or_default()
                {
                    let r = r.as_str().unwrap_or_default();
                    if !m.contains_key(r) {
                        errs.push(format!("{at}: required field {r} is missing"));
                    }
                }
                let props = schema.get("properties").and_then(Value::as_object);
                for (k, child) in m {
                    let here = format!("{at}/{k}");
                    match (
                        props.and_then(|p| p.get(k)),
                        schema.get("additionalProperties"),
                    ) {
                        (Some(s), _) => errs.extend(self.check(s, child, &here)),
                        (None, Some(Value::Bool(false))) => {
                            errs.push(format!("{here}: not allowed"))
                        }
                        (None, Some(Value::Bool(true))) => {}
                        (None, Some(s)) => errs.extend(self.check(s, child, &here)),
                        (None, None) if props.is_some() => {
                            errs.push(format!("{here}: field not in the document"))
                        }
                        (None, None) => {}
                    }
                }
            }
            _ => {}
        }
        errs
    }

    fn check_one_of(&self, schema: &Value, one: &[Value], v: &Value, at: &str) -> Vec<String> {
        if let Some(prop) = schema["discriminator"]["propertyName"].as_str() {
            let kind = v.get(prop).and_then(Value::as_str).unwrap_or_default();
            return match schema["discriminator"]["mapping"].get(kind) {
                Some(Value::String(target)) => self.check(&json!({ "$ref": target }), v, at),
                _ => vec![format!(
                    "{at}: {prop} {kind:?} is not in the discriminator mapping"
                )],
            };
        }
        let matching = one
            .iter()
            .filter(|s| self.check(s, v, at).is_empty())
            .count();
        if matching == 1 {
            Vec::new()
        } else {
            vec![format!(
                "{at}: {v} matches {matching} schemas of oneOf, not 1"
            )]
        }
    }
}

/// Assert that `r` is a documented answer of `method path`: its status is
/// listed, its content type too, and a JSON body fits the schema.
fn assert_documented(doc: &Value, method: &str, path: &str, r: &Resp) {
    let op = &doc["paths"][path][method];
    assert!(op.is_object(), "{method} {path} is not documented");
    let status = r.status.to_string();
    let range = format!("{}XX", status.chars().next().unwrap_or('0'));
    let Some(spec) = op["responses"]
        .get(&status)
        .or_else(|| op["responses"].get(&range))
    else {
        panic!(
            "{method} {path} answered {status}, which is not documented; body: {}",
            String::from_utf8_lossy(&r.body)
        );
    };
    let spec = resolve(doc, spec);
    let Some(content) = spec.get("content").and_then(Value::as_object) else {
        assert!(
            r.body.is_empty(),
            "{method} {path} {status}: documented without a body, got {:?}",
            String::from_utf8_lossy(&r.body)
        );
        return;
    };
    let media = r
        .content_type()
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_owned();
    let Some(mt) = content.get(&media).or_else(|| content.get("*/*")) else {
        panic!(
            "{method} {path} {status}: content type {media:?} is not among {:?}",
            content.keys().collect::<Vec<_>>()
        );
    };
    if media.ends_with("json") {
        let errs = Checker { doc }.check(&mt["schema"], &r.json(), "");
        assert!(
            errs.is_empty(),
            "{method} {path} {status} does not match the document:\n{}\nbody: {}",
            errs.join("\n"),
            String::from_utf8_lossy(&r.body)
        );
    }
}

#[test]
fn the_checker_catches_mismatches() {
    let doc = document();
    let c = Checker { doc: &doc };
    let item = json!({ "$ref": "#/components/schemas/ArtifactItem" });
    let pr = json!({
        "artifact_type": "PULL_REQUEST",
        "created_at": "2024-01-02T03:04:05Z",
        "data": { "url": "https://x/pr/1", "branch": "b" }
    });
    assert!(c.check(&item, &pr, "").is_empty());
    let mut missing = pr.clone();
    missing["data"].as_object_mut().unwrap().remove("branch");
    assert!(!c.check(&item, &missing, "").is_empty());
    let mut unknown = pr.clone();
    unknown["artifact_type"] = json!("VIDEO");
    assert!(!c.check(&item, &unknown, "").is_empty());
    let mut extra = pr.clone();
    extra["surprise"] = json!(1);
    assert!(!c.check(&item, &extra, "").is_empty());
    let mut bad_time = pr;
    bad_time["created_at"] = json!("yesterday");
    assert!(!c.check(&item, &bad_time, "").is_empty());
    let state = json!({ "$ref": "#/components/schemas/RunState" });
    assert!(c.check(&state, &json!("RUNNING"), "").len() == 1);
}

#[tokio::test]
async fn live_answers_match_the_documented_schemas() {
    let doc = document();
    let server = Server::start().await;
    let admin = server.admin.clone();
    let key = Some(admin.as_str());
    let check = |method: &str, path: &str, r: &Resp| assert_documented(&doc, method, path, r);

    // Runs.
    let body = json!({
        "prompt": "document me\nsecond line",
        "config": { "worker_host": "nobody-here", "name": "docs" },
        "metadata": { "ticket_id": "VIS-1" },
        "mode": "plan"
    });
    let r = server.call("POST", "/agent/runs", key, Some(&body)).await;
    check("post", "/agent/runs", &r);
    assert_eq!(r.status, 200);
    let run_id = r.json()["run_id"].as_str().expect("run_id").to_owned();
    let r = server
        .call(
            "POST",
            "/agent/run",
            key,
            Some(&json!({ "prompt": "alias" })),
        )
        .await;
    check("post", "/agent/run", &r);
    assert_eq!(r.status, 200);
    let r = server
        .call(
            "POST",
            "/agent/runs",
            key,
            Some(&json!({ "title": "no prompt" })),
        )
        .await;
    assert_eq!(r.status, 400);
    check("post", "/agent/runs", &r);

    let report = json!({
        "status_message": "working",
        "artifact": {
            "artifact_type": "PULL_REQUEST",
            "data": { "url": "https://example.com/pr/1", "branch": "feature" }
        }
    });
    let r = server
        .call(
            "POST",
            &format!("/agent/runs/{run_id}/report"),
            key,
            Some(&report),
        )
        .await;
    check("post", "/agent/runs/{run_id}/report", &r);
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["artifacts"][0]["artifact_type"], "PULL_REQUEST");
    let r = server
        .call(
            "POST",
            &format!("/agent/runs/{run_id}/report"),
            key,
            Some(&json!({ "state": "INPROGRESS" })),
        )
        .await;
    assert_eq!(r.status, 409, "a QUEUED run cannot become INPROGRESS");
    check("post", "/agent/runs/{run_id}/report", &r);

    let r = server
        .call("GET", &format!("/agent/runs/{run_id}"), key, None)
        .await;
    check("get", "/agent/runs/{run_id}", &r);
    assert_eq!(r.status, 200);
    let r = server
        .call("GET", "/agent/runs/no-such-run", key, None)
        .await;
    assert_eq!(r.status, 404);
    check("get", "/agent/runs/{run_id}", &r);
    let r = server.call("GET", "/agent/runs", None, None).await;
    assert_eq!(r.status, 401);
    check("get", "/agent/runs", &r);

    let r = server
        .call(
            "GET",
            "/agent/runs?limit=1&state=QUEUED&state=INPROGRESS&metadata%5Bticket_id%5D=VIS-1&worker_host=nobody-here",
            key,
            None,
        )
        .await;
    check("get", "/agent/runs", &r);
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["runs"].as_array().map(Vec::len), Some(1));
    let r = server.call("GET", "/agent/runs?limit=2", key, None).await;
    check("get", "/agent/runs", &r);
    let r = server
        .call("GET", "/agent/runs?sort_by=color", key, None)
        .await;
    assert_eq!(r.status, 400);
    check("get", "/agent/runs", &r);

    // Logs, then cancel, then the stream of an ended run (which ends).
    let logs = format!("/agent/runs/{run_id}/logs");
    let r = server
        .call(
            "GET",
            &format!("{logs}?since_seq=0&limit=10&phase=agent"),
            key,
            None,
        )
        .await;
    check("get", "/agent/runs/{run_id}/logs", &r);
    assert_eq!(r.status, 200);
    let r = server
        .call("GET", &format!("{logs}?phase=lunch"), key, None)
        .await;
    assert_eq!(r.status, 400);
    check("get", "/agent/runs/{run_id}/logs", &r);

    let cancel = format!("/agent/runs/{run_id}/cancel");
    let r = http(
        &server.addr,
        "POST",
        &format!("/api/v1{cancel}"),
        key,
        Some(("application/json", b"")),
    )
    .await;
    check("post", "/agent/runs/{run_id}/cancel", &r);
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!(run_id));
    let r = server.call("POST", &cancel, key, None).await;
    assert_eq!(r.status, 400, "cancelling an ended run");
    check("post", "/agent/runs/{run_id}/cancel", &r);
    let r = server
        .call("POST", "/agent/runs/no-such-run/cancel", key, None)
        .await;
    assert_eq!(r.status, 404);
    check("post", "/agent/runs/{run_id}/cancel", &r);

    let r = server
        .call("GET", &format!("{logs}/stream"), key, None)
        .await;
    check("get", "/agent/runs/{run_id}/logs/stream", &r);
    assert_eq!(r.status, 200);
    let text = String::from_utf8_lossy(&r.body).into_owned();
    let end = text
        .split("\n\n")
        .find(|e| e.lines().any(|l| l == "event: end"))
        .unwrap_or_else(|| panic!("no end event in {text:?}"));
    let data: String = end
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(str::trim_start)
        .collect();
    let data: Value = serde_json::from_str(&data).expect("end event data is JSON");
    let events = &doc["paths"]["/agent/runs/{run_id}/logs/stream"]["get"]["responses"]["200"]["content"]
        ["text/event-stream"]["x-oz-events"];
    let errs = Checker { doc: &doc }.check(&events["end"], &data, "end");
    assert!(errs.is_empty(), "end event: {errs:?} in {data}");
    assert_eq!(data["state"], "CANCELLED");

    // API keys.
    let r = server
        .call(
            "POST",
            "/api-keys",
            key,
            Some(&json!({ "name": "w", "kind": "worker" })),
        )
        .await;
    check("post", "/api-keys", &r);
    assert_eq!(r.status, 201);
    let worker_key = r.json()["key"].as_str().expect("key").to_owned();
    let worker_key_id = r.json()["id"].as_str().expect("id").to_owned();
    let r = server
        .call(
            "POST",
            "/api-keys",
            key,
            Some(&json!({ "name": "x", "kind": "root" })),
        )
        .await;
    assert_eq!(r.status, 400);
    check("post", "/api-keys", &r);
    let r = server.call("GET", "/api-keys", key, None).await;
    check("get", "/api-keys", &r);
    assert_eq!(r.status, 200);
    let r = server
        .call("GET", "/agent/runs", Some(&worker_key), None)
        .await;
    assert_eq!(r.status, 403, "a worker key on the REST API");
    check("get", "/agent/runs", &r);
    let r = server
        .call("GET", "/api-keys", Some(&worker_key), None)
        .await;
    assert_eq!(r.status, 403);
    check("get", "/api-keys", &r);

    // The worker WebSocket: a plain GET is refused, an upgrade is 101, and
    // the connection shows in /workers.
    let r = server
        .call(
            "GET",
            "/selfhosted/worker/ws?worker_id=w1",
            Some(&worker_key),
            None,
        )
        .await;
    check("get", "/selfhosted/worker/ws", &r);
    assert!(r.status >= 400, "a plain GET cannot open the WebSocket");
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!(
        "ws://{}/api/v1/selfhosted/worker/ws?worker_id=w1",
        server.addr
    )
    .into_client_request()
    .expect("ws request");
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {worker_key}")
            .parse()
            .expect("header value"),
    );
    let (_socket, resp) = timeout(WAIT, tokio_tungstenite::connect_async(req))
        .await
        .expect("ws handshake in time")
        .expect("ws handshake");
    assert_eq!(resp.status().as_u16(), 101);
    assert!(doc["paths"]["/selfhosted/worker/ws"]["get"]["responses"]["101"].is_object());
    let r = server.call("GET", "/workers", key, None).await;
    check("get", "/workers", &r);
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["workers"][0]["worker_id"], "w1");
    let r = server
        .call("GET", "/workers", Some(&worker_key), None)
        .await;
    assert_eq!(r.status, 403);
    check("get", "/workers", &r);

    let r = server
        .call("DELETE", &format!("/api-keys/{worker_key_id}"), key, None)
        .await;
    check("delete", "/api-keys/{key_id}", &r);
    assert_eq!(r.status, 204);
    let r = server
        .call("DELETE", &format!("/api-keys/{worker_key_id}"), key, None)
        .await;
    assert_eq!(r.status, 404, "revoking twice");
    check("delete", "/api-keys/{key_id}", &r);
}

/// The path (from `/api/v1` on) of an absolute URL the server handed out.
fn api_path(url: &str) -> String {
    let at = url
        .find("/api/v1/")
        .unwrap_or_else(|| panic!("{url} is not under /api/v1"));
    url[at + "/api/v1".len()..].to_owned()
}

#[tokio::test]
async fn live_catalog_answers_match_the_documented_schemas() {
    let doc = document();
    let server = Server::start().await;
    let admin = server.admin.clone();
    let key = Some(admin.as_str());
    let check = |method: &str, path: &str, r: &Resp| assert_documented(&doc, method, path, r);

    // Environments.
    let env_body = json!({
        "name": "docs env",
        "description": "for the document",
        "docker_image": "ubuntu:24.04",
        "github_repos": [{ "owner": "o", "repo": "r" }],
        "setup_commands": ["true"],
        "failure_session_retention_minutes": 5
    });
    let r = server
        .call("POST", "/agent/environments", key, Some(&env_body))
        .await;
    check("post", "/agent/environments", &r);
    assert_eq!(r.status, 201);
    let env_id = r.json()["uid"].as_str().expect("uid").to_owned();
    let r = server
        .call(
            "POST",
            "/agent/environments",
            key,
            Some(&json!({ "docker_image": "x" })),
        )
        .await;
    assert_eq!(r.status, 400, "an environment needs a name");
    check("post", "/agent/environments", &r);

    // Identities.
    let agent_body = json!({
        "name": "docs agent",
        "agent_type": "CUSTOM",
        "description": "documents",
        "environment_id": env_id,
        "worker_host": "nobody-here",
        "skills": ["o/r:skills/doc/SKILL.md"],
        "secrets": [{ "name": "TOKEN" }],
        "harness": { "type": "oz" },
        "mcp_servers": { "linear": { "warp_id": "linear" } },
        "memory": {
            "attached_stores": [{ "uid": "m1", "access": "read_only", "instructions": "read" }],
            "auto_memory": { "enabled": false }
        }
    });
    let r = server
        .call("POST", "/agent/identities", key, Some(&agent_body))
        .await;
    check("post", "/agent/identities", &r);
    assert!(r.status < 300, "{}", String::from_utf8_lossy(&r.body));
    let agent_uid = r.json()["uid"].as_str().expect("uid").to_owned();
    let r = server
        .call("POST", "/agent/identities", key, Some(&json!({})))
        .await;
    assert_eq!(r.status, 400, "an agent needs a name");
    check("post", "/agent/identities", &r);
    let r = server
        .call("GET", "/agent/identities?factory_uid=none", key, None)
        .await;
    check("get", "/agent/identities", &r);
    let r = server.call("GET", "/agent/identities", key, None).await;
    check("get", "/agent/identities", &r);
    assert_eq!(r.json()["agents"].as_array().map(Vec::len), Some(1));
    let agent_path = format!("/agent/identities/{agent_uid}");
    let r = server.call("GET", &agent_path, key, None).await;
    check("get", "/agent/identities/{uid}", &r);
    let r = server
        .call(
            "PUT",
            &agent_path,
            key,
            Some(&json!({ "description": "", "skills": [] })),
        )
        .await;
    check("put", "/agent/identities/{uid}", &r);
    assert_eq!(r.status, 200);
    let r = server
        .call("GET", "/agent/identities/nope", key, None)
        .await;
    assert_eq!(r.status, 404);
    check("get", "/agent/identities/{uid}", &r);

    // A run of the agent, in the environment, with a skill.
    let body = json!({
        "prompt": "catalog",
        "agent_identity_uid": agent_uid,
        "config": { "skill_spec": "o/r:skills/doc/SKILL.md" }
    });
    let r = server.call("POST", "/agent/runs", key, Some(&body)).await;
    check("post", "/agent/runs", &r);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let run_id = r.json()["run_id"].as_str().expect("run_id").to_owned();
    let r = server
        .call("GET", &format!("/agent/runs/{run_id}"), key, None)
        .await;
    check("get", "/agent/runs/{run_id}", &r);
    let run = r.json();

    let r = server
        .call("GET", "/agent/environments?sort_by=name", key, None)
        .await;
    check("get", "/agent/environments", &r);
    assert_eq!(r.status, 200);
    let r = server
        .call("GET", &format!("/agent/environments/{env_id}"), key, None)
        .await;
    check("get", "/agent/environments/{uid}", &r);
    assert_eq!(r.status, 200);
    let r = server
        .call("GET", "/agent/environments?sort_by=size", key, None)
        .await;
    assert_eq!(r.status, 400);
    check("get", "/agent/environments", &r);

    let r = server
        .call(
            "GET",
            "/agent?include_malformed_skills=true&sort_by=last_run",
            key,
            None,
        )
        .await;
    check("get", "/agent", &r);
    assert_eq!(r.status, 200);
    assert!(!r.json()["agents"].as_array().is_none_or(Vec::is_empty));

    // Follow-ups.
    let followups = format!("/agent/runs/{run_id}/followups");
    let r = server
        .call(
            "POST",
            &followups,
            key,
            Some(&json!({ "message": "also this", "mode": "plan" })),
        )
        .await;
    check("post", "/agent/runs/{run_id}/followups", &r);
    assert_eq!(r.status, 200);
    let r = server
        .call("POST", &followups, key, Some(&json!({ "mode": "plan" })))
        .await;
    assert_eq!(r.status, 400, "a follow-up needs a message");
    check("post", "/agent/runs/{run_id}/followups", &r);
    let r = server.call("GET", &followups, key, None).await;
    check("get", "/agent/runs/{run_id}/followups", &r);
    assert_eq!(r.json()["followups"].as_array().map(Vec::len), Some(1));

    // Artifacts: upload each kind, read it back, download it.
    let base = format!("/api/v1/agent/runs/{run_id}/artifacts");
    let uploads = [
        (
            "?artifact_type=FILE&filepath=out/report.txt&mime_type=text/plain&description=d&title=t",
            "text/plain",
            &b"report"[..],
        ),
        (
            "?artifact_type=SCREENSHOT&filename=shot.png&mime_type=image/png",
            "image/png",
            &b"\x89PNG"[..],
        ),
        (
            "?artifact_type=PLAN&title=Plan",
            "text/markdown",
            &b"# Plan"[..],
        ),
    ];
    for (query, ctype, bytes) in uploads {
        let r = http(
            &server.addr,
            "POST",
            &format!("{base}{query}"),
            key,
            Some((ctype, bytes)),
        )
        .await;
        check("post", "/agent/runs/{run_id}/artifacts", &r);
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
        let uid = r.json()["data"]["artifact_uid"]
            .as_str()
            .expect("artifact_uid")
            .to_owned();
        let r = server
            .call("GET", &format!("/agent/artifacts/{uid}"), key, None)
            .await;
        check("get", "/agent/artifacts/{artifact_uid}", &r);
        assert_eq!(r.status, 200);
        if let Some(url) = r.json()["data"]["download_url"].as_str() {
            let path = api_path(url);
            let r = server.call("GET", &path, None, None).await;
            check("get", "/agent/artifacts/{artifact_uid}/download", &r);
            assert_eq!(r.status, 200);
            assert_eq!(r.body, bytes);
            let forged = format!("{}0", path);
            let r = server.call("GET", &forged, None, None).await;
            assert_eq!(r.status, 403, "a wrong signature");
            check("get", "/agent/artifacts/{artifact_uid}/download", &r);
        }
    }
    let r = http(
        &server.addr,
        "POST",
        &format!("{base}?artifact_type=VIDEO&filename=a"),
        key,
        Some(("video/mp4", b"x")),
    )
    .await;
    assert_eq!(r.status, 400);
    check("post", "/agent/runs/{run_id}/artifacts", &r);
    let r = server.call("GET", "/agent/artifacts/nope", key, None).await;
    assert_eq!(r.status, 404);
    check("get", "/agent/artifacts/{artifact_uid}", &r);
    let r = server
        .call("GET", &format!("/agent/runs/{run_id}"), key, None)
        .await;
    check("get", "/agent/runs/{run_id}", &r);
    assert_eq!(r.json()["artifacts"].as_array().map(Vec::len), Some(3));

    // Handoff: nothing yet; a queued run has no execution to attach to.
    let handoff = format!("/agent/runs/{run_id}/handoff/attachments");
    let r = server.call("GET", &handoff, key, None).await;
    check("get", "/agent/runs/{run_id}/handoff/attachments", &r);
    assert_eq!(r.json()["attachments"], json!([]));
    let r = http(
        &server.addr,
        "POST",
        &format!("/api/v1{handoff}?filename=a.txt"),
        key,
        Some(("text/plain", b"a")),
    )
    .await;
    check("post", "/agent/runs/{run_id}/handoff/attachments", &r);
    let r = server
        .call(
            "GET",
            &format!("{handoff}/nope/download?expires=1&signature=00"),
            None,
            None,
        )
        .await;
    assert_eq!(r.status, 403);
    check(
        "get",
        "/agent/runs/{run_id}/handoff/attachments/{attachment_id}/download",
        &r,
    );

    // Redirects (no key).
    let conversation = run["conversation_id"].as_str().unwrap_or("none").to_owned();
    let r = server
        .call(
            "GET",
            &format!("/agent/conversations/{conversation}/redirect"),
            None,
            None,
        )
        .await;
    check("get", "/agent/conversations/{conversation_id}/redirect", &r);
    assert_eq!(r.status, 200);
    let r = server
        .call(
            "GET",
            "/agent/sessions/no-such-session/redirect",
            None,
            None,
        )
        .await;
    check("get", "/agent/sessions/{session_uuid}/redirect", &r);
    assert_eq!(r.json(), json!({}));

    // Schedules.
    let sched_body = json!({
        "name": "nightly docs",
        "cron_schedule": "0 3 * * *",
        "prompt": "write docs",
        "agent_config": { "environment_id": env_id, "worker_host": "nobody-here" },
        "metadata": { "team": "docs" },
        "mode": "normal"
    });
    let r = server
        .call("POST", "/agent/schedules", key, Some(&sched_body))
        .await;
    check("post", "/agent/schedules", &r);
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let sched_id = r.json()["id"].as_str().expect("id").to_owned();
    let r = server
        .call(
            "POST",
            "/agent/schedules",
            key,
            Some(&json!({ "name": "x", "cron_schedule": "never", "prompt": "p" })),
        )
        .await;
    assert_eq!(r.status, 400);
    check("post", "/agent/schedules", &r);
    let sched = format!("/agent/schedules/{sched_id}");
    let r = server.call("GET", &sched, key, None).await;
    check("get", "/agent/schedules/{schedule_id}", &r);
    let r = server.call("GET", "/agent/schedules", key, None).await;
    check("get", "/agent/schedules", &r);
    let put = json!({ "name": "nightly docs", "cron_schedule": "0 4 * * *", "enabled": true, "prompt": "write docs" });
    let r = server.call("PUT", &sched, key, Some(&put)).await;
    check("put", "/agent/schedules/{schedule_id}", &r);
    assert_eq!(r.status, 200);
    let r = server
        .call("POST", &format!("{sched}/pause"), key, None)
        .await;
    check("post", "/agent/schedules/{schedule_id}/pause", &r);
    assert_eq!(r.json()["enabled"], false);
    let r = server
        .call("POST", &format!("{sched}/resume"), key, None)
        .await;
    check("post", "/agent/schedules/{schedule_id}/resume", &r);
    assert_eq!(r.json()["enabled"], true);
    let r = server.call("DELETE", &sched, key, None).await;
    check("delete", "/agent/schedules/{schedule_id}", &r);
    assert_eq!(r.json(), json!({ "success": true }));
    let r = server.call("GET", &sched, key, None).await;
    assert_eq!(r.status, 404);
    check("get", "/agent/schedules/{schedule_id}", &r);

    // Deletions.
    let r = server.call("DELETE", &agent_path, key, None).await;
    check("delete", "/agent/identities/{uid}", &r);
    assert_eq!(r.status, 204);
    let r = server
        .call(
            "DELETE",
            &format!("/agent/environments/{env_id}"),
            key,
            None,
        )
        .await;
    check("delete", "/agent/environments/{uid}", &r);
    assert_eq!(r.status, 200);
    let r = server
        .call(
            "DELETE",
            &format!("/agent/environments/{env_id}"),
            key,
            None,
        )
        .await;
    assert_eq!(r.status, 404);
    check("delete", "/agent/environments/{uid}", &r);
}
