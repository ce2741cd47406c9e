//! The test harness: a real `lockstep-cloud` on 127.0.0.1, port 0, driven over HTTP.
//!
//! Every scenario runs against SQLite and PostgreSQL (`backend_tests!`). PostgreSQL comes from
//! `LOCKSTEP_TEST_POSTGRES` (an admin URL; each app gets a fresh database). Without it the
//! Postgres variants are skipped with a message, unless `LOCKSTEP_REQUIRE_POSTGRES` is set
//! (as `cargo xtask test` does), in which case they fail.
#![allow(dead_code, clippy::unwrap_used)]

use std::{net::SocketAddr, sync::Arc};

use lockstep_cloud::{AppState, Config, clock::ManualClock};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::Connection;

/// Which database a test app uses.
#[derive(Debug, Clone)]
pub enum Backend {
    Sqlite,
    Postgres { admin_url: String },
}

impl Backend {
    /// The Postgres backend, if configured (see the module docs).
    pub fn postgres() -> Option<Backend> {
        match std::env::var("LOCKSTEP_TEST_POSTGRES") {
            Ok(url) if !url.is_empty() => Some(Backend::Postgres { admin_url: url }),
            _ if std::env::var_os("LOCKSTEP_REQUIRE_POSTGRES").is_some() => {
                panic!("LOCKSTEP_REQUIRE_POSTGRES is set but LOCKSTEP_TEST_POSTGRES is not")
            }
            _ => {
                eprintln!("skipped: set LOCKSTEP_TEST_POSTGRES to run the PostgreSQL variant");
                None
            }
        }
    }

    /// A database URL for a fresh, empty database.
    async fn fresh_database_url(&self, dir: &std::path::Path) -> String {
        match self {
            Backend::Sqlite => format!("sqlite://{}?mode=rwc", dir.join("test.sqlite3").display()),
            Backend::Postgres { admin_url } => {
                let name = format!("lockstep_test_{}", uuid::Uuid::new_v4().simple());
                let mut admin = sqlx::PgConnection::connect(admin_url)
                    .await
                    .expect("connect to LOCKSTEP_TEST_POSTGRES");
                sqlx::query(&format!("CREATE DATABASE {name}"))
                    .execute(&mut admin)
                    .await
                    .expect("create database");
                let mut url = url::Url::parse(admin_url).expect("LOCKSTEP_TEST_POSTGRES is a URL");
                url.set_path(&name);
                url.to_string()
            }
        }
    }
}

/// Generates one `#[tokio::test]` per backend for each `async fn name(backend: Backend)`.
#[macro_export]
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(backend) = $crate::common::Backend::postgres() {
                        super::$name(backend).await
                    }
                }
            )*
        }
    };
}

pub const PASSWORD: &str = "Correct horse 42";

