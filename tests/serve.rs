//! `serve` (SPEC §9): the loop, the admin API, auth against a fake hub,
//! hot reload, shutdown and self-registration — the binary as a process.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::fake_claude::{self, FakeClaude};
use crate::support::fake_hub::{self, FakeHub, KID};
use crate::support::world::{World, eventually, job};

/// A running `serve` with its hub.
pub struct Served {
    pub hub: FakeHub,
    pub child: Child,
    pub base: String,
    pub stderr: Arc<Mutex<String>>,
    agent: ureq::Agent,
}

pub fn start(world: &World, hub: FakeHub, extra: &[&str], env: &[(&str, &str)]) -> Served {
    let mut runner = world
        .runner()
        .env("PARACHUTE_HUB_ORIGIN", hub.url())
        .args(["serve", "--port", "0", "--shutdown-timeout", "1"])
        .args(extra);
    for (k, v) in env {
        runner = runner.env(k, v);
    }
    let mut child = runner.spawn();
    let stderr = Arc::new(Mutex::new(String::new()));
    let pipe = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    {
        let stderr = Arc::clone(&stderr);
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if let Some(addr) = line.split("serving the admin API on ").nth(1) {
                    let _ = tx.send(addr.to_string());
                }
                let mut s = stderr.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
    }
    let base = rx
        .recv_timeout(Duration::from_secs(20))
        .unwrap_or_else(|_| panic!("serve did not start:\n{}", stderr.lock().unwrap()));
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    let served = Served {
        hub,
        child,
        base,
        stderr,
        agent,
    };
    // The first poll has happened (well or not): the job table is loaded.
    assert!(
        eventually(Duration::from_secs(60), || served.polls() > 0),
        "serve never polled:\n{}",
        served.log()
    );
    served
}

impl Served {
    pub fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let mut req = self.agent.get(format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        answer(req.call().unwrap())
    }

