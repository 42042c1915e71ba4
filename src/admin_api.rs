//! The HTTP admin API of `serve` (SPEC §9.2, §9.3): routing, the JSON
//! answers and the body cap. Connections, deadlines and limits are
//! `http`'s (a thread per connection, so one slow client never holds up
//! another); authentication is `auth`'s; the work is the `Daemon`'s; the
//! rows of `/runner/jobs` are `jobs`'.

use std::sync::Arc;

use jiff::Timestamp;
use serde_json::{Value, json};

use crate::auth::{Denied, Need};
use crate::error::Problem;
use crate::http::{self, BodyError, Request, Response};
use crate::jobs::Row;
use crate::serve::{Daemon, RunNowError};

/// `.parachute/info` and `.parachute/config/schema`, as shipped.
pub const INFO: &str = include_str!("../.parachute/info");
pub const SCHEMA: &str = include_str!("../.parachute/config/schema");
pub const TAGLINE: &str = "Runs scheduled Claude jobs from your vault's notes";
/// Largest request body read (SPEC §9.2).
pub const MAX_BODY: usize = 64 << 10;
/// As the TypeScript runner.
const DEFAULT_RUNS_LIMIT: usize = 100;

/// The admin API as an `http` handler.
pub fn handler(daemon: Arc<Daemon>) -> Arc<dyn http::Handler> {
    Arc::new(move |request: &mut Request<'_>| handle(request, &daemon))
}

/// An answer: status and JSON (or text) body, and work to do once it was
/// sent.
struct Answer {
    status: u16,
    body: String,
    content_type: &'static str,
    allow: Option<&'static str>,
    then: Option<Box<dyn FnOnce() + Send>>,
}

impl Answer {
    fn json(status: u16, body: Value) -> Answer {
        Answer {
            status,
            body: body.to_string(),
            content_type: "application/json",
            allow: None,
            then: None,
        }
    }

    fn error(status: u16, code: &str, message: impl Into<String>) -> Answer {
        Answer::json(status, json!({ "error": code, "message": message.into() }))
    }

    fn raw(status: u16, body: &str, content_type: &'static str) -> Answer {
        Answer {
            status,
            body: body.to_string(),
            content_type,
            allow: None,
            then: None,
        }
    }
}

fn handle(request: &mut Request<'_>, daemon: &Arc<Daemon>) -> Response {
    let answer = route(request, daemon);
    let mut response = Response::new(answer.status, answer.content_type, answer.body);
    if let Some(allow) = answer.allow {
        response = response.with_header("Allow", allow);
    }
    if let Some(work) = answer.then {
        response = response.then(work);
    }
    response
}

/// The routes of SPEC §9.3.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    Health,
    Info,
    Schema,
    Jobs,
    Runs,
    RunNow,
    Pause,
    Resume,
    Config,
    ClearToken,
    Metrics,
}

fn find_route(path: &str) -> Option<(Route, &'static [&'static str])> {
    const GET: &[&str] = &["GET"];
    const POST: &[&str] = &["POST"];
    Some(match path {
        "/healthz" | "/runner/healthz" => (Route::Health, GET),
        "/.parachute/info" => (Route::Info, GET),
        "/.parachute/config/schema" => (Route::Schema, GET),
        "/runner/jobs" => (Route::Jobs, GET),
        "/runner/runs" => (Route::Runs, GET),
        "/.parachute/config" => (Route::Config, &["GET", "PUT"]),
        "/.parachute/clear-credential/vault-token" => (Route::ClearToken, POST),
        "/metrics" => (Route::Metrics, GET),
        p => match job_action(p)? {
            (_, "run-now") => (Route::RunNow, POST),
            (_, "pause") => (Route::Pause, POST),
            (_, "resume") => (Route::Resume, POST),
            _ => return None,
        },
    })
}

/// `/runner/jobs/<percent-encoded path>/<action>`: the encoded path and
/// the action.
fn job_action(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix("/runner/jobs/")?;
    let (encoded, action) = rest.rsplit_once('/')?;
    (!encoded.is_empty() && matches!(action, "run-now" | "pause" | "resume"))
        .then_some((encoded, action))
}

