//! SPEC §5: every vector of the shared fixture, through the library and
//! through `parachute-runner next`.

use std::path::Path;

use jiff::Timestamp;
use jiff::tz::TimeZone;
use parachute_runner::testing::Schedule;
use serde_json::Value;

use crate::support::Runner;

/// The fixture, as committed. When the shared copy is present (a developer
/// checkout), ours must be byte-identical to it: the file is used as it is.
fn vectors() -> Vec<Value> {
    let ours =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/cron-vectors.json"))
            .unwrap();
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/cron-vectors.json");
    if let Ok(theirs) = std::fs::read(&shared) {
        assert!(
            ours == theirs,
            "tests/data/cron-vectors.json differs from {}: copy it again",
            shared.display()
        );
    }
    let doc: Value = serde_json::from_slice(&ours).unwrap();
    doc["vectors"].as_array().unwrap().clone()
}

fn field<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap()
}

#[test]
fn every_fixture_vector_through_the_library() {
    let vectors = vectors();
    assert!(
        vectors.len() >= 100,
        "the fixture has {} vectors",
        vectors.len()
    );
    let mut failures = Vec::new();
    for v in &vectors {
        let (expr, tz, from) = (field(v, "expr"), field(v, "tz"), field(v, "from"));
        let want: Vec<&str> = v["next"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_str().unwrap())
            .collect();
        let zone = TimeZone::get(tz).unwrap();
        let schedule = Schedule::parse(expr).unwrap();
        let mut at: Timestamp = from.parse().unwrap();
        let mut got = Vec::new();
        for _ in 0..want.len() {
            at = schedule.next_after(at, &zone).unwrap();
            got.push(at.to_string());
        }
        if got != want {
            failures.push(format!(
                "{expr:?} in {tz} from {from}:\n  want {want:?}\n  got  {got:?}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} vectors fail:\n{}",
        failures.len(),
        vectors.len(),
        failures.join("\n")
    );
}

#[test]
fn every_fixture_vector_through_the_binary() {
    for v in &vectors() {
        let (expr, tz, from) = (field(v, "expr"), field(v, "tz"), field(v, "from"));
        let want: String = v["next"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| format!("{}\n", x.as_str().unwrap()))
            .collect();
        Runner::new()
            .args(["next", expr, "--tz", tz, "--from", from, "-n", "5", "--utc"])
            .run()
            .success()
            .stdout_is(&want);
    }
}