    pub fn text(&self, path: &str) -> (u16, String) {
        let mut r = self
            .agent
            .get(format!("{}{path}", self.base))
            .call()
            .unwrap();
        (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
    }

    pub fn send(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> (u16, Value) {
        let url = format!("{}{path}", self.base);
        let auth = token.map(|t| format!("Bearer {t}"));
        let body = body.unwrap_or_default();
        let r = match method {
            "POST" => {
                let mut req = self.agent.post(&url);
                if let Some(a) = &auth {
                    req = req.header("Authorization", a);
                }
                req.send(&body[..])
            }
            "PUT" => {
                let mut req = self.agent.put(&url);
                if let Some(a) = &auth {
                    req = req.header("Authorization", a);
                }
                req.send(&body[..])
            }
            "DELETE" => self.agent.delete(&url).call(),
            _ => panic!("{method}"),
        };
        answer(r.unwrap())
    }

    /// Runs going on, from `/metrics`.
    pub fn running(&self) -> u64 {
        self.metric("parachute_runner_running_jobs")
    }

    /// Runs claimed and not finished (running or waiting for a permit).
    pub fn live_runs(&self) -> u64 {
        self.running() + self.metric("parachute_runner_waiting_runs")
    }

    /// A metric's value without labels (0 when absent).
    pub fn metric(&self, name: &str) -> u64 {
        let (_, text) = self.text("/metrics");
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0)
    }

    /// Polls so far (ok or failed), from `/metrics`.
    pub fn polls(&self) -> u64 {
        let (_, text) = self.text("/metrics");
        text.lines()
            .filter(|l| l.starts_with("parachute_runner_polls_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }

    pub fn log(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    pub fn sigterm(&mut self) -> std::process::ExitStatus {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.child.wait().unwrap()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn answer(mut r: ureq::http::Response<ureq::Body>) -> (u16, Value) {
    let status = r.status().as_u16();
    let text = r.body_mut().read_to_string().unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// World with a manual job `jobs/daily/brief` (a path with a slash).
fn world(name: &str) -> World {
    let w = World::new(name);
    w.vault.add_job("jobs/daily/brief", &job("manual", ""));
    w
}

#[test]
fn open_routes() {
    let w = world("open");
    let s = start(&w, FakeHub::start(), &[], &[]);
    for path in ["/healthz", "/runner/healthz"] {
        let (status, body) = s.get(path, None);
        assert_eq!(status, 200);
        assert_eq!(body["status"], "ok");
        assert!(body["uptime_seconds"].is_u64());
        assert!(body.get("scheduledJobs").is_some() && body.get("lastTickAt").is_some());
    }
    let (status, info) = s.get("/.parachute/info", None);
    assert_eq!(status, 200);
    assert_eq!(info["version"], env!("CARGO_PKG_VERSION"));
    let (status, schema) = s.get("/.parachute/config/schema", None);
    assert_eq!(status, 200);
    assert_eq!(schema["properties"]["vault_token"]["writeOnly"], true);
    let (status, metrics) = s.text("/metrics");
    assert_eq!(status, 200);
    assert!(
        metrics.contains("parachute_runner_jobs_loaded 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("parachute_runner_last_poll_success 1"),
        "{metrics}"
    );
    assert!(!metrics.contains("jobs/daily"), "no note data in metrics");
}

#[test]
fn read_routes() {
    let w = world("read");
    w.vault.add_note(
        "jobs/runs/brief/r1",
        "out",
        &["job-run"],
        Some(json!({"run_id": "r1"})),
    );
    let s = start(&w, FakeHub::start(), &[], &[]);
    let token = s.hub.token("runner:read");
    let (status, jobs) = s.get("/runner/jobs", Some(&token));
    assert_eq!(status, 200, "{jobs}");
    assert_eq!(
        jobs,
        json!({"jobs": [{"jobPath": "jobs/daily/brief", "schedule": "manual", "nextRunAt": null, "disabled": false, "lastRunAt": null, "lastRunStatus": null, "lastRunId": null, "paused": false}]})
    );
    let (status, runs) = s.get(
        "/runner/runs?limit=5&since=2000-01-01T00:00:00Z",
        Some(&token),
    );
    assert_eq!(status, 200, "{runs}");
    let runs = runs["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0]["path"], "jobs/runs/brief/r1");
    assert_eq!(runs[0]["metadata"]["run_id"], "r1");
    assert!(runs[0]["created_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(runs[0]["tags"], json!(["job-run"]));
    for bad in [
        "/runner/runs?limit=0",
        "/runner/runs?limit=1001",
        "/runner/runs?limit=x",
        "/runner/runs?since=yesterday",
    ] {
        let (status, body) = s.get(bad, Some(&token));
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["error"], "bad_request");
    }
    let (status, config) = s.get("/.parachute/config", Some(&token));
    assert_eq!(status, 200);
    assert_eq!(config["vault_url"], w.vault.url());
    assert!(config.get("vault_token").is_none());
    w.vault.stop();
    let (status, body) = s.get("/runner/runs", Some(&token));
    assert_eq!(status, 502);
    assert_eq!(body["error"], "upstream_unreachable");
}

#[test]
fn run_now_sync_and_async_on_a_path_with_a_slash() {
    let w = world("run-now");
    let s = start(&w, FakeHub::start(), &[], &[]);
    let admin = s.hub.token("runner:admin");
    let (status, body) = s.send(
        "POST",
        "/runner/jobs/jobs%2Fdaily%2Fbrief/run-now",
        Some(&admin),
        None,
    );
    assert_eq!(status, 200, "{body}\n{}", s.log());
    assert_eq!(body["ok"], true);
    assert_eq!(body["status"], "ok");
    let run_id = body["runId"].as_str().unwrap();
    assert_eq!(body["outputPath"], format!("jobs/runs/brief/{run_id}"));
    let note = w
        .vault
        .note_at(&format!("jobs/runs/brief/{run_id}"))
        .unwrap();
    assert_eq!(note.metadata.unwrap()["run_trigger"], "http");
    // Async: 202 at once, the note later.
    let (status, body) = s.send(
        "POST",
        "/runner/jobs/jobs%2Fdaily%2Fbrief/run-now?async=1",
        Some(&admin),
        None,
    );
    assert_eq!(status, 202, "{body}");
    let run_id = body["runId"].as_str().unwrap().to_string();
    assert!(eventually(Duration::from_secs(10), || w
        .vault
        .note_at(&format!("jobs/runs/brief/{run_id}"))
        .is_some()));
    // Unknown and hostile paths.
    for path in [
        "/runner/jobs/jobs%2Fnope/run-now",
        "/runner/jobs/..%2F..%2Fetc%2Fpasswd/run-now",
        "/runner/jobs/%2e%2e/run-now",
        "/runner/jobs/jobs/../jobs%2Fdaily%2Fbrief/run-now",
        "/runner/jobs/jobs%2Fdaily%2Fbrief%00/run-now",
        "/runner/jobs/%zz/run-now",
    ] {
        let (status, body) = s.send("POST", path, Some(&admin), None);
        assert_eq!(status, 404, "{path}: {body}");
        assert_eq!(body["error"], "not_found");
    }
    // The unencoded form of the same path reaches the job too.
    let (status, _) = s.send(
        "POST",
        "/runner/jobs/jobs/daily/brief/run-now",
        Some(&admin),
        None,
    );
    assert_eq!(status, 200);
}

#[test]
fn auth_rejects_every_bad_token_with_401() {
    let w = world("auth");
    let s = start(&w, FakeHub::start(), &[], &[]);
    let hub = &s.hub;
    let header = json!({"alg": "RS256", "typ": "JWT", "kid": KID});
    let good = hub.claims("runner:admin");
    let with = |key: &str, value: Value| {
        let mut c = good.clone();
        if value.is_null() {
            c.as_object_mut().unwrap().remove(key);
        } else {
            c[key] = value;
        }
        fake_hub::sign(&header, &c, fake_hub::published_key())
    };
    let revoked = hub.claims("runner:admin");
    hub.revoke(revoked["jti"].as_str().unwrap());
    let cases: Vec<(&str, Option<String>, &str)> = vec![
        ("missing", None, "missing bearer token"),
        (
            "bad signature",
            Some(fake_hub::sign(&header, &good, fake_hub::other_key())),
            "invalid token signature",
        ),
        (
            "wrong iss",
            Some(with("iss", json!("http://evil.example"))),
            "token issuer mismatch",
        ),
        (
            "wrong aud",
            Some(with("aud", json!("vault"))),
            "token audience mismatch",
        ),
        (
            "aud list without runner",
            Some(with("aud", json!(["vault", "hub"]))),
            "token audience mismatch",
        ),
        (
            "expired",
            Some(with("exp", json!(jiff::Timestamp::now().as_second() - 30))),
            "token expired",
        ),
        (
            "missing jti",
            Some(with("jti", Value::Null)),
            "token has no jti",
        ),
        (
            "revoked",
            Some(fake_hub::sign(&header, &revoked, fake_hub::published_key())),
            "token has been revoked",
        ),
        (
            "alg none",
            Some(format!(
                "{}.{}.",
                fake_hub::segment(&json!({"alg": "none", "typ": "JWT"})),
                fake_hub::segment(&good)
            )),
            "unsupported token algorithm",
        ),
        (
            "HS256 with the public key",
            Some(fake_hub::hs256_with_public_key(&good)),
            "unsupported token algorithm",
        ),
        ("garbage", Some("not.a.jwt".to_string()), "malformed token"),
        (
            "unknown kid",
            Some(fake_hub::sign(
                &json!({"alg": "RS256", "kid": "other"}),
                &good,
                fake_hub::published_key(),
            )),
            "unknown signing key",
        ),
    ];
    for (name, token, message) in cases {
        for (method, path) in [
            ("GET", "/runner/jobs"),
            ("POST", "/.parachute/clear-credential/vault-token"),
        ] {
            let (status, body) = match method {
                "GET" => s.get(path, token.as_deref()),
                _ => s.send(method, path, token.as_deref(), None),
            };
            assert_eq!(status, 401, "{name} on {path}: {body}");
            assert_eq!(body["error"], "unauthorized", "{name}");
            assert!(
                body["message"].as_str().unwrap().contains(message),
                "{name}: {body}"
            );
        }
    }
    // An audience list with runner is fine.
    let (status, _) = s.get("/runner/jobs", Some(&with("aud", json!(["hub", "runner"]))));
    assert_eq!(status, 200);
    // The token was cleared by none of the rejected calls.
    assert_eq!(
        s.send(
            "POST",
            "/runner/jobs/jobs%2Fdaily%2Fbrief/run-now",
            Some(&hub.token("runner:admin")),
            None
        )
        .0,
        200
    );
}

#[test]
fn a_revocation_list_never_loaded_rejects_everything_then_keeps_the_last_good_one() {
    let w = world("revocation");
    let hub = FakeHub::start();
    hub.fail_revocation(true);
    let s = start(&w, hub, &[], &[]);
    let token = s.hub.token("runner:read");
    let (status, body) = s.get("/runner/jobs", Some(&token));
    assert_eq!(status, 401);
    assert_eq!(body["message"], "revocation list unavailable");
    s.hub.fail_revocation(false);
    let (status, _) = s.get("/runner/jobs", Some(&token));
    assert_eq!(status, 200);
    // Later failures keep the last good list (cached 60 s anyway).
    s.hub.fail_revocation(true);
    assert_eq!(s.get("/runner/jobs", Some(&token)).0, 200);
}

#[test]
fn missing_scope_is_403_with_the_contract_body() {
    let w = world("scope");
    let s = start(&w, FakeHub::start(), &[], &[]);
    let read = s.hub.token("runner:read vault:read");
    let (status, body) = s.send(
        "PUT",
        "/.parachute/config",
        Some(&read),
        Some(b"{}".to_vec()),
    );
    assert_eq!(status, 403);
    assert_eq!(body["error"], "Forbidden");
    assert_eq!(body["error_type"], "insufficient_scope");
    assert_eq!(body["required_scope"], "runner:admin");
    assert_eq!(body["granted_scopes"], json!(["runner:read", "vault:read"]));
    assert!(body["message"].is_string());
    let none = s.hub.token("vault:read");
    let (status, body) = s.get("/runner/jobs", Some(&none));
    assert_eq!(status, 403);
    assert_eq!(body["required_scope"], "runner:read");
}

#[test]
fn errors_413_405_404() {
    let w = world("errors");
    let s = start(&w, FakeHub::start(), &[], &[]);
    let admin = s.hub.token("runner:admin");
    let (status, body) = s.send(
        "PUT",
        "/.parachute/config",
        Some(&admin),
        Some(vec![b' '; (64 << 10) + 1]),
    );
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"], "payload_too_large");
    let (status, body) = s.send("DELETE", "/healthz", None, None);
    assert_eq!(status, 405);
    assert_eq!(body["error"], "method_not_allowed");
    let (status, _) = s.send("POST", "/runner/jobs", Some(&admin), None);
    assert_eq!(status, 405);
    let (status, body) = s.get("/nope", None);
    assert_eq!(status, 404);
    assert_eq!(body["error"], "not_found");
    assert!(body["message"].is_string());
}

#[test]
fn put_then_get_round_trip_keeps_the_token_out() {
    let w = world("put");
    let s = start(&w, FakeHub::start(), &[], &[]);
    let admin = s.hub.token("runner:admin");
    let patch = json!({"poll_interval_seconds": 7, "max_concurrent_jobs": 2, "timezone": "Europe/Paris", "vault_token": "pvt_test_token"});
    let (status, body) = s.send(
        "PUT",
        "/.parachute/config",
        Some(&admin),
        Some(patch.to_string().into_bytes()),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"ok": true, "deferred": []}));
    let (status, config) = s.get("/.parachute/config", Some(&admin));
    assert_eq!(status, 200);
    assert_eq!(config["poll_interval_seconds"], 7);
    assert_eq!(config["max_concurrent_jobs"], 2);
    assert_eq!(config["timezone"], "Europe/Paris");
    assert!(!config.to_string().contains("pvt_test_token"));
    let file = std::fs::read_to_string(w.home.join("runner/config.json")).unwrap();
    assert!(
        !file.contains("pvt_test_token") && !file.contains("vault_token"),
        "{file}"
    );
    assert!(file.contains("\"poll_interval_seconds\": 7"), "{file}");
    // Validation: every problem, nothing written.
    let bad = json!({"poll_interval_seconds": 0, "colour": "blue", "disabled": "yes"});
    let (status, body) = s.send(
        "PUT",
        "/.parachute/config",
        Some(&admin),
        Some(bad.to_string().into_bytes()),
    );
    assert_eq!(status, 400);
    assert_eq!(body["error"], "validation_failed");
    let mut paths: Vec<&str> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    paths.sort();
    assert_eq!(paths, ["colour", "disabled", "poll_interval_seconds"]);
    assert_eq!(
        std::fs::read_to_string(w.home.join("runner/config.json")).unwrap(),
        file
    );
    let (status, body) = s.send(
        "PUT",
        "/.parachute/config",
        Some(&admin),
        Some(b"[1]".to_vec()),
    );
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("validation_failed"))
    );
    // Removing an unknown key is an unknown key too.
    let (status, body) = s.send(
        "PUT",
        "/.parachute/config",
        Some(&admin),
        Some(br#"{"bogus": null}"#.to_vec()),
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["errors"][0]["path"], "bogus");
    // What program runs is not an HTTP setting.
    let (status, body) = s.send(
        "PUT",
        "/.parachute/config",
        Some(&admin),
        Some(br#"{"claude_bin": "/bin/sh"}"#.to_vec()),
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["errors"][0]["path"], "claude_bin");
    assert_eq!(
        std::fs::read_to_string(w.home.join("runner/config.json")).unwrap(),
        file
    );
}

#[test]
fn hot_reload_and_clear_credential() {
    let w = World::with_claude("reload", FakeClaude::new().prints("x"));
    w.vault.add_job("jobs/tick", &job("\"* * * * * *\"", ""));
    let s = start(&w, FakeHub::start(), &["--poll-interval", "1"], &[]);
    let admin = s.hub.token("runner:admin");
    assert!(
        eventually(Duration::from_secs(10), || w.runs().len() >= 2),
        "{}",
        s.log()
    );
    // disabled: true stops scheduling at once.
    let (status, _) = s.send(
        "PUT",
        "/.parachute/config",
        Some(&admin),
        Some(br#"{"disabled": true}"#.to_vec()),
    );
    assert_eq!(status, 200);
    // Taken effect, and a run that was going has finished.
    assert!(eventually(Duration::from_secs(30), || {
        let (_, jobs) = s.get("/runner/jobs", Some(&admin));
        jobs["jobs"][0]["disabled"] == true && s.running() == 0
    }));
    let before = w.runs().len();
    // Three polls of a per-second job pass with nothing run.
    let polls = s.polls();
    assert!(eventually(Duration::from_secs(60), || s.polls() >= polls + 3));
    assert_eq!(w.runs().len(), before, "ran while disabled");
    let (_, jobs) = s.get("/runner/jobs", Some(&admin));
    assert_eq!(jobs["jobs"][0]["disabled"], true);
    assert_eq!(jobs["jobs"][0]["nextRunAt"], Value::Null);
    // Enabled again, it runs again.
    s.send(
        "PUT",
        "/.parachute/config",
        Some(&admin),
        Some(br#"{"disabled": false}"#.to_vec()),
    );
    assert!(eventually(Duration::from_secs(10), || w.runs().len() > before));
    // Clearing the credential pauses scheduling.
    let (status, body) = s.send(
        "POST",
        "/.parachute/clear-credential/vault-token",
        Some(&admin),
        None,
    );
    assert_eq!((status, body), (200, json!({"ok": true})));
    assert!(eventually(Duration::from_secs(30), || s.running() == 0));
    let before = w.runs().len();
    // Three turns of the scheduler loop pass with nothing run.
    let tick = |s: &Served| s.get("/healthz", None).1["lastTickAt"].clone();
    for _ in 0..3 {
        let seen = tick(&s);
        assert!(eventually(Duration::from_secs(60), || tick(&s) != seen));
    }
    assert_eq!(
        w.runs().len(),
        before,
        "ran after the credential was cleared"
    );
    assert!(
        !std::fs::read_to_string(w.home.join("runner/secrets.json"))
            .unwrap()
            .contains("vault_token")
    );
    // The cleared token is not used for anything else either.
    let asked = w.vault.requests().len();
    let (status, body) = s.get("/runner/runs", Some(&admin));
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"], "upstream_unreachable");
    assert_eq!(w.vault.requests().len(), asked, "the vault was asked");
    // A new token resumes.
    s.send(
        "PUT",
        "/.parachute/config",
        Some(&admin),
        Some(br#"{"vault_token": "pvt_test_token"}"#.to_vec()),
    );
    assert!(
        eventually(Duration::from_secs(10), || w.runs().len() > before),
        "{}",
        s.log()
    );
}

#[test]
fn max_concurrent_jobs_takes_effect_without_restart() {
    let release = crate::support::TempDir::new("release");
    let go = release.join("go");
    let w = World::with_claude("concurrency", FakeClaude::new().prints("x").waits_for(&go));
    for i in 0..4 {
        w.vault.add_job(&format!("jobs/m{i}"), &job("manual", ""));
    }
    let s = start(&w, FakeHub::start(), &[], &[]);
    let admin = s.hub.token("runner:admin");
    s.send(
        "PUT",
        "/.parachute/config",
        Some(&admin),
        Some(br#"{"max_concurrent_jobs": 1}"#.to_vec()),
    );
    for i in 0..4 {
        let (status, _) = s.send(
            "POST",
            &format!("/runner/jobs/jobs%2Fm{i}/run-now?async=1"),
            Some(&admin),
            None,
        );
        assert_eq!(status, 202);
    }
    // One runs (and cannot end: its agent waits for the test); the three
    // others wait for a permit and are not counted as running.
    assert!(eventually(Duration::from_secs(30), || {
        fake_claude::invocations(&w.claude_dir).len() == 1 && s.live_runs() == 4
    }));
    let (_, metrics) = s.text("/metrics");
    assert!(
        metrics.contains("parachute_runner_running_jobs 1\n"),
        "{metrics}"
    );
    assert_eq!(
        fake_claude::invocations(&w.claude_dir).len(),
        1,
        "one at a time"
    );
    s.send(
        "PUT",
        "/.parachute/config",
        Some(&admin),
        Some(br#"{"max_concurrent_jobs": 4}"#.to_vec()),
    );
    assert!(eventually(
        Duration::from_secs(30),
        || fake_claude::invocations(&w.claude_dir).len() == 4
    ));
    std::fs::write(&go, "").unwrap();
    assert!(eventually(Duration::from_secs(30), || w.runs().len() == 4));
}

/// SPEC §6.5: a run waiting to retry a transient failure gives its
/// concurrency slot back. With `max_concurrent_jobs: 1`, job A's first
/// attempt gets a 529 and waits 10 minutes for its retry; job B, started
/// after that, can only finish if A let go of the one slot.
#[test]
fn a_run_waiting_to_retry_gives_its_concurrency_slot_back() {
    // The first invocation replays the recorded 529 (a transient failure);
    // every later one answers in plain text.
    let recorded = crate::support::TempDir::new("retry-slot-529");
    let fx = fake_claude::Fixture::load("api-529");
    let stdout = recorded.join("529.stdout");
    std::fs::write(&stdout, &fx.stdout).unwrap();
    let first = format!(
        "if [ \"$(ls \"$d/..\" | wc -l)\" -eq 1 ]; then cat '{}'; exit {}; fi",
        stdout.display(),
        fx.exit_code()
    );
    let w = World::with_claude("retry-slot", FakeClaude::new().runs(&first).prints("done"));
    w.vault
        .add_job("jobs/a", &job("manual", "retries: 1\nretry_delay: 600\n"));
    w.vault.add_job("jobs/b", &job("manual", ""));
    let mut s = start(&w, FakeHub::start(), &[], &[]);
    let admin = s.hub.token("runner:admin");
    s.send(
        "PUT",
        "/.parachute/config",
        Some(&admin),
        Some(br#"{"max_concurrent_jobs": 1}"#.to_vec()),
    );
    let run_now = |path: &str| {
        let (status, body) = s.send(
            "POST",
            &format!("/runner/jobs/{path}/run-now?async=1"),
            Some(&admin),
            None,
        );
        assert_eq!(status, 202, "{body}");
    };
    run_now("jobs%2Fa");
    // A's first attempt has ended (529) and A is waiting for its retry:
    // live, holding no slot.
    assert!(
        eventually(Duration::from_secs(30), || {
            s.log().contains("jobs/a: attempt 1 failed")
                && s.running() == 0
                && s.metric("parachute_runner_waiting_runs") == 1
        }),
        "{}",
        s.log()
    );
    run_now("jobs%2Fb");
    let runs = w
        .vault
        .wait_for_notes_tagged("job-run", 1, Duration::from_secs(30));
    assert_eq!(runs.len(), 1, "B never ran:\n{}", s.log());
    let m = runs[0].metadata.as_ref().unwrap();
    assert_eq!(m["parent_job_path"], "jobs/b");
    let path = runs[0].path.as_deref().unwrap_or_default();
    assert!(!path.ends_with(".failed"), "{path}: {m}");
    // B ends (its note comes just before its live entry goes); A waits on.
    assert!(
        eventually(Duration::from_secs(30), || s.live_runs() == 1
            && s.metric("parachute_runner_waiting_runs") == 1),
        "A still waits: {}",
        s.log()
    );
    assert_eq!(fake_claude::invocations(&w.claude_dir).len(), 2);
    // Shutdown ends A's wait: its note says so, with both attempts' story.
    assert!(s.sigterm().success(), "{}", s.log());
    let a = w
        .runs()
        .into_iter()
        .find(|n| n.metadata.as_ref().unwrap()["parent_job_path"] == "jobs/a")
        .expect("A's note");
    let m = a.metadata.unwrap();
    assert_eq!(m["run_error"], "interrupted: runner shutting down", "{m}");
    let errors = m["run_attempt_errors"].as_array().expect("attempt errors");
    assert_eq!(errors.len(), 1, "{m}");
    assert!(errors[0].as_str().unwrap().contains("529"), "{m}");
    assert_eq!(fake_claude::invocations(&w.claude_dir).len(), 2);
}

#[test]
fn the_loop_fires_at_each_slot_and_re_reads_the_note() {
    let w = World::with_claude("fire", FakeClaude::new().echoes_stdin());
    w.vault.add_job("jobs/tick", &job("\"* * * * * *\"", ""));
    let s = start(&w, FakeHub::start(), &[], &[]);
    let runs = w
        .vault
        .wait_for_notes_tagged("job-run", 3, Duration::from_secs(10));
    assert!(runs.len() >= 3, "{}", s.log());
    for note in &runs {
        let m = note.metadata.as_ref().unwrap();
        let started: jiff::Timestamp = m["run_started_at"].as_str().unwrap().parse().unwrap();
        let slot: jiff::Timestamp = m["run_scheduled_for"].as_str().unwrap().parse().unwrap();
        // How late is measured in bench/ (scenario 5), not here.
        assert!(started >= slot, "started {started} before its slot {slot}");
        assert_eq!(m["run_trigger"], "schedule");
    }
    // An edit made after the poll is used at fire time.
    w.vault.set_content(
        "jobs/tick",
        &job("\"* * * * * *\"", "").replace("Write the brief", "Edited prompt"),
    );
    assert!(eventually(Duration::from_secs(10), || w
        .runs()
        .iter()
        .any(|n| n.content.contains("Edited prompt"))));
}

#[test]
fn sigterm_during_a_run_stops_it_with_an_interrupted_note_and_exits_0() {
    let w = World::with_claude("sigterm", FakeClaude::new().prints("never").sleeps(60.0));
    w.vault.add_job("jobs/slow", &job("manual", ""));
    let mut s = start(&w, FakeHub::start(), &[], &[]);
    let admin = s.hub.token("runner:admin");
    let (status, _) = s.send(
        "POST",
        "/runner/jobs/jobs%2Fslow/run-now?async=1",
        Some(&admin),
        None,
    );
    assert_eq!(status, 202);
    assert!(eventually(
        Duration::from_secs(10),
        || fake_claude::invocations(&w.claude_dir).len() == 1
    ));
    let status = s.sigterm();
    assert!(status.success(), "{status:?}\n{}", s.log());
    let note = w.runs().into_iter().next().expect("a failure note");
    assert_eq!(
        note.metadata.unwrap()["run_error"],
        "interrupted: runner shutting down"
    );
    let call = fake_claude::only_invocation(&w.claude_dir);
    let pid = call.pid();
    assert!(!fake_claude::alive(pid));
}

#[test]
fn a_slow_client_does_not_block_healthz() {
    let w = world("slow-client");
    let s = start(&w, FakeHub::start(), &[], &[]);
    let addr = s.base.trim_start_matches("http://").to_string();
    // Headers never finished, and a body that never comes.
    let mut stuck_head = TcpStream::connect(&addr).unwrap();
    stuck_head
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let mut stuck_body = TcpStream::connect(&addr).unwrap();
    stuck_body
        .write_all(b"PUT /.parachute/config HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{")
        .unwrap();
    // Answered while both are stuck (a blocked server would time the
    // client out instead).
    for _ in 0..5 {
        let (status, _) = s.get("/healthz", None);
        assert_eq!(status, 200);
    }
    drop(stuck_head);
    drop(stuck_body);
}

#[test]
fn registers_in_services_json_keeping_other_rows() {
    let w = world("services");
    std::fs::write(
        w.home.join("services.json"),
        r#"{"services": [{"name": "parachute-vault", "port": 1940}, {"name": "parachute-runner", "port": 2222, "extra": 1}]}"#,
    )
    .unwrap();
    let s = start(&w, FakeHub::start(), &[], &[]);
    let doc: Value =
        serde_json::from_slice(&std::fs::read(w.home.join("services.json")).unwrap()).unwrap();
    assert_eq!(
        doc["services"][0],
        json!({"name": "parachute-vault", "port": 1940})
    );
    let ours = &doc["services"][1];
    assert_eq!(ours["port"], 2222);
    assert_eq!(ours["extra"], 1);
    assert_eq!(ours["health"], "/runner/healthz");
    assert_eq!(ours["version"], env!("CARGO_PKG_VERSION"));
    assert!(ours["installDir"].as_str().unwrap().len() > 1);
    drop(s);
    // A malformed file is a warning, not a failure.
    std::fs::write(w.home.join("services.json"), "{").unwrap();
    let s = start(&w, FakeHub::start(), &[], &[]);
    assert_eq!(s.get("/healthz", None).0, 200);
    assert!(s.log().contains("could not register in services.json"));
}

/// `serve --port 0 --vault-dir NOTES` with its home in `dir` and `hub` as
/// its hub; its address, once it serves (the rest of stderr is drained).
fn serve_folder(
    runner: crate::support::Runner,
    dir: &crate::support::TempDir,
    notes: &std::path::Path,
    hub: &FakeHub,
) -> (Child, String) {
    let mut child = runner
        .env("PARACHUTE_HOME", dir.join("home"))
        .env("PARACHUTE_HUB_ORIGIN", hub.url())
        .args(["serve", "--port", "0"])
        .args(["--vault-dir".as_ref(), notes.as_os_str()])
        .spawn();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let base = loop {
        line.clear();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "serve did not start"
        );
        if let Some(a) = line.trim().split("serving the admin API on ").nth(1) {
            break a.to_string();
        }
    };
    std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = stderr.read_to_end(&mut sink);
    });
    (child, base)
}

#[test]
fn runs_in_directory_mode() {
    let dir = crate::support::TempDir::new("serve-dir");
    let notes = dir.join("notes");
    std::fs::create_dir_all(notes.join("jobs/runs/x")).unwrap();
    std::fs::write(
        notes.join("jobs/x.md"),
        "---\ntags: [job]\nschedule: manual\nmodel: m\nallowed_tools: Read\n---\nhi",
    )
    .unwrap();
    std::fs::write(
        notes.join("jobs/runs/x/r1.md"),
        "---\ntags: [job-run]\nrun_id: r1\nrun_trigger: manual\n---\nold output\n",
    )
    .unwrap();
    std::fs::write(
        notes.join("other.md"),
        "---\ntags: [note]\n---\nnot a run\n",
    )
    .unwrap();
    let hub = FakeHub::start();
    let (mut child, base) = serve_folder(crate::support::Runner::new(), &dir, &notes, &hub);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut r = agent
        .get(format!("{base}/runner/runs"))
        .header(
            "Authorization",
            format!("Bearer {}", hub.token("runner:read")),
        )
        .call()
        .unwrap();
    let body: Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let runs = body["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 1, "{body}");
    assert_eq!(runs[0]["path"], "jobs/runs/x/r1");
    assert_eq!(runs[0]["metadata"]["run_id"], "r1");
    assert_eq!(runs[0]["tags"], json!(["job-run"]));
}

#[test]
fn a_failed_poll_keeps_the_table_and_the_outbox_is_delivered_on_a_poll() {
    let w = world("failed-poll");
    // A note queued by an earlier pass that could not reach the vault.
    w.vault.set_fault(
        crate::support::fake_vault::Route::Create,
        crate::support::fake_vault::Fault::Status(503),
        None,
    );
    w.runner()
        .args(["once", "--only", "jobs/daily/brief"])
        .run()
        .success();
    assert_eq!(w.outbox().len(), 1);
    w.vault.clear_faults();
    let s = start(&w, FakeHub::start(), &["--poll-interval", "1"], &[]);
    assert!(
        eventually(Duration::from_secs(10), || w.outbox().is_empty()),
        "{}",
        s.log()
    );
    assert_eq!(w.runs().len(), 1);
    // The vault goes away: polls fail, the table stays.
    w.vault.stop();
    let token = s.hub.token("runner:read");
    assert!(eventually(Duration::from_secs(10), || s
        .text("/metrics")
        .1
        .contains("parachute_runner_last_poll_success 0")));
    let (status, jobs) = s.get("/runner/jobs", Some(&token));
    assert_eq!(
        jobs["jobs"][0]["jobPath"],
        "jobs/daily/brief",
        "{status} {jobs}\n{}",
        s.log()
    );
    assert!(s.log().contains("poll failed, keeping the current 1 jobs"));
}

#[test]
fn put_vault_url_switches_the_vault_at_once() {
    let w = world("switch");
    let second = crate::support::fake_vault::FakeVault::start();
    second.add_job("jobs/daily/brief", &job("manual", ""));
    let s = start(&w, FakeHub::start(), &[], &[]);
    let admin = s.hub.token("runner:admin");
    // The stored token is never sent to a host it was not entered for.
    let alone = json!({"vault_url": second.url()});
    let (status, body) = s.send(
        "PUT",
        "/.parachute/config",
        Some(&admin),
        Some(alone.to_string().into_bytes()),
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["errors"][0]["path"], "vault_url");
    let patch = json!({"vault_url": second.url(), "vault_token": second.token()});
    assert_eq!(
        s.send(
            "PUT",
            "/.parachute/config",
            Some(&admin),
            Some(patch.to_string().into_bytes())
        )
        .0,
        200
    );
    let (status, body) = s.send(
        "POST",
        "/runner/jobs/jobs%2Fdaily%2Fbrief/run-now",
        Some(&admin),
        None,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(second.notes_tagged("job-run").len(), 1);
    assert!(w.runs().is_empty());
}

/// CPU seconds (user + system) a process has used, from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    let fields = crate::support::stat_fields(pid).unwrap();
    // After the command: state is field 3, utime 14 and stime 15 (1-based).
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

#[test]
#[ignore = "timing: a CPU-time bound over 3 s of wall time (see bench/ scenario 4 for the idle figures)"]
fn a_scheduler_without_a_vault_sleeps_instead_of_spinning() {
    // A folder vault with a per-second job, then a PUT that switches to a
    // server vault with no token stored: scheduling pauses, and the slots
    // already computed must not keep the loop awake.
    let w = World::new("spin");
    let notes = w.home.join("notes");
    std::fs::create_dir_all(notes.join("jobs")).unwrap();
    std::fs::write(
        notes.join("jobs/tick.md"),
        "---\ntags: [job]\nschedule: \"* * * * * *\"\nmodel: m\nallowed_tools: Read\n---\nhi",
    )
    .unwrap();
    std::fs::write(
        w.home.join("runner/config.json"),
        json!({"vault_url": format!("file://{}", notes.display()), "timezone": "UTC"}).to_string(),
    )
    .unwrap();
    let mut s = start(&w, FakeHub::start(), &[], &[]);
    let (_, jobs) = s.get("/runner/jobs", Some(&s.hub.token("runner:read")));
    assert_eq!(jobs["jobs"][0]["jobPath"], "jobs/tick", "{jobs}");
    assert!(jobs["jobs"][0]["nextRunAt"].is_string(), "{jobs}");
    let (status, body) = s.send(
        "PUT",
        "/.parachute/config",
        Some(&s.hub.token("runner:admin")),
        Some(json!({"vault_url": w.vault.url()}).to_string().into_bytes()),
    );
    assert_eq!(status, 200, "{body}");
    let pid = s.child.id();
    let before = cpu_seconds(pid);
    // Long enough for many per-second slots to come and go.
    std::thread::sleep(Duration::from_secs(3));
    let used = cpu_seconds(pid) - before;
    // Alive and answering (a dead serve would use no CPU either).
    assert!(s.child.try_wait().unwrap().is_none(), "{}", s.log());
    assert_eq!(s.text("/healthz").0, 200);
    assert!(used < 0.5, "serve used {used} s of CPU in 3 s while paused");
}

#[test]
fn pause_and_resume_over_http_and_the_compatibility_details() {
    let w = world("pause-http");
    w.vault
        .add_job("jobs/off", &job("\"0 7 * * *\"", "disabled: true\n"));
    let s = start(&w, FakeHub::start(), &[], &[]);
    let admin = s.hub.token("runner:admin");
    let read = s.hub.token("runner:read");
    // scheduledJobs counts every loaded job, manual and disabled ones too.
    let (_, health) = s.get("/healthz", None);
    assert_eq!(health["scheduledJobs"], 2, "{health}");
    let route = "/runner/jobs/jobs%2Fdaily%2Fbrief";
    let (status, body) = s.send("POST", &format!("{route}/pause"), Some(&admin), None);
    assert_eq!((status, &body), (200, &json!({"ok": true, "paused": true})));
    let paused = |s: &Served| {
        let (_, jobs) = s.get("/runner/jobs", Some(&read));
        jobs["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|j| j["jobPath"] == "jobs/daily/brief")
            .unwrap()["paused"]
            .clone()
    };
    assert_eq!(paused(&s), true);
    let state = w.state();
    assert_eq!(state["paused"]["jobs/daily/brief"]["by"], "http", "{state}");
    let (status, body) = s.send("POST", &format!("{route}/resume"), Some(&admin), None);
    assert_eq!(
        (status, &body),
        (200, &json!({"ok": true, "paused": false}))
    );
    assert_eq!(paused(&s), false);
    // Unknown job, read scope, other method.
    let (status, body) = s.send("POST", "/runner/jobs/jobs%2Fnope/pause", Some(&admin), None);
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")));
    let (status, _) = s.send("POST", &format!("{route}/pause"), Some(&read), None);
    assert_eq!(status, 403);
    let (status, body) = s.get(&format!("{route}/resume"), Some(&admin));
    assert_eq!(
        (status, body["error"].as_str()),
        (405, Some("method_not_allowed"))
    );
    // A PUT whose body is not JSON is invalid_json, not validation_failed.
    let (status, body) = s.send(
        "PUT",
        "/.parachute/config",
        Some(&admin),
        Some(b"{nope".to_vec()),
    );
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_json")),
        "{body}"
    );
    // /runner/runs gives 100 rows by default.
    for i in 0..105 {
        w.vault.add_note(
            &format!("jobs/runs/brief/r{i:03}"),
            "out",
            &["job-run"],
            Some(json!({"run_id": format!("r{i:03}")})),
        );
    }
    let (status, runs) = s.get("/runner/runs", Some(&read));
    assert_eq!(status, 200);
    assert_eq!(runs["runs"].as_array().unwrap().len(), 100);
}

#[test]
fn a_new_services_row_records_the_port_actually_bound() {
    let w = world("services-port");
    // `--port 0`: the OS picks the port; the row must say which.
    let s = start(&w, FakeHub::start(), &[], &[]);
    let bound: u64 = s.base.rsplit(':').next().unwrap().parse().unwrap();
    let doc: Value =
        serde_json::from_slice(&std::fs::read(w.home.join("services.json")).unwrap()).unwrap();
    let ours = doc["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "parachute-runner")
        .unwrap()
        .clone();
    assert_ne!(bound, 0);
    assert_eq!(ours["port"], bound, "{doc}");
}

/// SPEC §9.3: `/metrics` adds up what the agents reported (cost, tokens),
/// counts failures by cause and attempts made again. Three runs of recorded
/// CLI output in a folder vault: a 529 retried into a success, a 401 and a
/// turn limit.
#[test]
fn metrics_add_up_cost_tokens_failures_by_cause_and_retries() {
    let dir = crate::support::TempDir::new("serve-metrics");
    let notes = dir.join("notes");
    std::fs::create_dir_all(notes.join("jobs")).unwrap();
    for (name, extra) in [
        ("retried", "retries: 1\nretry_delay: 0.05\n"),
        ("unauthorized", ""),
        ("turns", "max_turns: 1\n"),
    ] {
        std::fs::write(
            notes.join(format!("jobs/{name}.md")),
            format!("---\ntags: [job]\nschedule: manual\nmodel: m\nallowed_tools: [Read]\n{extra}---\nhi\n"),
        )
        .unwrap();
    }
    let cases = ["api-529", "success-text", "api-401", "max-turns"];
    let claude = FakeClaude::replays_in_turn(&cases).install(&dir.join("claude"));
    let hub = FakeHub::start();
    let runner = crate::support::Runner::new().env("PARACHUTE_RUNNER_CLAUDE_BIN", &claude);
    let (mut child, base) = serve_folder(runner, &dir, &notes, &hub);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let admin = format!("Bearer {}", hub.token("runner:admin"));
    // Synchronous run-now: each answers when its run has ended, so the
    // recorded cases are replayed in this order.
    for (job, status) in [
        ("retried", "ok"),
        ("unauthorized", "failed"),
        ("turns", "failed"),
    ] {
        let mut r = agent
            .post(format!("{base}/runner/jobs/jobs%2F{job}/run-now"))
            .header("Authorization", &admin)
            .send(&b""[..])
            .unwrap();
        let body: Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
        assert_eq!(body["status"], status, "{job}: {body}");
    }
    let text = agent
        .get(format!("{base}/metrics"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let value = |series: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
    };
    // What the recorded result lines say, summed over the four agents.
    let results: Vec<Value> = cases
        .iter()
        .map(|c| {
            fake_claude::Fixture::load(c)
                .result()
                .expect("a result line")
        })
        .collect();
    let sum = |f: &dyn Fn(&Value) -> f64| results.iter().map(f).sum::<f64>();
    let cost = sum(&|r| r["total_cost_usd"].as_f64().unwrap());
    assert!(cost > 0.0);
    assert!(
        (value("parachute_runner_agent_cost_usd_total") - cost).abs() < 1e-9,
        "{text}"
    );
    for (kind, key) in [
        ("input", "input_tokens"),
        ("output", "output_tokens"),
        ("cache_read", "cache_read_input_tokens"),
        ("cache_creation", "cache_creation_input_tokens"),
    ] {
        let want = sum(&|r| r["usage"][key].as_f64().unwrap());
        let series = format!("parachute_runner_agent_tokens_total{{kind=\"{kind}\"}}");
        assert_eq!(value(&series), want, "{series}\n{text}");
    }
    assert!(value("parachute_runner_agent_tokens_total{kind=\"input\"}") > 0.0);
    assert_eq!(value("parachute_runner_run_retries_total"), 1.0, "{text}");
    assert_eq!(value("parachute_runner_runs_total{status=\"ok\"}"), 1.0);
    assert_eq!(value("parachute_runner_runs_total{status=\"failed\"}"), 2.0);
    for (cause, n) in [
        ("api", 1.0),
        ("limit", 1.0),
        ("timeout", 0.0),
        ("denied", 0.0),
    ] {
        let series = format!("parachute_runner_run_failures_total{{cause=\"{cause}\"}}");
        assert_eq!(value(&series), n, "{series}\n{text}");
    }
}
