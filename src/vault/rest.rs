//! The Parachute vault's REST API (vault-api.md) over ureq: paged listing,
//! one note by percent-encoded path, create with 409 detection.
//!
//! HTTP statuses are read here, not turned into errors by ureq, so the
//! vault's JSON error message reaches the user. The bearer token is only
//! ever put in the Authorization header: never in a URL, a log line or an
//! error.

use serde_json::{Map, Value};

use super::{
    AgentSetup, Created, Listing, MAX_NOTE, NewNote, Newest, Note, Patched, RunFilter, Timeouts,
    Vault, VaultError,
};
use crate::secrets::{Secret, scrub};

/// Notes per listing page (SPEC §4.1).
pub const PAGE: usize = 500;
/// The largest answer read from the vault.
const MAX_BODY: u64 = 64 << 20;

pub struct RestVault {
    /// `{vault_url}/vault/{name}/api`
    api: String,
    vault_url: String,
    name: String,
    token: Secret,
    agent: ureq::Agent,
}

impl RestVault {
    pub fn new(vault_url: &str, name: &str, token: Secret, timeouts: Timeouts) -> RestVault {
        // Lookups that cannot panic when the OS refuses a thread.
        let agent = crate::http::client(
            ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_connect(Some(timeouts.connect))
                .timeout_global(Some(timeouts.request))
                .user_agent(concat!("parachute-runner/", env!("CARGO_PKG_VERSION")))
                .build(),
        );
        RestVault {
            api: format!("{vault_url}/vault/{name}/api"),
            vault_url: vault_url.to_string(),
            name: name.to_string(),
            token,
            agent,
        }
    }

    fn auth(&self) -> String {
        format!("Bearer {}", self.token.expose())
    }

    /// GET `url` and parse its JSON answer. `Ok(None)` on 404 when
    /// `missing_ok`.
    fn get_json(
        &self,
        what: &str,
        url: &str,
        missing_ok: bool,
    ) -> Result<Option<Value>, VaultError> {
        let Some(body) = self.get_body(what, url, missing_ok)? else {
            return Ok(None);
        };
        serde_json::from_slice(&body)
            .map(Some)
            .map_err(|e| VaultError::Malformed {
                what: what.to_string(),
                detail: format!("not JSON: {e}"),
            })
    }

    /// GET `url`: the body of a 2xx answer; `Ok(None)` on 404 when
    /// `missing_ok`.
    fn get_body(
        &self,
        what: &str,
        url: &str,
        missing_ok: bool,
    ) -> Result<Option<Vec<u8>>, VaultError> {
        let response = self
            .agent
            .get(url)
            .header("Authorization", self.auth())
            .header("Accept", "application/json")
            .call()
            .map_err(|e| unreachable(what, &self.vault_url, &e))?;
        let (status, body) = read_body(what, &self.vault_url, response)?;
        if status == 404 && missing_ok {
            return Ok(None);
        }
        if !(200..300).contains(&status) {
            return Err(status_error(what, status, &body));
        }
        Ok(Some(body))
    }

