//! `serve`'s auth against a hub that hangs (SPEC §9.4), and `nbf`/`iat` —
//! the binary as a process. What is asserted is
//! what can be seen without timing: how many fetches reached the hub,
//! which answers came, and which requests were answered while a fetch was
//! still held by the hub. How long requests take is bench/'s.

use std::ffi::OsStr;
use std::time::Duration;

use serde_json::{Value, json};

use crate::serve_harness::{Serve, launch, serve_command};
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
