//! `serve`'s auth against a hub that hangs (SPEC §9.4), `nbf`/`iat`, and
//! the local admin token — the binary as a process. What is asserted is
//! what can be seen without timing: how many fetches reached the hub,
//! which answers came, and which requests were answered while a fetch was
//! still held by the hub. How long requests take is bench/'s.

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use serde_json::{Value, json};

use crate::serve_harness::{Serve, launch, run_to_end, serve_command};
use crate::support::fake_hub::{self, Doc, FakeHub, KID};
use crate::support::world::{World, job};

/// Patience of a fake hub wait (only tells "never" from "soon").
const SOON: Duration = Duration::from_secs(30);

fn serve_with(w: &World, hub: &str, extra: &[&OsStr]) -> Serve {
    launch(serve_command(w.home.path(), hub, extra))
}

/// `n` requests at once; their answers.
fn at_once(s: &Serve, n: usize, path: &str, token: &str) -> Vec<(u16, Value)> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..n)
            .map(|_| scope.spawn(|| s.get(path, Some(token))))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

#[test]
fn a_hanging_hub_is_asked_once_and_every_request_gets_503() {
    let w = World::new("hub-hangs");
    w.vault.add_job("jobs/a", &job("manual", ""));
    let hub = FakeHub::start();
    hub.hang(Doc::Revocation, true);
    let s = serve_with(&w, hub.url(), &[]);
    let token = hub.token("runner:read");
    // Ten requests that need the revocation list, while the hub holds the
    // one fetch of it: one fetch, ten 503s.
    let answers = at_once(&s, 10, "/runner/jobs", &token);
    for (status, body) in &answers {
        assert_eq!(*status, 503, "{body}\n{}", s.log());
        assert_eq!(body["error"], "hub_unreachable", "{body}");
        assert!(
            body["message"].as_str().unwrap().contains("revocation"),
            "{body}"
        );
    }
    assert_eq!(hub.revocation_fetches(), 1, "fetches were not shared");
    // Open routes never wait for the hub.
    assert_eq!(s.get("/healthz", None).0, 200);
    // Right after a fetch that timed out the hub is not asked again: the
    // next request is a 503 without a fetch of its own.
    let (status, body) = s.get("/runner/jobs", Some(&token));
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("hub_unreachable"))
    );
    assert_eq!(hub.revocation_fetches(), 1);
    // The hub comes back: requests pass again (after the retry pause).
    hub.hang(Doc::Revocation, false);
    assert!(
        crate::support::world::eventually(SOON, || s.get("/runner/jobs", Some(&token)).0 == 200),
        "{}",
        s.log()
    );
}

#[test]
fn a_loaded_list_and_keys_keep_serving_while_the_hub_hangs() {
    let w = World::new("hub-hangs-later");
    let hub = FakeHub::start();
    let s = serve_with(&w, hub.url(), &[]);
    let token = hub.token("runner:read");
    assert_eq!(s.get("/runner/jobs", Some(&token)).0, 200);
    let (jwks, revocation) = (hub.jwks_fetches(), hub.revocation_fetches());
    hub.hang(Doc::Jwks, true);
    hub.hang(Doc::Revocation, true);
    // Other tokens too (each is verified, none needs the hub).
    let tokens: Vec<String> = (0..5).map(|_| hub.token("runner:read")).collect();
    for t in &tokens {
        assert_eq!(s.get("/runner/jobs", Some(t)).0, 200, "{}", s.log());
    }
    for (status, _) in at_once(&s, 10, "/runner/jobs", &token) {
        assert_eq!(status, 200);
    }
    assert_eq!(
        (hub.jwks_fetches(), hub.revocation_fetches()),
        (jwks, revocation)
    );
    hub.hang(Doc::Jwks, false);
    hub.hang(Doc::Revocation, false);
}

