//! Tests of the fake vault itself (`tests/support/fake_vault.rs`): that it
//! answers like the vault described in `vault-api.md`, and that its fault
//! injection, stop/restart and waiting helpers do what they say.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::fake_vault::{FakeVault, Fault, Route};

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .proxy(None)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into()
}

/// Status and body of an answer.
#[derive(Debug)]
struct Answer {
    status: u16,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }
}

fn answer(result: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Answer {
    let mut resp = result.unwrap_or_else(|e| panic!("request failed: {e}"));
    let status = resp.status().as_u16();
    let body = resp
        .body_mut()
        .read_to_string()
        .unwrap_or_else(|e| panic!("reading the body failed: {e}"));
    Answer { status, body }
}

/// GET `{url}{path}` with an optional `Authorization` header value.
fn get_as(agent: &ureq::Agent, url: &str, auth: Option<&str>) -> Answer {
    let mut req = agent.get(url);
    if let Some(auth) = auth {
        req = req.header("Authorization", auth);
    }
    answer(req.call())
}

/// GET `{api}{rel}` with the right token.
fn get(vault: &FakeVault, rel: &str) -> Answer {
    let url = format!("{}/vault/default/api{rel}", vault.url());
    get_as(&agent(), &url, Some(&format!("Bearer {}", vault.token())))
}

/// POST `{api}/notes` with the right token.
fn post(vault: &FakeVault, body: &str) -> Answer {
    answer(try_post(&agent(), vault, body))
}

fn try_post(
    agent: &ureq::Agent,
    vault: &FakeVault,
    body: &str,
) -> Result<ureq::http::Response<ureq::Body>, ureq::Error> {
    agent
        .post(format!("{}/vault/default/api/notes", vault.url()))
        .header("Authorization", format!("Bearer {}", vault.token()))
        .content_type("application/json")
        .send(body)
}

/// Sends raw bytes on a fresh connection, ends the sending side, then reads
/// until the server closes.
fn raw(vault: &FakeVault, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(vault.addr())
        .unwrap_or_else(|e| panic!("cannot connect to the fake vault: {e}"));
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    // The server may reject the request before reading all of it.
    let _ = stream.write_all(request);
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn auth_line(vault: &FakeVault) -> String {
    format!("Authorization: Bearer {}\r\n", vault.token())
}

fn ids(list: &Value) -> Vec<String> {
    field_of_each(list, "id")
}

fn paths(list: &Value) -> Vec<String> {
    field_of_each(list, "path")
}

/// `field` of each note of a listing (`<none>` where absent).
fn field_of_each(list: &Value, field: &str) -> Vec<String> {
    let Some(notes) = list.as_array() else {
        panic!("not a JSON array: {list}");
    };
    notes
        .iter()
        .map(|n| n[field].as_str().unwrap_or("<none>").to_string())
        .collect()
}

#[test]
fn health_is_open() {
    let vault = FakeVault::start();
    let a = get_as(&agent(), &format!("{}/health", vault.url()), None);
    assert_eq!((a.status, a.json()), (200, json!({"status": "ok"})));
    assert_eq!(a.body, r#"{"status":"ok"}"#);
}

#[test]
fn auth_cases() {
    let vault = FakeVault::start();
    let url = format!("{}/vault/default/api/notes", vault.url());
    let agent = agent();

    let none = get_as(&agent, &url, None);
    assert_eq!(none.status, 401);
    assert_eq!(
        none.body,
        r#"{"error":"Unauthorized","message":"API key required"}"#
    );

    let wrong = get_as(&agent, &url, Some("Bearer pvt_wrong"));
    assert_eq!(wrong.status, 401);
    assert_eq!(
        wrong.body,
        r#"{"error":"Unauthorized","message":"Invalid API key"}"#
    );

    let lowercase = get_as(&agent, &url, Some("bearer pvt_test_token"));
    assert_eq!(lowercase.status, 401);

    let ok = get_as(&agent, &url, Some("Bearer pvt_test_token"));
    assert_eq!((ok.status, ok.body.as_str()), (200, "[]"));

    let nosuch = get_as(
        &agent,
        &format!("{}/vault/nosuch/api/notes", vault.url()),
        Some("Bearer pvt_test_token"),
    );
    assert_eq!(nosuch.status, 404);
    assert_eq!(
        nosuch.body,
        r#"{"error":"Vault not found","vault":"nosuch"}"#
    );
}

#[test]
fn custom_token_and_vault_name() {
    let vault = FakeVault::start_with("127.0.0.1:0", "pvt_other", "work").unwrap();
    assert_eq!(vault.token(), "pvt_other");
    assert!(vault.url().starts_with("http://127.0.0.1:"));
    assert!(!vault.url().ends_with('/'));
    let url = format!("{}/vault/work/api/notes", vault.url());
    assert_eq!(get_as(&agent(), &url, Some("Bearer pvt_other")).status, 200);
    assert_eq!(
        get_as(&agent(), &url, Some("Bearer pvt_test_token")).status,
        401
    );
    let default = format!("{}/vault/default/api/notes", vault.url());
    assert_eq!(
        get_as(&agent(), &default, Some("Bearer pvt_other")).status,
        404
    );
}

#[test]
fn read_only_token_cannot_write() {
    let vault = FakeVault::start();
    vault.add_read_only_token("pvt_read");
    let url = format!("{}/vault/default/api/notes", vault.url());
    assert_eq!(get_as(&agent(), &url, Some("Bearer pvt_read")).status, 200);
    let a = answer(
        agent()
            .post(&url)
            .header("Authorization", "Bearer pvt_read")
            .send(r#"{"path":"x","content":"y"}"#),
    );
    assert_eq!(a.status, 403);
    assert_eq!(a.json()["error_type"], "insufficient_scope");
    assert_eq!(a.json()["required_scope"], "vault:write");
    assert!(vault.notes().is_empty());
}

#[test]
fn listing_filters_by_exact_tags() {
    let vault = FakeVault::start();
    vault.add_note("jobs/a", "A", &["job"], None);
    vault.add_note("jobs/b", "B", &["job/daily"], None);
    vault.add_note("jobs/c", "C", &["Job"], None);
    vault.add_note("jobs/d", "D", &["job", "x"], None);
    vault.add_note("other", "E", &["x"], None);

    assert_eq!(
        paths(&get(&vault, "/notes?tag=job").json()),
        ["jobs/a", "jobs/d"]
    );
    assert_eq!(
        paths(&get(&vault, "/notes?tag=job,x").json()),
        ["jobs/a", "jobs/d", "other"]
    );
    assert_eq!(
        paths(&get(&vault, "/notes?tag=job,x&tag_match=all").json()),
        ["jobs/d"]
    );
    // A repeated `tag=` uses only the first.
    assert_eq!(
        paths(&get(&vault, "/notes?tag=Job&tag=job").json()),
        ["jobs/c"]
    );
    // `%2C` decodes to a comma before splitting.
    assert_eq!(
        paths(&get(&vault, "/notes?tag=job%2Fdaily%2Cx").json()).len(),
        3
    );
    // No tag: everything, in creation order.
    assert_eq!(get(&vault, "/notes").json().as_array().unwrap().len(), 5);
}

#[test]
fn query_values_are_percent_and_plus_decoded() {
    let vault = FakeVault::start();
    vault.add_note("n1", "x", &["my tag", "a&b"], None);
    assert_eq!(paths(&get(&vault, "/notes?tag=my+tag").json()), ["n1"]);
    assert_eq!(paths(&get(&vault, "/notes?tag=my%20tag").json()), ["n1"]);
    assert_eq!(paths(&get(&vault, "/notes?tag=a%26b").json()), ["n1"]);
    assert_eq!(get(&vault, "/notes?tag=my").json(), json!([]));
}

#[test]
fn listing_shapes_index_and_full_notes() {
    let vault = FakeVault::start();
    let id = vault.add_note(
        "jobs/daily",
        "---\nschedule: daily\n---\nHello",
        &["z", "job", "#a"],
        Some(json!({"k": {"nested": [1, 2]}})),
    );
    vault.add_note("", "no path", &[], Some(json!({})));

    let index = get(&vault, "/notes").json();
    let first = &index[0];
    assert_eq!(first["id"], id.as_str());
    assert_eq!(first["path"], "jobs/daily");
    assert_eq!(first["tags"], json!(["#a", "job", "z"]));
    assert_eq!(first["metadata"], json!({"k": {"nested": [1, 2]}}));
    assert_eq!(first["byteSize"], 29);
    assert_eq!(first["preview"], "---\nschedule: daily\n---\nHello");
    assert!(first.get("content").is_none());
    assert!(first["createdAt"].is_string() && first["updatedAt"].is_string());
    let second = index[1].as_object().unwrap();
    assert!(!second.contains_key("path"));
    assert!(!second.contains_key("metadata"));
    assert_eq!(second["tags"], json!([]));

    let full = get(&vault, "/notes?include_content=true").json();
    assert_eq!(full[0]["content"], "---\nschedule: daily\n---\nHello");
    assert!(full[0].get("byteSize").is_none());
    assert_eq!(full[1]["content"], "no path");
    let keys: Vec<&str> = full[0]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let mut expected = vec![
        "content",
        "createdAt",
        "id",
        "metadata",
        "path",
        "tags",
        "updatedAt",
    ];
    expected.sort();
    assert_eq!(keys, expected);
}

#[test]
fn listing_paginates_with_default_limit_50() {
    let vault = FakeVault::start();
    let created: Vec<String> = (0..120)
        .map(|i| vault.add_job(&format!("jobs/j{i:03}"), "x"))
        .collect();
    assert_eq!(ids(&get(&vault, "/notes?tag=job").json()), created[..50]);
    assert_eq!(
        ids(&get(&vault, "/notes?tag=job&limit=500").json()),
        created
    );
    assert_eq!(
        ids(&get(&vault, "/notes?tag=job&limit=50&offset=100").json()),
        created[100..]
    );
    assert_eq!(
        ids(&get(&vault, "/notes?limit=3&offset=5").json()),
        created[5..8]
    );
    assert_eq!(get(&vault, "/notes?offset=500").json(), json!([]));
}

#[test]
fn listing_filters_by_exact_path() {
    let vault = FakeVault::start();
    vault.add_job("jobs/a", "x");
    vault.add_job("jobs/ab", "y");
    let found = get(&vault, "/notes?path=jobs%2Fa&include_content=true").json();
    assert_eq!(paths(&found), ["jobs/a"]);
    assert_eq!(found[0]["content"], "x");
    assert_eq!(get(&vault, "/notes?path=jobs/nope").json(), json!([]));
}

#[test]
fn get_by_id_and_encoded_path() {
    let vault = FakeVault::start();
    let id = vault.add_job("jobs/daily-brief", "body");

    let by_id = get(&vault, &format!("/notes/{id}"));
    assert_eq!(by_id.status, 200);
    assert_eq!(by_id.json()["content"], "body");

    for encoded in ["jobs%2Fdaily-brief", "jobs%2fdaily-brief"] {
        let a = get(&vault, &format!("/notes/{encoded}"));
        assert_eq!(a.status, 200, "{encoded}");
        assert_eq!(a.json()["id"], id.as_str());
    }

    let unencoded = get(&vault, "/notes/jobs/daily-brief");
    assert_eq!(unencoded.status, 404);
    assert!(unencoded.json().is_object());

    let missing = get(&vault, "/notes/jobs%2Fnope");
    assert_eq!(missing.status, 404);
    assert_eq!(missing.body, r#"{"error":"Not found"}"#);
}

#[test]
fn get_with_bad_percent_escape_is_500() {
    let vault = FakeVault::start();
    for target in ["/notes/100%", "/notes/a%zzb", "/notes/%ff"] {
        let out = raw(
            &vault,
            format!(
                "GET /vault/default/api{target} HTTP/1.1\r\nHost: x\r\n{}Connection: close\r\n\r\n",
                auth_line(&vault)
            )
            .as_bytes(),
        );
        assert!(out.starts_with("HTTP/1.1 500 "), "{target}: {out}");
        assert!(
            out.ends_with(r#"{"error":"Internal server error"}"#),
            "{target}: {out}"
        );
    }
}

#[test]
fn create_returns_the_note_and_conflicts_on_used_path() {
    let vault = FakeVault::start();
    let a = post(
        &vault,
        r#"{"path":"jobs/daily-brief","content":"hi","tags":["job-run","a"],"metadata":{"run_id":"r1","n":{"x":[1,null]}}}"#,
    );
    assert_eq!(a.status, 201, "{}", a.body);
    let note = a.json();
    assert_eq!(note["path"], "jobs/daily-brief");
    assert_eq!(note["content"], "hi");
    assert_eq!(note["tags"], json!(["a", "job-run"]));
    assert_eq!(
        note["metadata"],
        json!({"run_id": "r1", "n": {"x": [1, null]}})
    );
    assert_eq!(note["createdAt"], note["updatedAt"]);

    // Id like 2026-11-23-21-54-39-462000, timestamp like 2026-11-23T21:54:39.468Z.
    let id = note["id"].as_str().unwrap();
    assert_eq!(id.len(), 26, "{id}");
    for (i, c) in id.chars().enumerate() {
        let dash = [4, 7, 10, 13, 16, 19].contains(&i);
        assert!(if dash { c == '-' } else { c.is_ascii_digit() }, "{id}");
    }
    let created = note["createdAt"].as_str().unwrap();
    assert_eq!(created.len(), 24, "{created}");
    assert_eq!(&created[19..20], ".");
    assert!(created.ends_with('Z'));
    created.parse::<jiff::Timestamp>().unwrap();

    let stored = vault.note_at("jobs/daily-brief").unwrap();
    assert_eq!(stored.id, id);
    assert_eq!(vault.notes_tagged("job-run").len(), 1);
    assert_eq!(get(&vault, &format!("/notes/{id}")).json(), note);

    let again = post(
        &vault,
        r#"{"path":"/jobs/daily-brief.md","content":"again"}"#,
    );
    assert_eq!(again.status, 409);
    assert_eq!(
        again.body,
        r#"{"error_type":"path_conflict","error":"path_conflict","path":"jobs/daily-brief","message":"path_conflict: another note already uses path \"jobs/daily-brief\""}"#
    );
    // Uniqueness is case-sensitive.
    assert_eq!(
        post(&vault, r#"{"path":"jobs/Daily-Brief","content":"x"}"#).status,
        201
    );
    assert_eq!(vault.notes().len(), 2);
}

#[test]
fn create_normalises_paths() {
    let vault = FakeVault::start();
    let cases = [
        ("  jobs/a  ", "jobs/a"),
        ("jobs/b.md", "jobs/b"),
        ("/jobs/c/", "jobs/c"),
        ("jobs//d", "jobs/d"),
        (" //jobs///e.md/ ", "jobs/e"),
    ];
    for (raw, normal) in cases {
        let body = json!({"path": raw, "content": "x"}).to_string();
        let a = post(&vault, &body);
        assert_eq!(a.status, 201, "{raw:?}: {}", a.body);
        assert_eq!(a.json()["path"], normal, "{raw:?}");
    }
}

#[test]
fn generated_ids_are_unique() {
    let vault = FakeVault::start();
    let mut ids: Vec<String> = (0..500)
        .map(|_| vault.add_note("", "x", &[], None))
        .collect();
    let n = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), n);
}

#[test]
fn create_accepts_client_id_and_path_only_notes() {
    let vault = FakeVault::start();
    let a = post(&vault, r#"{"id":"my-id","path":"p","content":"c"}"#);
    assert_eq!((a.status, a.json()["id"].clone()), (201, json!("my-id")));
    let b = post(&vault, r#"{"path":"only/path"}"#);
    assert_eq!(b.status, 201);
    assert_eq!(b.json()["content"], "");
    let c = post(&vault, r#"{"content":"only content"}"#);
    assert_eq!(c.status, 201);
    assert!(c.json().get("path").is_none());
}

#[test]
fn empty_note_is_400() {
    let vault = FakeVault::start();
    for body in [
        r#"{}"#,
        r#"{"content":"","tags":["a"]}"#,
        r#"{"path":" / "}"#,
    ] {
        let a = post(&vault, body);
        assert_eq!(a.status, 400, "{body}");
        assert_eq!(a.json()["error_type"], "empty_note", "{body}");
    }
    assert!(vault.notes().is_empty());
}

#[test]
fn malformed_json_and_wrong_types_are_500() {
    let vault = FakeVault::start();
    for body in [
        "{not json",
        "",
        "[]",
        r#"{"path":"p","content":"c","tags":7}"#,
        r#"{"path":"p","content":"c","tags":[1]}"#,
        r#"{"path":5,"content":"c"}"#,
        r#"{"path":"p","content":{"x":1}}"#,
    ] {
        let a = post(&vault, body);
        assert_eq!(a.status, 500, "{body}");
        assert_eq!(a.body, r#"{"error":"Internal server error"}"#);
    }
    assert!(vault.notes().is_empty());

    // A string is split into characters, like the vault does.
    let a = post(&vault, r#"{"path":"p","content":"c","tags":"job"}"#);
    assert_eq!(a.status, 201);
    assert_eq!(a.json()["tags"], json!(["b", "j", "o"]));
}

#[test]
fn wrong_method_is_405_and_unknown_route_404() {
    let vault = FakeVault::start();
    let url = format!("{}/vault/default/api/notes/x", vault.url());
    let a = answer(
        agent()
            .delete(&url)
            .header("Authorization", "Bearer pvt_test_token")
            .call(),
    );
    assert_eq!(a.status, 405);
    assert_eq!(a.json(), json!({"error": "Method not allowed"}));

    let b = get(&vault, "/nothing");
    assert_eq!((b.status, b.json()), (404, json!({"error": "Not found"})));
    let c = get_as(&agent(), &format!("{}/elsewhere", vault.url()), None);
    assert_eq!(c.status, 404);
    c.json();
}

#[test]
fn requests_are_recorded() {
    let vault = FakeVault::start();
    post(&vault, r#"{"path":"p","content":"c"}"#);
    get(&vault, "/notes?tag=job&limit=2");
    let reqs = vault.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0].method, "POST");
    assert_eq!(reqs[0].url, "/vault/default/api/notes");
    assert_eq!(
        reqs[0].header("authorization"),
        Some("Bearer pvt_test_token")
    );
    assert_eq!(reqs[0].body, br#"{"path":"p","content":"c"}"#);
    assert_eq!(reqs[0].body_json().unwrap()["path"], "p");
    assert_eq!(reqs[1].method, "GET");
    assert_eq!(reqs[1].url, "/vault/default/api/notes?tag=job&limit=2");
    assert_eq!(reqs[1].query_param("limit").as_deref(), Some("2"));
    assert_eq!(reqs[1].route(), Some(Route::List));
    vault.clear_requests();
    assert!(vault.requests().is_empty());
}

#[test]
fn fault_status_applies_given_times_then_stops() {
    let vault = FakeVault::start();
    vault.add_job("jobs/a", "x");
    vault.set_fault(Route::List, Fault::Status(503), Some(2));
    assert_eq!(get(&vault, "/notes").status, 503);
    assert_eq!(
        get(&vault, "/notes/jobs%2Fa").status,
        200,
        "other routes unaffected"
    );
    let second = get(&vault, "/notes");
    assert_eq!(second.status, 503);
    second.json();
    assert_eq!(get(&vault, "/notes").status, 200);

    vault.set_fault(Route::Create, Fault::Status(500), None);
    for _ in 0..3 {
        let a = post(&vault, r#"{"path":"p","content":"c"}"#);
        assert_eq!(a.status, 500);
        assert_eq!(a.body, r#"{"error":"Internal server error"}"#);
    }
    assert!(
        vault.note_at("p").is_none(),
        "a faulted create stores nothing"
    );
    vault.clear_faults();
    assert_eq!(post(&vault, r#"{"path":"p","content":"c"}"#).status, 201);

    vault.set_fault(Route::Any, Fault::Status(502), Some(1));
    let health = get_as(&agent(), &format!("{}/health", vault.url()), None);
    assert_eq!(health.status, 502);
    // Every request is recorded, faulted or not.
    assert_eq!(vault.requests().len(), 9);
}

#[test]
fn fault_stall_holds_one_request_without_blocking_others() {
    let vault = FakeVault::start();
    let id = vault.add_job("jobs/a", "x");
    let stall = Duration::from_millis(300);
    vault.set_fault(Route::Get, Fault::Stall(stall), Some(1));

    let start = Instant::now();
    let stalled = thread::scope(|s| {
        let handle = s.spawn(|| get(&vault, &format!("/notes/{id}")));
        vault.wait_for_requests(1, Duration::from_secs(5));
        // Another request is answered while the first one is held.
        let quick = Instant::now();
        assert_eq!(get(&vault, "/notes").status, 200);
        assert!(quick.elapsed() < stall / 2, "{:?}", quick.elapsed());
        handle.join().unwrap()
    });
    assert!(start.elapsed() >= stall, "{:?}", start.elapsed());
    assert_eq!(stalled.status, 200);
    assert_eq!(stalled.json()["id"], id.as_str());
}

#[test]
fn fault_malformed_json() {
    let vault = FakeVault::start();
    vault.set_fault(Route::List, Fault::MalformedJson, Some(1));
    let a = get(&vault, "/notes");
    assert_eq!(a.status, 200);
    assert!(
        serde_json::from_str::<Value>(&a.body).is_err(),
        "{}",
        a.body
    );
    assert_eq!(get(&vault, "/notes").body, "[]");
}

#[test]
fn fault_close_drops_the_connection() {
    let vault = FakeVault::start();
    vault.set_fault(Route::Create, Fault::Close, Some(1));
    let agent = agent();
    let err = try_post(&agent, &vault, r#"{"path":"p","content":"c"}"#).unwrap_err();
    assert!(matches!(err, ureq::Error::Io(_)), "{err:?}");
    assert!(vault.notes().is_empty());
    // Recorded before the fault was applied.
    let reqs = vault.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].body, br#"{"path":"p","content":"c"}"#);
    // The next one goes through.
    assert_eq!(
        answer(try_post(&agent, &vault, r#"{"path":"p","content":"c"}"#)).status,
        201
    );
}

#[test]
fn stop_refuses_connections_and_restart_keeps_data() {
    let vault = FakeVault::start();
    let url = vault.url();
    vault.add_job("jobs/a", "x");
    let agent = agent();
    let notes_url = format!("{url}/vault/default/api/notes");
    assert_eq!(
        get_as(&agent, &notes_url, Some("Bearer pvt_test_token")).status,
        200
    );

    vault.stop();
    assert!(!vault.is_running());
    let err = TcpStream::connect(vault.addr()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused);
    // A kept-alive connection does not hang: the request fails at once.
    let start = Instant::now();
    let result = agent
        .get(&notes_url)
        .header("Authorization", "Bearer pvt_test_token")
        .call();
    assert!(result.is_err(), "{result:?}");
    assert!(start.elapsed() < Duration::from_secs(2));
    vault.stop(); // idempotent

    vault.restart();
    assert_eq!(vault.url(), url);
    let list = get(&vault, "/notes?include_content=true").json();
    assert_eq!(paths(&list), ["jobs/a"]);
    assert_eq!(
        get_as(&agent, &notes_url, Some("Bearer pvt_test_token")).status,
        200
    );
    vault.restart(); // no-op while running
}

#[test]
fn stop_ends_a_stall() {
    let vault = FakeVault::start();
    vault.set_fault(Route::List, Fault::Stall(Duration::from_secs(30)), None);
    let start = Instant::now();
    thread::scope(|s| {
        let handle = s.spawn(|| {
            agent()
                .get(format!("{}/vault/default/api/notes", vault.url()))
                .header("Authorization", "Bearer pvt_test_token")
                .call()
        });
        vault.wait_for_requests(1, Duration::from_secs(5));
        vault.stop();
        assert!(handle.join().unwrap().is_err());
    });
    assert!(start.elapsed() < Duration::from_secs(5));
}

#[test]
fn wait_for_notes_tagged_wakes_on_create() {
    let vault = FakeVault::start();
    let start = Instant::now();
    let found = thread::scope(|s| {
        s.spawn(|| {
            thread::sleep(Duration::from_millis(50));
            post(
                &vault,
                r#"{"path":"r1","content":"out","tags":["job-run"]}"#,
            );
        });
        vault.wait_for_notes_tagged("job-run", 1, Duration::from_secs(10))
    });
    assert!(start.elapsed() < Duration::from_secs(5));
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].path.as_deref(), Some("r1"));

    let start = Instant::now();
    let none = vault.wait_for_notes_tagged("job-run", 2, Duration::from_millis(50));
    assert_eq!(none.len(), 1);
    assert!(start.elapsed() >= Duration::from_millis(50));
}

#[test]
fn helpers_edit_notes() {
    let vault = FakeVault::start();
    let id = vault.add_job("jobs/a.md", "one");
    assert_eq!(vault.note_at("jobs/a").unwrap().id, id);
    assert_eq!(vault.note_by_id(&id).unwrap().content, "one");
    assert!(vault.set_content("jobs/a", "two"));
    assert_eq!(get(&vault, "/notes/jobs%2Fa").json()["content"], "two");
    assert!(vault.remove_note(&id));
    assert!(!vault.remove_note(&id));
    assert_eq!(get(&vault, "/notes/jobs%2Fa").status, 404);
}

#[test]
fn chunked_body_and_expect_continue() {
    let vault = FakeVault::start();
    let body = r#"{"path":"chunked","content":"c"}"#;
    let chunked = format!(
        "POST /vault/default/api/notes HTTP/1.1\r\nHost: x\r\n{}Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{}\r\n0\r\n\r\n",
        auth_line(&vault),
        body.len(),
        body
    );
    let out = raw(&vault, chunked.as_bytes());
    assert!(out.starts_with("HTTP/1.1 201 "), "{out}");

    let body = r#"{"path":"expect","content":"c"}"#;
    let expect = format!(
        "POST /vault/default/api/notes HTTP/1.1\r\nHost: x\r\n{}Expect: 100-continue\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
        auth_line(&vault),
        body.len(),
        body
    );
    let out = raw(&vault, expect.as_bytes());
    assert!(
        out.starts_with("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 "),
        "{out}"
    );
    assert!(vault.note_at("chunked").is_some() && vault.note_at("expect").is_some());
}

#[test]
fn malformed_requests_get_an_error_answer() {
    let vault = FakeVault::start();
    let huge_header = format!(
        "GET /health HTTP/1.1\r\nX-Big: {}\r\n\r\n",
        "a".repeat(70_000)
    );
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"GARBAGE\r\n\r\n".to_vec(), "400"),
        (b"GET /health HTTP/1.1 extra\r\n\r\n".to_vec(), "400"),
        (b"GET health HTTP/1.1\r\n\r\n".to_vec(), "400"),
        (b"GET /health HTTP/2.0\r\n\r\n".to_vec(), "505"),
        (b"GET /health HTTP/1.1\r\nNoColon\r\n\r\n".to_vec(), "400"),
        (b"\xff\xfe\x00 / HTTP/1.1\r\n\r\n".to_vec(), "400"),
        (
            b"POST /health HTTP/1.1\r\nContent-Length: nope\r\n\r\n".to_vec(),
            "400",
        ),
        (
            b"POST /health HTTP/1.1\r\nContent-Length: 999999999999\r\n\r\n".to_vec(),
            "413",
        ),
        (
            b"POST /health HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".to_vec(),
            "400",
        ),
        (huge_header.into_bytes(), "431"),
    ];
    for (request, status) in cases {
        let out = raw(&vault, &request);
        assert!(
            out.starts_with(&format!("HTTP/1.1 {status} ")),
            "{:?}: {out}",
            String::from_utf8_lossy(&request[..request.len().min(60)])
        );
        assert!(out.contains("\r\n\r\n{\"error\":"), "{out}");
    }
    // Truncated requests are just closed, and the server keeps serving.
    assert_eq!(raw(&vault, b"GET /health HTTP/1.1\r\nHost: x"), "");
    let ok = get_as(&agent(), &format!("{}/health", vault.url()), None);
    assert_eq!(ok.status, 200);
}

#[test]
fn keep_alive_serves_several_requests_on_one_connection() {
    let vault = FakeVault::start();
    let mut stream = TcpStream::connect(vault.addr()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\nGET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    stream.read_to_string(&mut out).unwrap();
    assert_eq!(out.matches("HTTP/1.1 200 OK").count(), 2, "{out}");
    assert_eq!(vault.requests().len(), 2);
}

/// PATCH `{api}/notes/{encoded key}` with the right token.
fn patch(vault: &FakeVault, key: &str, body: &Value) -> Answer {
    patch_as(vault, key, body, &format!("Bearer {}", vault.token()))
}

fn patch_as(vault: &FakeVault, key: &str, body: &Value, auth: &str) -> Answer {
    let key: String = key
        .bytes()
        .map(|b| match b {
            b'/' => "%2F".to_string(),
            b => (b as char).to_string(),
        })
        .collect();
    answer(
        agent()
            .patch(format!("{}/vault/default/api/notes/{key}", vault.url()))
            .header("Authorization", auth)
            .content_type("application/json")
            .send(body.to_string()),
    )
}

#[test]
fn patch_merges_metadata_shallowly_only_if_unchanged_since() {
    let vault = FakeVault::start();
    vault.add_note(
        "jobs/runs/.runner/abc",
        "state",
        &["job-state"],
        Some(json!({"job_path": "jobs/x", "claim": {"run_id": "r0", "host": "a"}})),
    );
    let first = get(&vault, "/notes/jobs%2Fruns%2F.runner%2Fabc").json();
    let v1 = first["updatedAt"].as_str().unwrap().to_string();
    // Without if_updated_at: 428, nothing written.
    let refused = patch(
        &vault,
        "jobs/runs/.runner/abc",
        &json!({"metadata": {"x": 1}}),
    );
    assert_eq!(refused.status, 428, "{}", refused.body);
    assert_eq!(refused.json()["error_type"], "precondition_required");
    // With the current version: merged (keys given replace those keys, a
    // nested object whole; other keys stay), and the version moves.
    let ok = patch(
        &vault,
        "jobs/runs/.runner/abc",
        &json!({"metadata": {"claim": {"run_id": "r1"}, "checked_through": "T"}, "if_updated_at": v1}),
    );
    assert_eq!(ok.status, 200, "{}", ok.body);
    let note = ok.json();
    assert_eq!(
        note["metadata"],
        json!({"job_path": "jobs/x", "claim": {"run_id": "r1"}, "checked_through": "T"})
    );
    let v2 = note["updatedAt"].as_str().unwrap().to_string();
    assert!(v2 > v1, "{v1} then {v2}");
    // The old version again: 409 with the vault's body, nothing written.
    let stale = patch(
        &vault,
        "jobs/runs/.runner/abc",
        &json!({"metadata": {"claim": null}, "if_updated_at": v1}),
    );
    assert_eq!(stale.status, 409, "{}", stale.body);
    let body = stale.json();
    assert_eq!(body["error_type"], "conflict");
    assert_eq!(body["error"], "conflict");
    assert_eq!(body["current_updated_at"], v2.as_str());
    assert_eq!(body["your_updated_at"], v1.as_str());
    assert_eq!(body["path"], "jobs/runs/.runner/abc");
    assert!(body["note_id"].is_string() && body["message"].is_string());
    let now = get(&vault, "/notes/jobs%2Fruns%2F.runner%2Fabc").json();
    assert_eq!(now["metadata"]["claim"], json!({"run_id": "r1"}));
    // A null value is set as null (the key given replaces the key).
    let cleared = patch(
        &vault,
        "jobs/runs/.runner/abc",
        &json!({"metadata": {"claim": null}, "if_updated_at": v2}),
    );
    assert_eq!(cleared.status, 200, "{}", cleared.body);
    assert_eq!(cleared.json()["metadata"]["claim"], Value::Null);
}

#[test]
fn patch_conditional_updates_race_one_winner() {
    let vault = FakeVault::start();
    vault.add_note("n/race", "x", &["t"], Some(json!({"n": 0})));
    let v = get(&vault, "/notes/n%2Frace").json()["updatedAt"]
        .as_str()
        .unwrap()
        .to_string();
    let winners: usize = thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let (vault, v) = (&vault, v.clone());
                s.spawn(move || {
                    patch(
                        vault,
                        "n/race",
                        &json!({"metadata": {"n": i}, "if_updated_at": v}),
                    )
                    .status
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| usize::from(h.join().unwrap() == 200))
            .sum()
    });
    assert_eq!(winners, 1);
}

#[test]
fn patch_content_modes_tags_path_and_errors() {
    let vault = FakeVault::start();
    vault.add_note("n/a", "middle", &["keep", "drop"], None);
    vault.add_note("n/taken", "other", &[], None);
    // A pure append needs no if_updated_at.
    let appended = patch(&vault, "n/a", &json!({"append": " end", "prepend": null}));
    assert_eq!(appended.status, 200, "{}", appended.body);
    assert_eq!(appended.json()["content"], "middle end");
    let forced = patch(
        &vault,
        "n/a",
        &json!({"content_edit": {"old_text": "middle", "new_text": "start"}, "tags": {"add": ["new"], "remove": ["drop"]}, "force": true}),
    );
    assert_eq!(forced.status, 200, "{}", forced.body);
    let note = forced.json();
    assert_eq!(note["content"], "start end");
    assert_eq!(note["tags"], json!(["keep", "new"]));
    let two = patch(
        &vault,
        "n/a",
        &json!({"content": "x", "append": "y", "force": true}),
    );
    assert_eq!(two.status, 400);
    assert_eq!(two.json()["error_type"], "mutually_exclusive");
    let renamed = patch(&vault, "n/a", &json!({"path": "n/taken", "force": true}));
    assert_eq!(renamed.status, 409);
    assert_eq!(renamed.json()["error_type"], "path_conflict");
    let moved = patch(&vault, "n/a", &json!({"path": "/n/b.md", "force": true}));
    assert_eq!(moved.status, 200, "{}", moved.body);
    assert_eq!(moved.json()["path"], "n/b");
    assert_eq!(get(&vault, "/notes/n%2Fb").status, 200);
    assert_eq!(get(&vault, "/notes/n%2Fa").status, 404);
    assert_eq!(patch(&vault, "n/none", &json!({"force": true})).status, 404);
    let bad = answer(
        agent()
            .patch(format!("{}/vault/default/api/notes/n%2Fb", vault.url()))
            .header("Authorization", format!("Bearer {}", vault.token()))
            .content_type("application/json")
            .send("{broken"),
    );
    assert_eq!(bad.status, 500);
    vault.add_read_only_token("pvt_read_only");
    let denied = patch_as(
        &vault,
        "n/b",
        &json!({"force": true}),
        "Bearer pvt_read_only",
    );
    assert_eq!(denied.status, 403);
}
