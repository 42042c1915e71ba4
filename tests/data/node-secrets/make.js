// Makes a secrets.json the way the TypeScript runner does (Node's crypto,
// aes-256-gcm, 12-byte IV, tag kept apart, standard base64), with a fixed
// master.key, so the Rust side proves it reads Node's envelope.
// Run: node make.js   (writes master.key and secrets.json here)
const crypto = require("crypto");
const fs = require("fs");
const key = Buffer.from("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f", "hex");
const iv = crypto.randomBytes(12);
const cipher = crypto.createCipheriv("aes-256-gcm", key, iv);
const ciphertext = Buffer.concat([cipher.update("pvt_node_made_token_0123456789", "utf8"), cipher.final()]);
const tag = cipher.getAuthTag();
const doc = { version: 1, entries: { vault_token: { iv: iv.toString("base64"), tag: tag.toString("base64"), ciphertext: ciphertext.toString("base64") } } };
fs.writeFileSync("master.key", key, { mode: 0o600 });
fs.writeFileSync("secrets.json", JSON.stringify(doc, null, 2) + "\n", { mode: 0o600 });
