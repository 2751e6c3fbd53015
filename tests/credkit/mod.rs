//! Local stand-ins for where AWS credentials come from, on 127.0.0.1: EC2 instance
//! metadata (IMDSv2: a token PUT, then the role and its credentials), an ECS container
//! credentials endpoint, the SSO portal, and STS (AssumeRole and AssumeRoleWithWebIdentity in the query
//! protocol's XML). Each hands out credential set 1, 2, 3... (one per fetch), which
//! [`server_credentials`] lets a `kmsfs kms serve` accept.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// The access key, secret and session token of credential set `n`.
pub fn set(n: u32) -> (String, String, String) {
    (
        format!("ASIASTANDIN{n:09}"),
        format!("standin-secret-{n}"),
        format!("standin-token-{n}"),
    )
}

/// Sections accepting credential sets `sets`, for a server's credentials file.
pub fn server_credentials(sets: std::ops::RangeInclusive<u32>) -> String {
    sets
        .map(|n| {
            let (id, secret, token) = set(n);
            format!("[set{n}]\naws_access_key_id = {id}\naws_secret_access_key = {secret}\naws_session_token = {token}\n")
        })
        .collect()
}

/// `2026-12-04T01:00:00Z`.
pub fn iso(t: SystemTime) -> String {
    let secs = t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() as i64;
    let dt = time::OffsetDateTime::from_unix_timestamp(secs).unwrap();
    dt.format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

/// One request as a stand-in sees it.
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A stand-in: answers each request with `(status, body)` from its handler, and keeps
/// every request it saw. Lives as long as the test (its thread ends with the process).
pub struct StandIn {
    pub url: String,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// Credential sets handed out so far.
    pub handed_out: Arc<AtomicU32>,
}

type Handler = dyn Fn(&Seen, &dyn Fn() -> u32) -> (u16, String) + Send + Sync;

impl StandIn {
    fn start(handler: Box<Handler>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let handed_out = Arc::new(AtomicU32::new(0));
        let (s, h) = (seen.clone(), handed_out.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let _ = answer(conn, &*handler, &s, &h);
            }
        });
        StandIn {
            url,
            seen,
            handed_out,
        }
    }

    /// IMDSv2: a token for a PUT with a TTL header, then (with the token) the role name and
    /// the role's credentials, each set good for `life`.
    pub fn imds(life: Duration) -> Self {
        Self::start(Box::new(move |req, next| {
            let token_ok = req.header("x-aws-ec2-metadata-token") == Some("imds-token");
            match (req.method.as_str(), req.path.as_str()) {
                ("PUT", "/latest/api/token")
                    if req.header("x-aws-ec2-metadata-token-ttl-seconds").is_some() =>
                {
                    (200, "imds-token".into())
                }
                (_, _) if !token_ok => (401, String::new()),
                ("GET", "/latest/meta-data/iam/security-credentials/") => {
                    (200, "standin-role".into())
                }
                ("GET", "/latest/meta-data/iam/security-credentials/standin-role") => {
                    let (id, secret, token) = set(next());
                    let expires = iso(SystemTime::now() + life);
                    let now = iso(SystemTime::now());
                    (
                        200,
                        format!(
                            r#"{{"Code":"Success","LastUpdated":"{now}","Type":"AWS-HMAC","AccessKeyId":"{id}","SecretAccessKey":"{secret}","Token":"{token}","Expiration":"{expires}"}}"#
                        ),
                    )
                }
                _ => (404, String::new()),
            }
        }))
    }

    /// An ECS container credentials endpoint (`AWS_CONTAINER_CREDENTIALS_FULL_URI`), which
    /// wants `authorization` when `AWS_CONTAINER_AUTHORIZATION_TOKEN` is set.
    pub fn ecs(auth: Option<&'static str>) -> Self {
        Self::start(Box::new(move |req, next| {
            if req.path != "/creds" || req.header("authorization") != auth {
                return (403, r#"{"message":"no"}"#.into());
            }
            let (id, secret, token) = set(next());
            let expires = iso(SystemTime::now() + Duration::from_secs(3600));
            (
                200,
                format!(
                    r#"{{"AccessKeyId":"{id}","SecretAccessKey":"{secret}","Token":"{token}","Expiration":"{expires}","RoleArn":"arn:aws:iam::111122223333:role/ecs"}}"#
                ),
            )
        }))
    }

    /// STS: AssumeRole (signed by the caller's keys) and AssumeRoleWithWebIdentity (with
    /// the token `web_token`), answered in the query protocol's XML.
    pub fn sts(web_token: &'static str) -> Self {
        Self::start(Box::new(move |req, next| {
            let form = |k: &str| {
                req.body
                    .split('&')
                    .find_map(|p| p.strip_prefix(&format!("{k}=")))
                    .map(|v| v.replace("%3A", ":").replace("%2F", "/"))
            };
            let action = form("Action").unwrap_or_default();
            let signed = req
                .header("authorization")
                .is_some_and(|a| a.starts_with("AWS4-HMAC-SHA256"));
            let ok = match action.as_str() {
                "AssumeRole" => signed && form("RoleArn").is_some(),
                "AssumeRoleWithWebIdentity" => {
                    form("WebIdentityToken").as_deref() == Some(web_token)
                }
                _ => false,
            };
            if !ok {
                return (403, "<ErrorResponse><Error><Type>Sender</Type><Code>AccessDenied</Code><Message>refused by the stand-in</Message></Error></ErrorResponse>".into());
            }
            let (id, secret, token) = set(next());
            let expires = iso(SystemTime::now() + Duration::from_secs(3600));
            let role = form("RoleArn").unwrap_or_default();
            (
                200,
                format!(
                    r#"<{action}Response xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><{action}Result><Credentials><AccessKeyId>{id}</AccessKeyId><SecretAccessKey>{secret}</SecretAccessKey><SessionToken>{token}</SessionToken><Expiration>{expires}</Expiration></Credentials><AssumedRoleUser><Arn>{role}/s</Arn><AssumedRoleId>AROA:s</AssumedRoleId></AssumedRoleUser></{action}Result><ResponseMetadata><RequestId>r</RequestId></ResponseMetadata></{action}Response>"#
                ),
            )
        }))
    }

    /// The SSO portal's GetRoleCredentials, for the bearer token `token` (what the AWS
    /// CLI's `aws sso login` leaves in its token cache).
    pub fn sso(token: &'static str) -> Self {
        Self::start(Box::new(move |req, next| {
            let wanted = req.path.starts_with("/federation/credentials?")
                && req.path.contains("role_name=kms-user")
                && req.header("x-amz-sso_bearer_token") == Some(token);
            if !wanted {
                return (401, r#"{"message":"no"}"#.into());
            }
            let (id, secret, token) = set(next());
            let expires_ms = (SystemTime::now() + Duration::from_secs(3600))
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_millis();
            (
                200,
                format!(
                    r#"{{"roleCredentials":{{"accessKeyId":"{id}","secretAccessKey":"{secret}","sessionToken":"{token}","expiration":{expires_ms}}}}}"#
                ),
            )
        }))
    }

    /// The requests seen, as `METHOD PATH`.
    pub fn requests(&self) -> Vec<String> {
        let seen = self.seen.lock().unwrap();
        seen.iter()
            .map(|s| format!("{} {}", s.method, s.path))
            .collect()
    }
}

/// Reads one HTTP/1.1 request from `conn`, answers it and closes.
fn answer(
    conn: TcpStream,
    handler: &Handler,
    seen: &Mutex<Vec<Seen>>,
    handed_out: &AtomicU32,
) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (method, path) = (
        parts.next().unwrap_or("").to_owned(),
        parts.next().unwrap_or("").to_owned(),
    );
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h)?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_lowercase(), v.trim().to_owned()));
        }
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    reader.read_exact(&mut body)?;
    let req = Seen {
        method,
        path,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    };
    let next = || handed_out.fetch_add(1, Ordering::SeqCst) + 1;
    let (status, body) = handler(&req, &next);
    // IMDS answers a token with its lifetime.
    let ttl = req
        .header("x-aws-ec2-metadata-token-ttl-seconds")
        .map(|t| format!("x-aws-ec2-metadata-token-ttl-seconds: {t}\r\n"))
        .unwrap_or_default();
    seen.lock().unwrap().push(req);
    let mut conn = conn;
    write!(
        conn,
        "HTTP/1.1 {status} X\r\ncontent-length: {}\r\n{ttl}connection: close\r\n\r\n{body}",
        body.len()
    )?;
    conn.flush()
}