    /// Pages through `GET /notes?tag=…` until a short page, de-duplicating
    /// by id, handing each new note to `each`. A page with content that is
    /// too large to read is read again without content, and its notes one
    /// by one; a note too large is named in `skipped` instead.
    fn page_tagged(
        &self,
        tag: &str,
        content: bool,
        mut each: impl FnMut(Note),
        skipped: &mut Vec<(String, String)>,
    ) -> Result<(), VaultError> {
        let what = format!("listing notes tagged {tag}");
        let mut seen = std::collections::HashSet::new();
        let mut offset = 0usize;
        loop {
            let url = |content: bool| {
                format!(
                    "{}/notes?tag={}&include_content={}&limit={PAGE}&offset={offset}",
                    self.api,
                    crate::percent::encode(tag),
                    if content { "true" } else { "false" }
                )
            };
            let (notes, by_index) = match self.get_body(&what, &url(content), false) {
                Ok(Some(page)) => (self.page(&what, &page)?, false),
                Ok(None) => break,
                Err(VaultError::TooLarge { .. }) if content => {
                    let Some(page) = self.get_body(&what, &url(false), false)? else {
                        break;
                    };
                    (self.page(&what, &page)?, true)
                }
                Err(e) => return Err(e),
            };
            let count = notes.len();
            let mut new = 0;
            for note in notes {
                if !seen.insert(note.id.clone()) {
                    continue;
                }
                new += 1;
                if !by_index {
                    each(note);
                    continue;
                }
                let path = note.path_or_id().to_string();
                if note.is_output() {
                    continue;
                }
                match note.byte_size {
                    Some(n) if n > MAX_NOTE => skipped.push((path, too_large(n))),
                    _ => match self.get_note(&path) {
                        Ok(Some(full)) => each(full),
                        Ok(None) => {}
                        Err(VaultError::TooLarge { .. }) => {
                            skipped.push((path, too_large(note.byte_size.unwrap_or(MAX_BODY))));
                        }
                        Err(e) => return Err(e),
                    },
                }
            }
            // A short page ends the listing; so does a page with nothing new
            // (a vault that ignores `offset` must not loop us forever).
            if count < PAGE || new == 0 {
                break;
            }
            offset += count;
        }
        Ok(())
    }

    fn page(&self, what: &str, page: &[u8]) -> Result<Vec<Note>, VaultError> {
        parse_page(page).map_err(|detail| VaultError::Malformed {
            what: what.to_string(),
            detail,
        })
    }
}

/// Why a note is left out of the listing.
fn too_large(bytes: u64) -> String {
    format!(
        "the note is {}, larger than the {} a job note may be; it is not run",
        crate::files::size(bytes),
        crate::files::size(MAX_NOTE)
    )
}

impl Vault for RestVault {
    fn list_jobs(&self) -> Result<Listing, VaultError> {
        let mut notes = Vec::new();
        let mut too_big = Vec::new();
        let mut skipped = Vec::new();
        self.page_tagged(
            super::JOB_TAG,
            true,
            |note| {
                if note.is_output() {
                    return;
                }
                if note.content.len() as u64 > MAX_NOTE {
                    let path = note.path_or_id().to_string();
                    too_big.push((path, too_large(note.content.len() as u64)));
                } else {
                    notes.push(note);
                }
            },
            &mut skipped,
        )?;
        skipped.extend(too_big);
        Ok(Listing { notes, skipped })
    }

    fn get_note(&self, path: &str) -> Result<Option<Note>, VaultError> {
        let what = format!("reading note {path}");
        let url = format!("{}/notes/{}", self.api, crate::percent::encode(path));
        match self.get_json(&what, &url, true)? {
            None => Ok(None),
            Some(v) => serde_json::from_value(v)
                .map(Some)
                .map_err(|e| VaultError::Malformed {
                    what,
                    detail: format!("the note is not of the expected shape: {e}"),
                }),
        }
    }

    fn create_note(&self, note: &NewNote) -> Result<Created, VaultError> {
        let what = format!("writing note {}", note.path);
        let body = serde_json::to_vec(note).map_err(|e| VaultError::Malformed {
            what: what.clone(),
            detail: e.to_string(),
        })?;
        let response = self
            .agent
            .post(format!("{}/notes", self.api))
            .header("Authorization", self.auth())
            .content_type("application/json")
            .send(&body[..])
            .map_err(|e| unreachable(&what, &self.vault_url, &e))?;
        let mut response = response;
        let status = response.status().as_u16();
        match status {
            200..=299 => {
                // The answer repeats the whole note, which may be megabytes:
                // stream it, keeping only `path`.
                #[derive(serde::Deserialize)]
                struct Answer {
                    path: Option<String>,
                }
                let reader = response.body_mut().with_config().limit(MAX_BODY).reader();
                match serde_json::from_reader::<_, Answer>(reader) {
                    Ok(answer) => Ok(Created::At(
                        answer.path.unwrap_or_else(|| note.path.clone()),
                    )),
                    // Stored or not, we cannot tell: try again. A retry of a
                    // stored note meets 409 and finds its own run id there.
                    Err(e) => Err(VaultError::Unreachable {
                        what,
                        url: self.vault_url.clone(),
                        detail: format!("the answer to the write was unreadable ({e})"),
                    }),
                }
            }
            409 => Ok(Created::Conflict),
            _ => {
                let mut body = Vec::new();
                let reader = response.body_mut().with_config().limit(MAX_BODY).reader();
                let _ = std::io::Read::read_to_end(
                    &mut std::io::Read::take(reader, 64 << 10),
                    &mut body,
                );
                Err(status_error(&what, status, &body))
            }
        }
    }