fn route(request: &mut Request<'_>, daemon: &Arc<Daemon>) -> Answer {
    let url = request.target().to_string();
    let (path, query) = url.split_once('?').unwrap_or((&url, ""));
    let Some((route, methods)) = find_route(path) else {
        return Answer::error(404, "not_found", format!("no route {path}"));
    };
    let method = request.method().to_string();
    if !methods.contains(&method.as_str()) {
        let mut a = Answer::error(
            405,
            "method_not_allowed",
            format!("{method} is not allowed on {path}"),
        );
        a.allow = Some(match route {
            Route::Config => "GET, PUT",
            Route::RunNow | Route::Pause | Route::Resume | Route::ClearToken => "POST",
            _ => "GET",
        });
        return a;
    }
    let need = match (route, method.as_str()) {
        (Route::Health | Route::Info | Route::Schema | Route::Metrics, _) => None,
        (Route::Jobs | Route::Runs, _) | (Route::Config, "GET") => Some(Need::Read),
        _ => Some(Need::Admin),
    };
    if request.head_too_large() {
        // No header was kept: a token that large cannot be checked.
        return match need {
            Some(_) => Answer::error(
                401,
                "unauthorized",
                "request headers over 16 KiB: the token cannot be checked",
            ),
            None => Answer::error(
                431,
                "header_too_large",
                "the request line and headers are limited to 16 KiB",
            ),
        };
    }
    // The body, capped, before anything else reads the request.
    let body = match read_body(request) {
        Ok(body) => body,
        Err(answer) => return answer,
    };
    if let Some(need) = need {
        let auth_header = request.header("Authorization");
        if let Err(denied) = daemon.auth.check(auth_header, need, Timestamp::now()) {
            return denied_answer(&denied);
        }
    }
    match (route, method.as_str()) {
        (Route::Health, _) => health(daemon),
        (Route::Info, _) => Answer::raw(200, INFO, "application/json"),
        (Route::Schema, _) => Answer::raw(200, SCHEMA, "application/schema+json"),
        (Route::Metrics, _) => Answer::raw(
            200,
            &daemon.metrics.render(&daemon.gauges()),
            "text/plain; version=0.0.4",
        ),
        (Route::Jobs, _) => jobs(daemon),
        (Route::Runs, _) => runs(daemon, query),
        (Route::RunNow, _) => run_now(daemon, path, query),
        (Route::Pause, _) => pause(daemon, path, true),
        (Route::Resume, _) => pause(daemon, path, false),
        (Route::Config, "GET") => Answer::json(200, daemon.config_view()),
        (Route::Config, _) => put_config(daemon, &body),
        (Route::ClearToken, _) => match daemon.clear_token() {
            Ok(()) => Answer::json(200, json!({ "ok": true })),
            Err(e) => Answer::error(500, "internal_error", e),
        },
    }
}

fn read_body(request: &mut Request<'_>) -> Result<Vec<u8>, Answer> {
    match request.read_body(MAX_BODY) {
        Ok(body) => Ok(body),
        Err(BodyError::TooLarge) => Err(Answer::error(
            413,
            "payload_too_large",
            format!("request bodies are limited to {} KiB", MAX_BODY >> 10),
        )),
        Err(BodyError::Read(e)) => Err(Answer::error(
            400,
            "bad_request",
            format!("cannot read the body: {e}"),
        )),
    }
}

fn denied_answer(denied: &Denied) -> Answer {
    match denied {
        Denied::Unauthorized(message) => Answer::error(401, "unauthorized", message.clone()),
        Denied::Unavailable(message) => Answer::error(503, "hub_unreachable", message.clone()),
        Denied::Forbidden { required, granted } => Answer::json(
            403,
            json!({
                "error": "Forbidden",
                "error_type": "insufficient_scope",
                "message": denied.to_string(),
                "required_scope": required,
                "granted_scopes": granted,
            }),
        ),
    }
}

fn health(daemon: &Daemon) -> Answer {
    let (jobs, tick) = {
        let s = daemon.shared();
        (
            // Every loaded job, manual and disabled ones too (as the
            // TypeScript runner counts).
            s.table.values().filter(|e| e.plan.is_ok()).count(),
            s.last_tick,
        )
    };
    Answer::json(
        200,
        json!({
            "status": "ok",
            "scheduledJobs": jobs,
            "lastTickAt": tick.map(|t| format!("{t:.3}")),
            "uptime_seconds": daemon.uptime().as_secs(),
        }),
    )
}

fn jobs(daemon: &Daemon) -> Answer {
    let (rows, store, disabled) = {
        let s = daemon.shared();
        // Only what the answer shows, not whole notes (prompts included),
        // while the scheduler waits for the lock.
        let rows: Vec<(String, crate::due::Plan, Option<Timestamp>)> = s
            .table
            .iter()
            .filter_map(|(p, e)| {
                e.plan
                    .as_ref()
                    .ok()
                    .map(|plan| (p.clone(), plan.clone(), e.next))
            })
            .collect();
        (
            rows,
            s.rt.as_ref().map(|rt| rt.store.clone()),
            s.config.disabled,
        )
    };
    let state = store.and_then(|st| st.read().ok()).unwrap_or_default();
    let list: Vec<Value> = rows
        .into_iter()
        .map(|(path, plan, next)| Row::new(&path, Ok(plan), next, &state, disabled).api_json())
        .collect();
    Answer::json(200, json!({ "jobs": list }))
}

