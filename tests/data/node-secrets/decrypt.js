// Decrypts secrets.json's vault_token with master.key using Node's crypto,
// the way the TypeScript runner reads it. Used by the Rust test that proves
// Node reads our envelope. Usage: node decrypt.js <dir>; prints the token.
const crypto = require("crypto");
const fs = require("fs");
const path = require("path");
const dir = process.argv[2];
const key = fs.readFileSync(path.join(dir, "master.key"));
const e = JSON.parse(fs.readFileSync(path.join(dir, "secrets.json"), "utf8")).entries.vault_token;
const d = crypto.createDecipheriv("aes-256-gcm", key, Buffer.from(e.iv, "base64"));
d.setAuthTag(Buffer.from(e.tag, "base64"));
process.stdout.write(Buffer.concat([d.update(Buffer.from(e.ciphertext, "base64")), d.final()]).toString("utf8"));
