//! The OpenBao test kit itself (`tests/baokit`): a dev server with a derived Transit key
//! whose data keys decrypt only under their context and only with a token allowed to;
//! AppRole and namespaces; a persistent server that comes back sealed after a restart
//! and decrypts old ciphertext once unsealed; a TLS dev server that answers with its CA.

mod baokit;

use baokit::admin::b64;
use baokit::BaoServer;

#[test]
fn dev_server_derived_key_and_a_token_without_decrypt() {
    let bao = BaoServer::dev();
    assert!(bao.endpoint().starts_with("openbao+http://127.0.0.1:"));
    assert_eq!(bao.health_code(), Some(200));
    bao.create_key("files", true);
    assert_eq!(bao.key_info("transit/files")["derived"], true);

    let ctx = b64(b"volume-1/file-1");
    let (plain, wrapped) = bao.datakey("files", Some(&ctx));
    assert!(wrapped.starts_with("vault:v1:"), "{wrapped}");
    assert_eq!(
        bao.decrypt("files", &wrapped, Some(&ctx)),
        Ok(plain.clone())
    );
    let other = bao.decrypt("files", &wrapped, Some(&b64(b"volume-1/file-2")));
    assert!(other.is_err(), "another context decrypted: {other:?}");

    bao.key_policy("wrap-only", "transit/files", &["datakey/plaintext"]);
    let token = bao.token_with_policies(&["wrap-only"], "5m");
    let out = bao.bao_as(
        &token,
        &[
            "write",
            "-field=ciphertext",
            "transit/datakey/plaintext/files",
            &format!("context={ctx}"),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = bao
        .decrypt_as(&token, "files", &wrapped, Some(&ctx))
        .unwrap_err();
    assert!(err.contains("permission denied"), "{err}");

    // A rotation, then old versions refused: what `kmsfs rewrap` tests will set up.
    assert_eq!(bao.rotate("files"), 2);
    bao.set_min_decryption_version("files", 2);
    assert_eq!(bao.key_info("files")["min_decryption_version"], 2);
    assert!(bao.decrypt("files", &wrapped, Some(&ctx)).is_err());
}

#[test]
fn approle_and_namespaces() {
    let bao = BaoServer::dev();
    bao.create_key("files", true);
    bao.key_policy("files-rw", "files", &["datakey/plaintext", "decrypt"]);
    let (role_id, secret_id) = bao.approle("kmsfs", &["files-rw"], "1m", "10m");
    let token = bao.approle_login(&role_id, &secret_id);
    let ctx = b64(b"ctx");
    let (plain, wrapped) = bao.datakey("files", Some(&ctx));
    assert_eq!(
        bao.decrypt_as(&token, "files", &wrapped, Some(&ctx)),
        Ok(plain)
    );

    bao.namespace("team-a");
    let key = ["write", "-f", "transit/keys/team-key", "derived=true"];
    bao.bao_in("team-a", &key);
    let listed = bao.bao_in("team-a", &["list", "transit/keys"]);
    assert!(listed.contains("team-key"), "{listed}");
    let out = bao.bao(&["read", "transit/keys/team-key"]);
    assert!(
        !out.status.success(),
        "the namespace's key is seen from the root"
    );
}

#[test]
fn persistent_server_restarts_sealed_and_keeps_its_keys() {
    let dir = tempfile::tempdir().unwrap();
    let mut bao = BaoServer::persistent(dir.path());
    bao.create_key("files", true);
    let ctx = b64(b"volume/file");
    let (plain, wrapped) = bao.datakey("files", Some(&ctx));
    let addr = bao.addr();

    bao.stop();
    assert_eq!(bao.health_code(), None, "a stopped server answers nothing");
    bao.start();
    assert_eq!(bao.addr(), addr);
    assert!(bao.is_sealed(), "health {:?}", bao.health_code());
    let sealed = bao.decrypt("files", &wrapped, Some(&ctx)).unwrap_err();
    assert!(sealed.contains("sealed"), "{sealed}");

    bao.unseal();
    assert_eq!(
        bao.decrypt("files", &wrapped, Some(&ctx)),
        Ok(plain.clone())
    );

    // Sealing a running server, as an operator would in an incident.
    bao.seal();
    assert!(bao.decrypt("files", &wrapped, Some(&ctx)).is_err());
    bao.unseal();
    assert_eq!(bao.decrypt("files", &wrapped, Some(&ctx)), Ok(plain));
}

#[test]
fn tls_dev_server_answers_with_its_ca() {
    let mut bao = BaoServer::dev_tls();
    assert!(bao.endpoint().starts_with("openbao+https://127.0.0.1:"));
    assert!(bao.ca_cert_path().exists());
    assert_eq!(bao.health_code(), Some(200));
    bao.create_key("files", true);
    let (plain, wrapped) = bao.datakey("files", Some(&b64(b"c")));
    assert_eq!(
        bao.decrypt("files", &wrapped, Some(&b64(b"c"))),
        Ok(plain.clone())
    );

    // A dev server seals and unseals too (its unseal key is in its log).
    bao.seal();
    assert!(bao.decrypt("files", &wrapped, Some(&b64(b"c"))).is_err());
    bao.unseal();
    assert_eq!(bao.decrypt("files", &wrapped, Some(&b64(b"c"))), Ok(plain));

    // Without the CA the server's certificate is not trusted.
    let mut c = bao.command();
    c.env_remove("BAO_CACERT")
        .args(["read", "transit/keys/files"]);
    let out = c.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("certificate"),
        "{err}"
    );
}