#[test]
fn an_unknown_kid_does_not_hold_up_tokens_with_a_known_one() {
    let w = World::new("bad-kid");
    let hub = FakeHub::start();
    let s = serve_with(&w, hub.url(), &[]);
    let good = hub.token("runner:read");
    assert_eq!(s.get("/runner/jobs", Some(&good)).0, 200);
    let before = hub.jwks_fetches();
    let bad_kid = fake_hub::sign(
        &json!({"alg": "RS256", "kid": "rotated-away"}),
        &hub.claims("runner:read"),
        fake_hub::published_key(),
    );
    hub.hang(Doc::Jwks, true);
    std::thread::scope(|scope| {
        // Five tokens with an unknown kid force one reload, which hangs.
        let bad: Vec<_> = (0..5)
            .map(|_| scope.spawn(|| s.get("/runner/jobs", Some(&bad_kid))))
            .collect();
        assert!(
            hub.wait_held(Doc::Jwks, 1, SOON),
            "no reload reached the hub"
        );
        // Meanwhile tokens with the known kid are answered.
        for _ in 0..5 {
            assert_eq!(s.get("/runner/jobs", Some(&good)).0, 200, "{}", s.log());
        }
        let fresh = hub.token("runner:admin");
        assert_eq!(s.get("/runner/jobs", Some(&fresh)).0, 200);
        // ... while the reload was still held by the hub.
        assert_eq!(hub.held(Doc::Jwks), 1);
        hub.hang(Doc::Jwks, false);
        for h in bad {
            let (status, body) = h.join().unwrap();
            assert_eq!(status, 401, "{body}");
            assert!(
                body["message"]
                    .as_str()
                    .unwrap()
                    .contains("unknown signing key"),
                "{body}"
            );
        }
    });
    assert_eq!(hub.jwks_fetches(), before + 1, "the reload was not shared");
    // A reload at most every 10 s: the next unknown kid costs no fetch.
    assert_eq!(s.get("/runner/jobs", Some(&bad_kid)).0, 401);
    assert_eq!(hub.jwks_fetches(), before + 1);
}

#[test]
fn nbf_and_iat_more_than_a_minute_ahead_are_refused() {
    let w = World::new("nbf");
    let hub = FakeHub::start();
    let s = serve_with(&w, hub.url(), &[]);
    let now = jiff::Timestamp::now().as_second();
    let header = json!({"alg": "RS256", "typ": "JWT", "kid": KID});
    let with = |claim: &str, at: i64| {
        let mut c = hub.claims("runner:read");
        c[claim] = json!(at);
        fake_hub::sign(&header, &c, fake_hub::published_key())
    };
    for (claim, message) in [("nbf", "not valid yet"), ("iat", "issued in the future")] {
        let (status, body) = s.get("/runner/jobs", Some(&with(claim, now + 120)));
        assert_eq!(status, 401, "{claim}: {body}");
        assert!(
            body["message"].as_str().unwrap().contains(message),
            "{body}"
        );
        // Within the 60 s leeway: accepted.
        assert_eq!(
            s.get("/runner/jobs", Some(&with(claim, now + 30))).0,
            200,
            "{claim}"
        );
        assert_eq!(
            s.get("/runner/jobs", Some(&with(claim, now - 30))).0,
            200,
            "{claim}"
        );
    }
    let mut c = hub.claims("runner:read");
    c["nbf"] = json!("tomorrow");
    let (status, _) = s.get(
        "/runner/jobs",
        Some(&fake_hub::sign(&header, &c, fake_hub::published_key())),
    );
    assert_eq!(status, 401);
}

/// A port nothing listens on: no hub at all.
fn no_hub() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    format!("http://127.0.0.1:{port}")
}