/// The name of the route for a path, if any (for fuzzing and logs).
pub fn route_name(path: &str) -> Option<String> {
    find_route(path).map(|(r, _)| format!("{r:?}"))
}

/// `key=value` pairs of a query string, percent-decoded.
pub fn query_param(query: &str, key: &str) -> Option<String> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| crate::percent::decode(&v.replace('+', " ")))
}

fn runs(daemon: &Daemon, query: &str) -> Answer {
    let since = match query_param(query, "since") {
        None => None,
        Some(text) => match text.parse::<Timestamp>() {
            Ok(t) => Some(t),
            Err(_) => {
                return Answer::error(
                    400,
                    "bad_request",
                    format!(
                        "since: expected an ISO 8601 instant such as 2026-01-01T00:00:00Z (got {text:?})"
                    ),
                );
            }
        },
    };
    let limit = match query_param(query, "limit") {
        None => DEFAULT_RUNS_LIMIT,
        Some(text) => match text.parse::<usize>() {
            Ok(n) if (1..=1000).contains(&n) => n,
            _ => {
                return Answer::error(
                    400,
                    "bad_request",
                    format!("limit: expected an integer from 1 to 1000 (got {text:?})"),
                );
            }
        },
    };
    let rt = daemon.shared().active_rt();
    let Some(rt) = rt else {
        return Answer::error(
            502,
            "upstream_unreachable",
            "no vault token: cannot reach the vault",
        );
    };
    let filter = crate::vault::RunFilter {
        since,
        ..Default::default()
    };
    match rt.vault.list_runs(&filter, limit) {
        Ok(notes) => {
            let list: Vec<Value> = notes
                .into_iter()
                .map(|n| {
                    json!({
                        "id": n.id,
                        "path": n.path,
                        "tags": n.tags,
                        "metadata": n.metadata.unwrap_or_else(|| json!({})),
                        "created_at": n.created_at,
                    })
                })
                .collect();
            Answer::json(200, json!({ "runs": list }))
        }
        Err(e) => Answer::error(502, "upstream_unreachable", e.to_string()),
    }
}

/// `POST /runner/jobs/<path>/pause|resume` (SPEC §7.5).
fn pause(daemon: &Daemon, path: &str, paused: bool) -> Answer {
    let Some(job_path) = job_action(path).and_then(|(e, _)| crate::percent::decode(e)) else {
        return Answer::error(404, "not_found", "no such job");
    };
    match daemon.set_paused(&job_path, paused) {
        Ok(true) => Answer::json(200, json!({ "ok": true, "paused": paused })),
        Ok(false) => Answer::error(404, "not_found", format!("no job at {job_path}")),
        Err(e) => Answer::error(500, "internal_error", e),
    }
}

fn run_now(daemon: &Arc<Daemon>, path: &str, query: &str) -> Answer {
    let encoded = job_action(path).map_or("", |(e, _)| e);
    let Some(job_path) = crate::percent::decode(encoded) else {
        return Answer::error(404, "not_found", "no such job");
    };
    let (rt, claimed) = match daemon.run_now(&job_path) {
        Ok(v) => v,
        Err(RunNowError::NotFound) => {
            return Answer::error(404, "not_found", format!("no job at {job_path}"));
        }
        Err(RunNowError::Running) => {
            return Answer::error(409, "conflict", format!("{job_path} is running already"));
        }
        Err(RunNowError::Paused) => {
            return Answer::error(503, "paused", "no vault token: scheduling is paused");
        }
        Err(RunNowError::Invalid(e)) => return Answer::error(422, "invalid_job", e),
        Err(RunNowError::Upstream(e)) => return Answer::error(502, "upstream_unreachable", e),
    };
    let run_id = claimed.info.run_id.clone();
    let asynchronous = matches!(query_param(query, "async").as_deref(), Some("1" | "true"));
    if asynchronous {
        let mut answer = Answer::json(
            202,
            json!({ "ok": true, "runId": run_id, "status": "started" }),
        );
        // The run is claimed: it must run (or fail) whatever happens. With
        // no thread to be had it runs on this one, after the answer.
        let slot = Arc::new(std::sync::Mutex::new(Some((rt, claimed))));
        let (daemon2, slot2) = (Arc::clone(daemon), Arc::clone(&slot));
        let spawned = std::thread::Builder::new()
            .name("run-now".into())
            .spawn(move || {
                if let Some((rt, claimed)) = take(&slot2) {
                    daemon2.work(&rt, claimed);
                }
            });
        if let Err(e) = spawned {
            log::warn!("cannot start a thread for run {run_id} ({e}); running it after the answer");
            if let Some((rt, claimed)) = take(&slot) {
                let daemon = Arc::clone(daemon);
                answer.then = Some(Box::new(move || {
                    daemon.work(&rt, claimed);
                }));
            }
        }
        return answer;
    }
    let report = daemon.work(&rt, claimed);
    Answer::json(
        200,
        json!({
            "ok": true,
            "runId": report.run_id,
            "status": if report.ok { "ok" } else { "failed" },
            "outputPath": report.written_to.unwrap_or(report.output_path),
            "error": report.error,
        }),
    )
}