    fn list_runs(&self, filter: &RunFilter, limit: usize) -> Result<Vec<Note>, VaultError> {
        let mut runs = Newest::new(filter, limit);
        self.page_tagged(
            crate::job::RUN_TAG,
            false,
            |note| runs.offer(note),
            &mut Vec::new(),
        )?;
        Ok(runs.finish())
    }

    fn list_index(&self, tag: &str) -> Result<Vec<Note>, VaultError> {
        let mut notes = Vec::new();
        self.page_tagged(tag, false, |note| notes.push(note), &mut Vec::new())?;
        Ok(notes)
    }

    fn patch_metadata(
        &self,
        path: &str,
        metadata: &Map<String, Value>,
        if_updated_at: &str,
    ) -> Result<Patched, VaultError> {
        let what = format!("updating note {path}");
        let body = serde_json::json!({ "metadata": metadata, "if_updated_at": if_updated_at });
        let url = format!("{}/notes/{}", self.api, crate::percent::encode(path));
        let response = self
            .agent
            .patch(&url)
            .header("Authorization", self.auth())
            .content_type("application/json")
            .send(body.to_string().as_bytes())
            .map_err(|e| unreachable(&what, &self.vault_url, &e))?;
        let (status, body) = read_body(&what, &self.vault_url, response)?;
        match status {
            200..=299 => serde_json::from_slice(&body)
                .map(Patched::Updated)
                .map_err(|e| VaultError::Malformed {
                    what,
                    detail: format!("the note is not of the expected shape: {e}"),
                }),
            409 => Ok(Patched::Conflict),
            404 => Ok(Patched::Missing),
            _ => Err(status_error(&what, status, &body)),
        }
    }

    fn agent_setup(&self) -> AgentSetup {
        AgentSetup {
            mcp_config: mcp_config(&self.vault_url, &self.name, &self.token),
            cwd: None,
            mcp_server: Some(server_name(&self.name)),
        }
    }

    fn describe(&self) -> String {
        format!("{}/vault/{}", self.vault_url, self.name)
    }
}

/// One page of `GET /notes`: a JSON array of notes, parsed straight into
/// notes (no intermediate document: a page holds up to 500 notes).
pub fn parse_page(page: &[u8]) -> Result<Vec<Note>, String> {
    serde_json::from_slice::<Vec<Note>>(page).map_err(|e| {
        if e.is_syntax() || e.is_eof() {
            format!("not JSON: {e}")
        } else {
            format!("expected a JSON array of notes: {e}")
        }
    })
}

/// The name of the vault's MCP server in the agent's config.
pub fn server_name(vault_name: &str) -> String {
    format!("parachute-vault-{vault_name}")
}

/// The MCP config of SPEC §6.1, keys in the contract's order.
pub fn mcp_config(vault_url: &str, name: &str, token: &Secret) -> String {
    let s = |v: &str| serde_json::to_string(v).unwrap_or_else(|_| "\"\"".to_string());
    format!(
        "{{\n  \"mcpServers\": {{\n    {}: {{\n      \"type\": \"http\",\n      \"url\": {},\n      \"headers\": {{\n        \"Authorization\": {}\n      }}\n    }}\n  }}\n}}\n",
        s(&server_name(name)),
        s(&format!("{vault_url}/vault/{name}/mcp")),
        s(&format!("Bearer {}", token.expose())),
    )
}

