//! `GET /agent`: the skills ("agents") the team uses.
//!
//! This server does not read repositories, so it lists the skill specs it
//! knows of: those of agent identities, schedules and recent runs. A spec
//! `owner/repo:path/to/SKILL.md` becomes a variant of the skill named after
//! its directory; a spec without an owner or a path is malformed and only
//! listed with `include_malformed_skills=true`. There is no cache, so
//! `refresh` changes nothing.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{RawQuery, State};
use oz_store::{RunQuery, SortBy};
use serde_json::{Value, json};

use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// Recent runs looked at for skills.
const RECENT_RUNS: u32 = 500;

struct Source {
    owner: String,
    repo: String,
    path: String,
}

fn parse_spec(spec: &str) -> Option<Source> {
    let (repo, path) = spec.split_once(':')?;
    let (owner, repo) = repo.split_once('/')?;
    if owner.is_empty() || repo.is_empty() || path.is_empty() || repo.contains('/') {
        return None;
    }
    Some(Source {
        owner: owner.to_owned(),
        repo: repo.to_owned(),
        path: path.to_owned(),
    })
}

/// A skill's name: the directory holding its `SKILL.md`, or the last path part.
pub(crate) fn skill_name(spec: &str) -> String {
    let path = spec.split_once(':').map_or(spec, |(_, p)| p);
    let mut parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    if parts.len() > 1
        && parts
            .last()
            .is_some_and(|p| p.eq_ignore_ascii_case("SKILL.md"))
    {
        parts.pop();
    }
    parts.last().copied().unwrap_or(spec).to_owned()
}

pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<Value>> {
    let key = principal.require_team()?;
    let raw = raw.unwrap_or_default();
    let mut include_malformed = false;
    let mut repo_filter = None;
    let mut by_last_run = false;
    for (k, v) in url::form_urlencoded::parse(raw.as_bytes()) {
        match k.as_ref() {
            "include_malformed_skills" => include_malformed = v == "true",
            "repo" => repo_filter = Some(v.into_owned()),
            "sort_by" => {
                by_last_run = match v.as_ref() {
                    "name" => false,
                    "last_run" => true,
                    other => {
                        return Err(ApiError::bad_request(format!(
                            "sort_by {other:?} is not name or last_run"
                        )));
                    }
                }
            }
            _ => {}
        }
    }

    // spec -> newest run time (if any)
    let mut specs: BTreeMap<String, Option<String>> = BTreeMap::new();
    for agent in state.store.list_agents(&key.team_id, None).await? {
        for s in agent
            .spec
            .get("skills")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            specs.entry(s.to_owned()).or_default();
        }
    }
    for schedule in state.store.list_schedules(&key.team_id).await? {
        let config = schedule.agent_config.unwrap_or(Value::Null);
        let one = config.get("skill_spec").and_then(Value::as_str);
        let many = config.get("skills").and_then(Value::as_array);
        for s in one
            .into_iter()
            .chain(many.into_iter().flatten().filter_map(Value::as_str))
        {
            specs.entry(s.to_owned()).or_default();
        }
    }
    let q = RunQuery {
        team_id: key.team_id.clone(),
        limit: RECENT_RUNS,
        sort_by: SortBy::CreatedAt,
        ..Default::default()
    };
    for run in state.store.list_runs(&q).await? {
        if let Some(s) = run.skill_spec {
            let last = specs.entry(s).or_default();
            if last.as_deref().is_none_or(|l| l < run.created_at.as_str()) {
                *last = Some(run.created_at);
            }
        }
    }

    let mut skills: BTreeMap<String, Vec<(Value, Option<String>)>> = BTreeMap::new();
    for (spec, last_run) in specs {
        let parsed = parse_spec(&spec);
        if let (Some(filter), Some(src)) = (&repo_filter, &parsed)
            && *filter != format!("{}/{}", src.owner, src.repo)
        {
            continue;
        }
        if repo_filter.is_some() && parsed.is_none() {
            continue;
        }
        let mut variant = match &parsed {
            Some(src) => json!({
                "id": spec,
                "base_prompt": "",
                "description": "",
                "environments": [],
                "source": { "owner": src.owner, "name": src.repo, "skill_path": src.path },
            }),
            None if include_malformed => json!({
                "id": spec,
                "base_prompt": "",
                "description": "",
                "environments": [],
                "source": { "owner": "", "name": "", "skill_path": spec },
                "error": "not a skill spec \"owner/repo:path/to/SKILL.md\"",
            }),
            None => continue,
        };
        if let Some(t) = &last_run {
            variant["last_run_timestamp"] = json!(t);
        }
        skills
            .entry(skill_name(&spec))
            .or_default()
            .push((variant, last_run));
    }
    let mut agents: Vec<(String, Option<String>, Value)> = skills
        .into_iter()
        .map(|(name, variants)| {
            let last = variants.iter().filter_map(|(_, l)| l.clone()).max();
            let variants: Vec<Value> = variants.into_iter().map(|(v, _)| v).collect();
            let item = json!({ "name": name, "variants": variants });
            (name, last, item)
        })
        .collect();
    if by_last_run {
        // Most recently run first; never-run skills last, by name.
        agents.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    }
    let agents: Vec<Value> = agents.into_iter().map(|(_, _, v)| v).collect();
    Ok(Json(json!({ "agents": agents })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_and_names() {
        let s = parse_spec("warpdotdev/warp:.claude/skills/deploy/SKILL.md").unwrap();
        assert_eq!((s.owner.as_str(), s.repo.as_str()), ("warpdotdev", "warp"));
        assert_eq!(
            skill_name("warpdotdev/warp:.claude/skills/deploy/SKILL.md"),
            "deploy"
        );
        assert_eq!(skill_name("repo:lint"), "lint");
        assert!(parse_spec("repo:lint").is_none());
        assert!(parse_spec("o/r:").is_none());
    }
}
