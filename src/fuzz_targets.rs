//! Entry points for fuzzing every parser that sees outside input. The
//! `fuzz/` crate's libFuzzer targets call these, and so do the normal
//! tests (a replay of the committed regression inputs and a bounded
//! random run), so a finding stays fixed on stable CI.
//!
//! Each function takes arbitrary bytes and must neither panic nor hang;
//! where a round trip is defined, it checks it.

use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde_json::Value;

use crate::config::{self, Env};
use crate::job::{self, Job};
use crate::schedule::{Schedule, Zone};
use crate::template::{self, Vars};
use crate::vault::{self, NewNote, Note};
use crate::{admin_api, auth, secrets};

/// A target: arbitrary bytes in, no panic out.
pub type Target = fn(&[u8]);

/// The targets, by name (as in `fuzz/fuzz_targets/<name>.rs`).
pub const TARGETS: [(&str, Target); 8] = [
    ("job_note", job_note),
    ("template", template),
    ("cron", cron),
    ("config", config),
    ("secrets", secrets),
    ("jwt", jwt),
    ("vault_json", vault_json),
    ("http_path", http_path),
];

fn text(data: &[u8]) -> String {
    String::from_utf8_lossy(data).into_owned()
}

/// A note's content (and, after a NUL, its metadata JSON) as a job; the
/// directory vault's tag reading and output rendering round trip.
pub fn job_note(data: &[u8]) {
    let (content, metadata) = match data.iter().position(|b| *b == 0) {
        Some(i) => (
            &data[..i],
            serde_json::from_slice::<Value>(&data[i + 1..]).ok(),
        ),
        None => (data, None),
    };
    let note = Note {
        id: "id".into(),
        path: Some("jobs/fuzz".into()),
        content: text(content),
        metadata,
        ..Note::default()
    };
    let _ = job::frontmatter_tags(&note.content);
    if let Ok(job) = Job::from_note(&note, &Zone::utc()) {
        let _ = template::check(&job.prompt, "prompt");
        let _ = job.schedule.next_after(Timestamp::UNIX_EPOCH, &job.zone.tz);
        // A note written by the directory vault reads back the same.
        let mut metadata = serde_json::Map::new();
        metadata.insert("model".into(), Value::from(job.model.clone()));
        let out = NewNote {
            path: "jobs/runs/fuzz/x".into(),
            content: job.prompt.clone(),
            tags: job.output_tags.clone(),
            metadata,
        };
        if let Ok(file) = vault::dir::render_file(&out) {
            let split = job::split_frontmatter(&file).ok();
            let body = split.as_ref().map(|s| s.body);
            // render_file ends a non-empty body with a newline.
            let want = if out.content.is_empty() || out.content.ends_with('\n') {
                out.content.clone()
            } else {
                format!("{}\n", out.content)
            };
            assert_eq!(body, Some(want.as_str()), "output file body round trip");
        }
    }
}

/// A template rendered with fixed values: never panics, and rendering
/// text without `{{` is the identity.
pub fn template(data: &[u8]) {
    let t = text(data);
    let vars = Vars::new(Timestamp::UNIX_EPOCH, &TimeZone::UTC, None, "jobs/x", "run");
    let rendered = template::render(&t, &vars, "prompt");
    if !t.contains("{{") {
        assert_eq!(rendered.as_deref().ok(), Some(t.as_str()));
    }
    let _ = template::check(&t, "output_path");
}

/// A schedule, then its next fire times from an instant and in a zone
/// taken from the input: strictly increasing.
pub fn cron(data: &[u8]) {
    let (head, rest) = data.split_at(data.len().min(9));
    let mut secs = [0u8; 8];
    secs[..head.len().min(8)].copy_from_slice(&head[..head.len().min(8)]);
    let zones = [
        "UTC",
        "America/New_York",
        "Australia/Lord_Howe",
        "Pacific/Chatham",
        "Asia/Kolkata",
        "Europe/London",
    ];
    let zone = zones[head.get(8).copied().unwrap_or(0) as usize % zones.len()];
    let Ok(schedule) = Schedule::parse(&text(rest)) else {
        return;
    };
    let Ok(tz) = TimeZone::get(zone) else { return };
    let span = Timestamp::MAX.as_second() - Timestamp::MIN.as_second();
    let second =
        Timestamp::MIN.as_second() + (i64::from_le_bytes(secs).unsigned_abs() % span as u64) as i64;
    let Ok(mut at) = Timestamp::from_second(second) else {
        return;
    };
    for _ in 0..3 {
        match schedule.next_after(at, &tz) {
            Some(next) => {
                assert!(next > at, "next fire {next} is not after {at}");
                at = next;
            }
            None => break,
        }
    }
}

/// A config.json document, and the same bytes as environment values.
pub fn config(data: &[u8]) {
    if let Ok(doc) = serde_json::from_slice::<Value>(data) {
        let _ = config::parse_file(&doc);
    }
    let t = text(data);
    // Every variable the runner reads, set to the same bytes.
    let env = Env::from_pairs(Env::known().into_iter().map(|k| (k, t.as_str())));
    let _ = config::parse_env(&env);
    let _ = config::clock(&env);
    let _ = config::cli_zone(None, &env);
}

/// A secrets.json document, every entry decrypted with a fixed key.
pub fn secrets(data: &[u8]) {
    if let Ok(entries) = secrets::parse_entries(data) {
        for entry in entries.values() {
            let _ = secrets::decrypt(&[7u8; 32], entry);
        }
    }
}

/// A bearer token against a fixed issuer (and the same bytes as a JWKS).
pub fn jwt(data: &[u8]) {
    let t = text(data);
    let _ = auth::verify(&t, &[], "http://hub", Timestamp::UNIX_EPOCH);
    if let Ok(doc) = serde_json::from_slice::<Value>(data) {
        let keys = auth::parse_jwks(&doc);
        let _ = auth::verify("e30.e30.e30", &keys, "http://hub", Timestamp::UNIX_EPOCH);
    }
}

/// A `GET /notes` answer from the vault.
pub fn vault_json(data: &[u8]) {
    if let Ok(notes) = vault::rest::parse_page(data) {
        for note in notes {
            let _ = note.is_output();
            let _ = note.created();
            let _ = note.run_id();
        }
    }
}

/// A request target: routing, percent-decoding, query parameters.
pub fn http_path(data: &[u8]) {
    let url = text(data);
    let (path, query) = url.split_once('?').unwrap_or((&url, ""));
    let _ = admin_api::route_name(path);
    if let Some(decoded) = crate::percent::decode(path) {
        let _ = vault::normalize(&decoded);
    }
    for key in ["since", "limit", "async"] {
        let _ = admin_api::query_param(query, key);
    }
}