/// What a mutex slot holds, taken out (a poisoned lock still gives it).
fn take<T>(slot: &std::sync::Mutex<Option<T>>) -> Option<T> {
    slot.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take()
}

/// 400 `validation_failed`: every problem as `{path, message}`, and all of
/// them in one message.
fn validation_failed(errors: &[Problem]) -> Answer {
    let list: Vec<Value> = errors
        .iter()
        .map(|p| json!({ "path": p.key, "message": p.message }))
        .collect();
    let message = errors
        .iter()
        .map(Problem::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    Answer::json(
        400,
        json!({ "error": "validation_failed", "message": message, "errors": list }),
    )
}

fn put_config(daemon: &Daemon, body: &[u8]) -> Answer {
    let patch = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => m,
        Ok(_) => {
            return validation_failed(&[Problem::whole("expected a JSON object")]);
        }
        Err(e) => {
            return Answer::error(400, "invalid_json", format!("the body is not JSON: {e}"));
        }
    };
    match daemon.update_config(&patch) {
        Ok(deferred) => Answer::json(200, json!({ "ok": true, "deferred": deferred })),
        Err(errors) => validation_failed(&errors),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(find_route("/healthz").map(|r| r.0), Some(Route::Health));
        assert_eq!(
            find_route("/runner/healthz").map(|r| r.0),
            Some(Route::Health)
        );
        assert_eq!(
            find_route("/runner/jobs/jobs%2Fa/run-now").map(|r| r.0),
            Some(Route::RunNow)
        );
        assert_eq!(find_route("/runner/jobs//run-now").map(|r| r.0), None);
        assert_eq!(
            find_route("/runner/jobs/jobs%2Fa/pause").map(|r| r.0),
            Some(Route::Pause)
        );
        assert_eq!(
            find_route("/runner/jobs/jobs%2Fa/resume").map(|r| r.0),
            Some(Route::Resume)
        );
        assert_eq!(
            find_route("/runner/jobs/jobs%2Fa/delete").map(|r| r.0),
            None
        );
        assert_eq!(find_route("/runner/jobs/x"), None);
        assert_eq!(find_route("/nope"), None);
    }

    #[test]
    fn queries() {
        assert_eq!(
            query_param("a=1&since=2026-01-01T00%3A00%3A00Z&limit=5", "since").as_deref(),
            Some("2026-01-01T00:00:00Z")
        );
        assert_eq!(query_param("async", "async").as_deref(), Some(""));
        assert_eq!(query_param("x=%zz", "x"), None);
    }

    #[test]
    fn embedded_files_match_the_contract() {
        let info: Value = serde_json::from_str(INFO).unwrap();
        assert_eq!(info["version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(info["name"], "parachute-runner");
        assert_eq!(info["tagline"], TAGLINE);
        assert_eq!(
            info["capabilities"],
            json!(["scheduled-jobs", "claude-p-runner"])
        );
        let schema: Value = serde_json::from_str(SCHEMA).unwrap();
        assert_eq!(schema["$schema"], "http://json-schema.org/draft-07/schema#");
        assert_eq!(schema["properties"]["vault_token"]["writeOnly"], true);
        let mut keys: Vec<&str> = schema["properties"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort();
        let mut want = crate::config::key_names();
        want.sort();
        assert_eq!(keys, want);
        let module: Value =
            serde_json::from_str(include_str!("../.parachute/module.json")).unwrap();
        assert_eq!(module["port"], 1945);
        assert_eq!(module["health"], "/runner/healthz");
        assert_eq!(
            module["scopes"]["defines"],
            json!(["runner:read", "runner:admin"])
        );
    }
}