fn read_body(
    what: &str,
    url: &str,
    mut response: ureq::http::Response<ureq::Body>,
) -> Result<(u16, Vec<u8>), VaultError> {
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .with_config()
        .limit(MAX_BODY)
        .read_to_vec()
        .map_err(|e| match e {
            ureq::Error::BodyExceedsLimit(_) => VaultError::TooLarge {
                what: what.to_string(),
                limit: MAX_BODY,
            },
            other => unreachable(what, url, &other),
        })?;
    Ok((status, body))
}

/// An error status, with the vault's own message when its body says one.
fn status_error(what: &str, status: u16, body: &[u8]) -> VaultError {
    let message = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| {
            let field = |k: &str| v.get(k).and_then(Value::as_str).map(String::from);
            match (field("error"), field("message")) {
                (Some(e), Some(m)) if !m.contains(&e) => Some(format!("{e}: {m}")),
                (_, Some(m)) => Some(m),
                (Some(e), None) => Some(e),
                (None, None) => None,
            }
        })
        .unwrap_or_else(|| {
            let text = String::from_utf8_lossy(&body[..body.len().min(200)]);
            let text = text.trim();
            if text.is_empty() {
                "(no message)".to_string()
            } else {
                text.to_string()
            }
        });
    VaultError::Status {
        what: what.to_string(),
        status,
        message: one_line(&scrub(&message)),
    }
}

/// A transport error, described without the URL (which names the vault but
/// could one day carry something private) and on one line.
fn unreachable(what: &str, url: &str, e: &ureq::Error) -> VaultError {
    let detail = match e {
        ureq::Error::Timeout(t) => format!("timed out ({t})"),
        ureq::Error::Io(io) => io.to_string(),
        ureq::Error::HostNotFound => "host not found".to_string(),
        ureq::Error::BadUri(_) => "the vault URL is not valid".to_string(),
        ureq::Error::RequireHttpsOnly(_) => "https required".to_string(),
        other => other.to_string(),
    };
    VaultError::Unreachable {
        what: what.to_string(),
        url: url.to_string(),
        detail: one_line(&scrub(&detail)),
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mcp_config_shape() {
        let text = mcp_config("http://127.0.0.1:1940", "default", &Secret::new("pvt_x\"y"));
        assert_eq!(
            text,
            "{\n  \"mcpServers\": {\n    \"parachute-vault-default\": {\n      \"type\": \"http\",\n      \"url\": \"http://127.0.0.1:1940/vault/default/mcp\",\n      \"headers\": {\n        \"Authorization\": \"Bearer pvt_x\\\"y\"\n      }\n    }\n  }\n}\n"
        );
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            v["mcpServers"]["parachute-vault-default"]["headers"]["Authorization"],
            "Bearer pvt_x\"y"
        );
    }

    #[test]
    fn status_messages() {
        let e = status_error("w", 409, br#"{"error_type":"path_conflict","error":"path_conflict","message":"path_conflict: another note"}"#);
        assert_eq!(
            e.to_string(),
            "w: vault answered 409: path_conflict: another note"
        );
        let e = status_error(
            "w",
            401,
            br#"{"error":"Unauthorized","message":"Invalid API key"}"#,
        );
        assert_eq!(
            e.to_string(),
            "w: vault answered 401: Unauthorized: Invalid API key"
        );
        let e = status_error("w", 502, b"<html>\n bad gateway</html>");
        assert_eq!(
            e.to_string(),
            "w: vault answered 502: <html> bad gateway</html>"
        );
        assert!(e.is_transient());
        assert!(!status_error("w", 400, b"").is_transient());
    }
}