#[test]
fn the_admin_token_is_made_once_kept_and_opens_admin_routes_without_a_hub() {
    let w = World::new("admin-token");
    w.vault.add_job("jobs/a", &job("manual", ""));
    let file = w.home.join("runner/admin-token");
    assert!(!file.exists());
    let mut s = serve_with(&w, &no_hub(), &[]);
    let meta = std::fs::metadata(&file).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let text = std::fs::read_to_string(&file).unwrap();
    let token = text.trim().to_string();
    assert_eq!(token.len(), 64, "{text:?}");
    assert!(token.bytes().all(|b| b.is_ascii_hexdigit()));
    // Admin scope, with no hub anywhere.
    let (status, body) = s.send(
        "PUT",
        "/.parachute/config",
        Some(&token),
        br#"{"poll_interval_seconds": 30}"#,
    );
    assert_eq!(status, 200, "{body}\n{}", s.log());
    let (status, body) = s.send("POST", "/runner/jobs/jobs%2Fa/run-now", Some(&token), b"");
    assert_eq!((status, &body["status"]), (200, &json!("ok")), "{body}");
    assert_eq!(s.get("/runner/jobs", Some(&token)).0, 200);
    // A wrong one is refused (no hub needed to say so).
    let wrong = "0".repeat(64);
    let (status, body) = s.get("/runner/jobs", Some(&wrong));
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("unauthorized")),
        "{body}"
    );
    let (status, _) = s.get("/runner/jobs", Some(&token[..63]));
    assert_eq!(status, 401);
    // Its place is logged, never the token.
    let log = s.log();
    assert!(log.contains("local admin token created in"), "{log}");
    assert!(log.contains(&file.display().to_string()), "{log}");
    assert!(!log.contains(&token), "{log}");
    assert!(s.sigterm().is_some_and(|st| st.success()));
    // A restart keeps it.
    let s = serve_with(&w, &no_hub(), &[]);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), text);
    assert_eq!(s.get("/runner/jobs", Some(&token)).0, 200);
    assert!(s.log().contains("local admin token in"), "{}", s.log());
    assert!(!s.log().contains(&token));
}

#[test]
fn the_admin_token_never_asks_the_hub() {
    let w = World::new("admin-token-hub");
    let hub = FakeHub::start();
    let s = serve_with(&w, hub.url(), &[]);
    let token = std::fs::read_to_string(w.home.join("runner/admin-token")).unwrap();
    for _ in 0..3 {
        assert_eq!(s.get("/runner/jobs", Some(token.trim())).0, 200);
    }
    assert_eq!((hub.jwks_fetches(), hub.revocation_fetches()), (0, 0));
    // Hub tokens still work beside it.
    assert_eq!(
        s.get("/runner/jobs", Some(&hub.token("runner:read"))).0,
        200
    );
}

#[test]
fn a_folder_vault_user_runs_jobs_with_the_admin_token() {
    let w = World::new("admin-token-dir");
    let notes = w.home.join("notes");
    std::fs::create_dir_all(notes.join("jobs")).unwrap();
    std::fs::write(
        notes.join("jobs/x.md"),
        "---\ntags: [job]\nschedule: manual\nmodel: m\nallowed_tools: Read\n---\nhi",
    )
    .unwrap();
    let s = serve_with(&w, &no_hub(), &["--vault-dir".as_ref(), notes.as_os_str()]);
    let token = std::fs::read_to_string(w.home.join("runner/admin-token")).unwrap();
    let token = token.trim();
    // Listed once the first poll is done.
    assert!(
        crate::support::world::eventually(SOON, || {
            let (status, jobs) = s.get("/runner/jobs", Some(token));
            status == 200 && jobs["jobs"][0]["jobPath"] == "jobs/x"
        }),
        "{}",
        s.log()
    );
    let (status, body) = s.send("POST", "/runner/jobs/jobs%2Fx/run-now", Some(token), b"");
    assert_eq!(status, 200, "{body}\n{}", s.log());
    assert_eq!(body["status"], "ok", "{body}");
}

#[test]
fn a_malformed_or_unreadable_admin_token_stops_serve() {
    let w = World::new("admin-token-bad");
    let file = w.home.join("runner/admin-token");
    for (content, says) in [
        ("short\n", "malformed admin token"),
        (
            "has spaces in it and is long enough to pass the length\n",
            "malformed admin token",
        ),
    ] {
        std::fs::write(&file, content).unwrap();
        let (status, stderr) = run_to_end(serve_command(w.home.path(), &no_hub(), &[]));
        assert_eq!(status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(says), "{stderr}");
        assert!(stderr.contains(&file.display().to_string()), "{stderr}");
        // Never replaced.
        assert_eq!(std::fs::read_to_string(&file).unwrap(), content);
    }
    std::fs::remove_file(&file).unwrap();
    std::fs::create_dir(&file).unwrap();
    let (status, stderr) = run_to_end(serve_command(w.home.path(), &no_hub(), &[]));
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("cannot read"), "{stderr}");
}