/// A running server plus an HTTP client for it.
#[derive(Debug)]
pub struct TestApp {
    pub url: String,
    pub anon_key: String,
    pub clock: ManualClock,
    pub state: AppState,
    pub http: reqwest::Client,
    server: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl TestApp {
    pub async fn start(backend: Backend) -> TestApp {
        Self::start_with(backend, |_| {}).await
    }

    /// Starts with the default test configuration (dev mode on), adjusted by `configure`.
    pub async fn start_with(backend: Backend, configure: impl FnOnce(&mut Config)) -> TestApp {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::for_data_dir(dir.path());
        config.dev = true;
        config.database_url = Some(backend.fresh_database_url(dir.path()).await);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        config.bind = addr;
        configure(&mut config);
        let clock = ManualClock::starting_now();
        let state = AppState::new(config, Arc::new(clock.clone()))
            .await
            .unwrap();
        let server = tokio::spawn({
            let state = state.clone();
            async move {
                lockstep_cloud::serve(listener, state).await.unwrap();
            }
        });
        TestApp {
            url: format!("http://{addr}"),
            anon_key: state.keys.anon_key.clone(),
            clock,
            state,
            http: reqwest::Client::new(),
            server,
            _dir: dir,
        }
    }

    /// A request with the anon key and, if given, a bearer token.
    pub fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
    ) -> reqwest::RequestBuilder {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.url))
            .header("apikey", &self.anon_key);
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        req
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> Reply {
        Reply::from(
            self.request(Method::POST, path, token)
                .json(&body)
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Reply {
        Reply::from(self.request(Method::GET, path, token).send().await.unwrap()).await
    }

    pub async fn send(&self, req: reqwest::RequestBuilder) -> Reply {
        Reply::from(req.send().await.unwrap()).await
    }

    /// Signs up and returns the session.
    pub async fn signup(&self, email: &str, device: &str) -> Value {
        let reply = self
            .post(
                "/auth/v1/signup",
                None,
                json!({ "email": email, "password": PASSWORD, "device": device_json(device) }),
            )
            .await;
        reply.expect(StatusCode::OK);
        reply.body
    }

    /// Signs in with the password on the named device and returns the session.
    pub async fn sign_in(&self, email: &str, device: &str) -> Value {
        let reply = self.sign_in_reply(email, PASSWORD, device).await;
        reply.expect(StatusCode::OK);
        reply.body
    }

    pub async fn sign_in_reply(&self, email: &str, password: &str, device: &str) -> Reply {
        self.post(
            "/auth/v1/token?grant_type=password",
            None,
            json!({ "email": email, "password": password, "device": device_json(device) }),
        )
        .await
    }

    pub async fn refresh(&self, refresh_token: &str) -> Reply {
        self.post(
            "/auth/v1/token?grant_type=refresh_token",
            None,
            json!({ "refresh_token": refresh_token }),
        )
        .await
    }

    /// Messages in the dev mailbox for `to`, newest first.
    pub async fn mailbox(&self, to: &str) -> Vec<Value> {
        let reply = self
            .get(&format!("/dev/mailbox?to={}", urlencoding(to)), None)
            .await;
        reply.expect(StatusCode::OK);
        reply.body.as_array().unwrap().clone()
    }

    /// The link of the newest message to `to`.
    pub async fn latest_link(&self, to: &str) -> String {
        let mail = self.mailbox(to).await;
        mail.first().unwrap_or_else(|| panic!("no mail to {to}"))["links"][0]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Opens a link like a browser would, without following the redirect; returns `Location`.
    pub async fn open_link(&self, link: &str) -> String {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let response = client.get(link).send().await.unwrap();
        assert_eq!(
            response.status(),
            StatusCode::SEE_OTHER,
            "verification links redirect"
        );
        response.headers()["location"].to_str().unwrap().to_owned()
    }

    /// Runs SQL against the app's database and returns every column of every row as text.
    pub async fn raw_rows(&self, sql: &str) -> Vec<Vec<Option<String>>> {
        use sqlx::Row;
        let rows = sqlx::query(sql)
            .fetch_all(&self.state.db.pool)
            .await
            .unwrap();
        rows.iter()
            .map(|row| {
                (0..row.columns().len())
                    .map(|i| {
                        row.try_get::<Option<String>, _>(i)
                            .ok()
                            .flatten()
                            .or_else(|| {
                                row.try_get::<Option<i64>, _>(i)
                                    .ok()
                                    .flatten()
                                    .map(|n| n.to_string())
                            })
                            .or_else(|| {
                                row.try_get::<Option<Vec<u8>>, _>(i)
                                    .ok()
                                    .flatten()
                                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                            })
                    })
                    .collect()
            })
            .collect()
    }
}

pub fn device_json(id: &str) -> Value {
    json!({ "id": id, "name": format!("Device {id}"), "platform": "linux", "app_version": "0.1.0" })
}

pub fn urlencoding(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// A response read whole: status, headers, JSON body (or `Null`).
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
    pub text: String,
}

impl Reply {
    pub async fn from(response: reqwest::Response) -> Reply {
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Reply {
            status,
            headers,
            body,
            text,
        }
    }

    #[track_caller]
    pub fn expect(&self, status: StatusCode) -> &Self {
        assert_eq!(
            self.status, status,
            "unexpected status; body: {}",
            self.text
        );
        self
    }

    /// Asserts a GoTrue legacy-shaped error with this status and `error_code`.
    #[track_caller]
    pub fn expect_error(&self, status: StatusCode, error_code: &str) -> &Self {
        self.expect(status);
        assert_eq!(self.body["error_code"], error_code, "body: {}", self.text);
        assert_eq!(self.body["code"], status.as_u16(), "body: {}", self.text);
        assert!(
            self.body["msg"].as_str().is_some_and(|m| !m.is_empty()),
            "body: {}",
            self.text
        );
        self
    }

    /// Asserts a PostgREST-shaped error with this status and code.
    #[track_caller]
    pub fn expect_rest_error(&self, status: StatusCode, code: &str) -> &Self {
        self.expect(status);
        assert_eq!(self.body["code"], code, "body: {}", self.text);
        assert!(
            self.body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "body: {}",
            self.text
        );
        self
    }
}

pub fn access_token(session: &Value) -> &str {
    session["access_token"].as_str().unwrap()
}

pub fn refresh_token(session: &Value) -> &str {
    session["refresh_token"].as_str().unwrap()
}

/// Decodes a JWT's claims without checking it (tests inspect what the server signed).
pub fn claims(jwt: &str) -> Value {
    use base64::Engine;
    let payload = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap()
}
