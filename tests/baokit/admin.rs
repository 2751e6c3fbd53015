//! What a test does to an OpenBao server as its operator, through the `bao` CLI with the
//! root token: Transit keys and their versions, one-off Transit calls to check what a
//! volume stored, policies, tokens, AppRole and namespaces.
//!
//! A key is named as `kmsfs init --key` names it: `MOUNT/NAME` (`transit/files`,
//! `kv/x/transit/files`), or a bare `NAME` in `transit/`.

use super::{ok_stdout, BaoServer};

/// `MOUNT/OP/NAME` for a Transit key (`transit_path("transit/k", "datakey/plaintext")`
/// is `transit/datakey/plaintext/k`).
pub fn transit_path(key: &str, op: &str) -> String {
    let (mount, name) = key.rsplit_once('/').unwrap_or(("transit", key));
    format!("{mount}/{op}/{name}")
}

/// A Transit context (or plaintext) from bytes, base64 as the API takes it.
pub fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

impl BaoServer {
    /// Enables another Transit engine at `path`.
    pub fn enable_transit(&self, path: &str) {
        self.bao_ok(&["secrets", "enable", &format!("-path={path}"), "transit"]);
    }

    /// Creates an aes256-gcm96 key; `derived` keys need a context on every call.
    pub fn create_key(&self, key: &str, derived: bool) {
        let path = transit_path(key, "keys");
        self.bao_ok(&["write", "-f", &path, &format!("derived={derived}")]);
    }

    /// `transit/keys/NAME` as JSON (`data`: `latest_version`, `min_decryption_version`,
    /// `derived`, ...).
    pub fn key_info(&self, key: &str) -> serde_json::Value {
        let path = transit_path(key, "keys");
        self.bao_json(&["read", "-format=json", &path])["data"].clone()
    }

    /// Adds a key version; new data keys are wrapped under it. Returns the new version.
    pub fn rotate(&self, key: &str) -> u64 {
        let path = format!("{}/rotate", transit_path(key, "keys"));
        self.bao_ok(&["write", "-f", &path]);
        self.key_info(key)["latest_version"].as_u64().unwrap()
    }

    /// Ciphertexts of versions below `version` no longer decrypt.
    pub fn set_min_decryption_version(&self, key: &str, version: u64) {
        let path = format!("{}/config", transit_path(key, "keys"));
        self.bao_ok(&["write", &path, &format!("min_decryption_version={version}")]);
    }

    /// `datakey/plaintext` with a base64 `context` (`None` for a key not derived):
    /// (plaintext base64, ciphertext `vault:vN:...`).
    pub fn datakey(&self, key: &str, context: Option<&str>) -> (String, String) {
        let path = transit_path(key, "datakey/plaintext");
        let mut args = vec!["write", "-format=json", &path];
        let ctx = context.map(|c| format!("context={c}"));
        args.extend(ctx.as_deref());
        let data = &self.bao_json(&args)["data"];
        (
            data["plaintext"].as_str().unwrap().to_owned(),
            data["ciphertext"].as_str().unwrap().to_owned(),
        )
    }

    /// `decrypt` as `token`: the plaintext (base64), or the CLI's error text.
    pub fn decrypt_as(
        &self,
        token: &str,
        key: &str,
        ciphertext: &str,
        context: Option<&str>,
    ) -> Result<String, String> {
        let path = transit_path(key, "decrypt");
        let ct = format!("ciphertext={ciphertext}");
        let ctx = context.map(|c| format!("context={c}"));
        let mut args = vec!["write", "-field=plaintext", &path, &ct];
        args.extend(ctx.as_deref());
        let out = self.bao_as(token, &args);
        if out.status.success() {
            Ok(String::from_utf8(out.stdout).unwrap().trim().to_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// `decrypt` with the root token.
    pub fn decrypt(
        &self,
        key: &str,
        ciphertext: &str,
        context: Option<&str>,
    ) -> Result<String, String> {
        self.decrypt_as(self.root_token(), key, ciphertext, context)
    }

    /// Writes (or replaces) the ACL policy `name`.
    pub fn policy(&self, name: &str, hcl: &str) {
        let file = self.dir().join(format!("policy-{name}.hcl"));
        std::fs::write(&file, hcl).unwrap();
        self.bao_ok(&["policy", "write", name, file.to_str().unwrap()]);
    }

    /// A policy that allows exactly `ops` (`"datakey/plaintext"`, `"decrypt"`, ...) on
    /// one key, with the `update` capability Transit's calls need.
    pub fn key_policy(&self, name: &str, key: &str, ops: &[&str]) {
        let hcl: String = ops
            .iter()
            .map(|op| {
                format!(
                    "path \"{}\" {{ capabilities = [\"update\"] }}\n",
                    transit_path(key, op)
                )
            })
            .collect();
        self.policy(name, &hcl);
    }

    /// A new service token with these policies (and `default`) that lives `ttl`
    /// (`"30s"`, `"1h"`), renewable.
    pub fn token_with_policies(&self, policies: &[&str], ttl: &str) -> String {
        let ttl = format!("-ttl={ttl}");
        let flags: Vec<String> = policies.iter().map(|p| format!("-policy={p}")).collect();
        let mut args = vec!["token", "create", "-field=token", &ttl];
        args.extend(flags.iter().map(String::as_str));
        self.bao_ok(&args).trim().to_owned()
    }

    /// An AppRole role (enabling `auth/approle` the first time) whose tokens carry
    /// `policies` and live `token_ttl`, renewable up to `token_max_ttl`: its
    /// (role id, a new secret id).
    pub fn approle(
        &self,
        role: &str,
        policies: &[&str],
        token_ttl: &str,
        token_max_ttl: &str,
    ) -> (String, String) {
        let auths = self.bao_json(&["auth", "list", "-format=json"]);
        if auths.get("approle/").is_none() {
            self.bao_ok(&["auth", "enable", "approle"]);
        }
        let path = format!("auth/approle/role/{role}");
        self.bao_ok(&[
            "write",
            &path,
            &format!("token_policies={}", policies.join(",")),
            &format!("token_ttl={token_ttl}"),
            &format!("token_max_ttl={token_max_ttl}"),
        ]);
        let role_id = self.bao_ok(&["read", "-field=role_id", &format!("{path}/role-id")]);
        let secret_id = self.bao_ok(&[
            "write",
            "-f",
            "-field=secret_id",
            &format!("{path}/secret-id"),
        ]);
        (role_id.trim().to_owned(), secret_id.trim().to_owned())
    }

    /// Logs in with AppRole: the token, as `kmsfs` would get it.
    pub fn approle_login(&self, role_id: &str, secret_id: &str) -> String {
        let out = self.bao_ok(&[
            "write",
            "-field=token",
            "auth/approle/login",
            &format!("role_id={role_id}"),
            &format!("secret_id={secret_id}"),
        ]);
        out.trim().to_owned()
    }

    /// Creates the namespace `name` (OpenBao has namespaces in its open-source server)
    /// with `transit/` enabled in it. Reach into it with `bao_in`, and from `kmsfs` with
    /// `BAO_NAMESPACE`.
    pub fn namespace(&self, name: &str) {
        self.bao_ok(&["namespace", "create", name]);
        self.bao_in(name, &["secrets", "enable", "transit"]);
    }

    /// `bao ARGS` inside namespace `ns`, which must succeed; its stdout.
    pub fn bao_in(&self, ns: &str, args: &[&str]) -> String {
        ok_stdout(args, self.bao_with(&[("BAO_NAMESPACE", ns)], args))
    }
}
