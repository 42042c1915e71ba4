//! Self-registration in `$PARACHUTE_HOME/services.json` (SPEC §9.6): the
//! row `name: "parachute-runner"` is upserted after `serve` binds. Other
//! rows, and fields of our row we do not know, are kept; a port already in
//! our row is kept. Best effort: a failure is the caller's warning.

use std::path::Path;

use serde_json::{Map, Value, json};

use crate::files;

pub const FILE: &str = "services.json";
pub const NAME: &str = "parachute-runner";

/// Our row's fields.
pub struct Row<'a> {
    pub port: u16,
    pub version: &'a str,
    pub install_dir: &'a str,
}

/// The new document, from the old one (`None`: no file yet).
pub fn upsert(old: Option<&Value>, row: &Row<'_>) -> Result<Value, String> {
    let mut map = match old {
        None => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(_) => return Err("not a JSON object".to_string()),
    };
    let Value::Array(services) = map.entry("services").or_insert_with(|| json!([])) else {
        return Err("\"services\" is not a list".to_string());
    };
    let index = services
        .iter()
        .position(|s| s.get("name").and_then(Value::as_str) == Some(NAME));
    let mut ours: Map<String, Value> = match index {
        Some(i) => match &services[i] {
            Value::Object(m) => m.clone(),
            _ => Map::new(),
        },
        None => Map::new(),
    };
    let port = ours
        .get("port")
        .and_then(Value::as_u64)
        .map_or(u64::from(row.port), |p| p);
    ours.insert("name".into(), json!(NAME));
    ours.insert("port".into(), json!(port));
    ours.insert("paths".into(), json!(["/runner", "/.parachute"]));
    ours.insert("health".into(), json!("/runner/healthz"));
    ours.insert("version".into(), json!(row.version));
    ours.insert("displayName".into(), json!("Runner"));
    ours.insert("tagline".into(), json!(crate::admin_api::TAGLINE));
    ours.insert("installDir".into(), json!(row.install_dir));
    match index {
        Some(i) => services[i] = Value::Object(ours),
        None => services.push(Value::Object(ours)),
    }
    Ok(Value::Object(map))
}

/// Reads, upserts and writes the file atomically.
pub fn register(home: &Path, row: &Row<'_>) -> Result<(), String> {
    let path = home.join(FILE);
    let old = match files::read_optional(&path, 1 << 20)
        .map_err(|e| format!("{}: {e}", path.display()))?
    {
        None => None,
        Some(bytes) => Some(
            serde_json::from_slice::<Value>(&bytes)
                .map_err(|e| format!("{}: not JSON: {e}", path.display()))?,
        ),
    };
    let doc = upsert(old.as_ref(), row).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut bytes = serde_json::to_vec_pretty(&doc).map_err(|e| e.to_string())?;
    bytes.push(b'\n');
    files::create_private_dir(home).map_err(|e| format!("{}: {e}", home.display()))?;
    files::write_atomic(&path, &bytes).map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROW: Row<'static> = Row {
        port: 1945,
        version: "9.9.9",
        install_dir: "/opt/pr",
    };

    #[test]
    fn adds_a_row_to_nothing() {
        let doc = upsert(None, &ROW).unwrap();
        assert_eq!(doc["services"][0]["name"], NAME);
        assert_eq!(doc["services"][0]["port"], 1945);
        assert_eq!(doc["services"][0]["installDir"], "/opt/pr");
    }

    #[test]
    fn keeps_other_rows_unknown_fields_and_the_port() {
        let old = json!({
            "services": [
                {"name": "parachute-vault", "port": 1940},
                {"name": NAME, "port": 2000, "pinned": true, "version": "0.0.1"}
            ],
            "schema": 2
        });
        let doc = upsert(Some(&old), &ROW).unwrap();
        assert_eq!(doc["schema"], 2);
        assert_eq!(
            doc["services"][0],
            json!({"name": "parachute-vault", "port": 1940})
        );
        let ours = &doc["services"][1];
        assert_eq!(ours["port"], 2000);
        assert_eq!(ours["pinned"], true);
        assert_eq!(ours["version"], "9.9.9");
        assert_eq!(ours["paths"], json!(["/runner", "/.parachute"]));
        assert_eq!(ours["health"], "/runner/healthz");
        assert_eq!(doc["services"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn malformed_documents_are_errors() {
        assert!(upsert(Some(&json!([1])), &ROW).is_err());
        assert!(upsert(Some(&json!({"services": 3})), &ROW).is_err());
        assert_eq!(
            upsert(Some(&json!({})), &ROW).unwrap()["services"][0]["name"],
            NAME
        );
    }
}
