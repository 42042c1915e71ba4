//! SPEC §2: secrets.json is byte-compatible with the TypeScript runner's
//! envelope, proven against Node's own crypto both ways.

use std::path::{Path, PathBuf};
use std::process::Command;

use parachute_runner::testing::{Secret, SecretStore};

use crate::support::fake_vault::FakeVault;
use crate::support::{Runner, TempDir};

const NODE_TOKEN: &str = "pvt_node_made_token_0123456789";

fn node_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/node-secrets")
}

#[test]
fn node_made_envelope_decrypts_with_our_code() {
    let store = SecretStore::new(node_dir());
    assert_eq!(
        store.get("vault_token").unwrap().unwrap().expose(),
        NODE_TOKEN
    );
}

#[test]
fn node_made_secrets_authenticate_the_binary_against_the_vault() {
    let home = TempDir::new("node-secrets");
    let runner = home.join("runner");
    std::fs::create_dir_all(&runner).unwrap();
    for f in ["master.key", "secrets.json"] {
        std::fs::copy(node_dir().join(f), runner.join(f)).unwrap();
    }
    let vault = FakeVault::start_with("127.0.0.1:0", NODE_TOKEN, "default").unwrap();
    std::fs::write(
        runner.join("config.json"),
        format!("{{\"vault_url\": \"{}\"}}", vault.url()),
    )
    .unwrap();
    Runner::new()
        .env("PARACHUTE_HOME", home.path())
        .args(["jobs"])
        .run()
        .success();
    assert!(vault.requests().iter().all(|r| {
        r.headers.iter().any(|(k, v)| {
            k.eq_ignore_ascii_case("authorization") && v == &format!("Bearer {NODE_TOKEN}")
        })
    }));
}

#[test]
fn node_decrypts_our_envelope() {
    let dir = TempDir::new("to-node");
    SecretStore::new(dir.path())
        .set("vault_token", &Secret::new("pvt_rust_made_✓"))
        .unwrap();
    let Ok(out) = Command::new("node")
        .arg(node_dir().join("decrypt.js"))
        .arg(dir.path())
        .output()
    else {
        eprintln!("node is not installed: skipping the Rust → Node direction");
        return;
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "pvt_rust_made_✓");
}
