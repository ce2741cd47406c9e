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
    pub database_url: String,
    pub anon_key: String,
    pub clock: ManualClock,
    pub state: AppState,
    pub http: reqwest::Client,
    server: tokio::task::JoinHandle<()>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
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
        let database_url = backend.fresh_database_url(dir.path()).await;
        Self::launch(dir, database_url, ManualClock::starting_now(), configure).await
    }

    /// Stops this node and starts a new one on the same data dir and database (a restart).
    pub async fn restart(mut self) -> TestApp {
        self.server.abort();
        let dir = std::mem::replace(&mut self._dir, tempfile::tempdir().unwrap());
        let (url, clock) = (self.database_url.clone(), self.clock.clone());
        drop(self);
        Self::launch(dir, url, clock, |_| {}).await
    }

    /// A second node on the same database and keys (PostgreSQL: several nodes, one database).
    pub async fn another_node(&self) -> TestApp {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(
            self.state.config.data_dir.join("secrets.json"),
            dir.path().join("secrets.json"),
        )
        .unwrap();
        Self::launch(dir, self.database_url.clone(), self.clock.clone(), |_| {}).await
    }

    async fn launch(
        dir: tempfile::TempDir,
        database_url: String,
        clock: ManualClock,
        configure: impl FnOnce(&mut Config),
    ) -> TestApp {
        let mut config = Config::for_data_dir(dir.path());
        config.dev = true;
        config.database_url = Some(database_url.clone().into());
        let listener = lockstep_cloud::serve::listen(([127, 0, 0, 1], 0).into()).unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        config.bind = addr;
        configure(&mut config);
        let state = AppState::new(config, Arc::new(clock.clone()))
            .await
            .unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn({
            let state = state.clone();
            async move {
                let shutdown = async {
                    let _ = stopped.await;
                };
                lockstep_cloud::serve_until(listener, state, shutdown)
                    .await
                    .unwrap();
            }
        });
        TestApp {
            url: format!("http://{addr}"),
            database_url,
            anon_key: state.keys.anon_key.clone(),
            clock,
            state,
            http: reqwest::Client::new(),
            server,
            stop: Some(stop),
            _dir: dir,
        }
    }

    /// Shuts the server down gracefully (as on SIGTERM) and waits until it has stopped.
    pub async fn shut_down(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(std::time::Duration::from_secs(60), &mut self.server)
            .await
            .expect("the server stops within its grace period")
            .expect("the server task ends cleanly");
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

    /// A GET as the session `session`.
    pub async fn get_as(&self, path: &str, session: &Value) -> Reply {
        self.get(path, Some(access_token(session))).await
    }

    /// A POST of `body` as the session `session`.
    pub async fn post_as(&self, path: &str, session: &Value, body: Value) -> Reply {
        self.post(path, Some(access_token(session)), body).await
    }

    /// Sends `n` POSTs to `path` at once, the `i`th with `body(i)`; the answers in order.
    pub async fn post_burst(
        &self,
        n: usize,
        path: &str,
        token: Option<&str>,
        body: impl Fn(usize) -> Value,
    ) -> Vec<Reply> {
        futures::future::join_all((0..n).map(|i| self.post(path, token, body(i)))).await
    }

    pub async fn send(&self, req: reqwest::RequestBuilder) -> Reply {
        Reply::from(req.send().await.unwrap()).await
    }

    /// Sends a request without a body, with the anon key and, if given, a bearer token.
    pub async fn call(&self, method: Method, path: &str, token: Option<&str>) -> Reply {
        self.send(self.request(method, path, token)).await
    }

    /// Asserts that `session` still reads its user (it was not signed out).
    pub async fn expect_signed_in(&self, session: &Value) {
        self.get_as("/auth/v1/user", session)
            .await
            .expect(StatusCode::OK);
    }

    /// Asserts that `session` was ended: its user is refused with `session_not_found`.
    pub async fn expect_session_gone(&self, session: &Value) {
        self.get_as("/auth/v1/user", session)
            .await
            .expect_error(StatusCode::FORBIDDEN, "session_not_found");
    }

    /// Sends a request without a body as the session `session`.
    pub async fn call_as(&self, method: Method, path: &str, session: &Value) -> Reply {
        self.call(method, path, Some(access_token(session))).await
    }

    /// A password sign-in request without a body, for tests that shape it by hand.
    pub fn sign_in_request(&self) -> reqwest::RequestBuilder {
        self.request(Method::POST, "/auth/v1/token?grant_type=password", None)
    }

    /// A bare sign-up with this email and password (no device), as it is answered.
    pub async fn signup_reply(&self, email: &str, password: &str) -> Reply {
        let body = json!({ "email": email, "password": password });
        self.post("/auth/v1/signup", None, body).await
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

    /// Ada signs up on her laptop and signs in on her desktop: both sessions.
    pub async fn ada_on_two_devices(&self) -> (Value, Value) {
        let laptop = self.signup("ada@example.com", "laptop").await;
        let desktop = self.sign_in("ada@example.com", "desktop").await;
        (laptop, desktop)
    }

    /// Signs up and confirms the address by opening the emailed link; returns the session.
    pub async fn signup_confirmed(&self, email: &str, device: &str) -> Value {
        let session = self.signup(email, device).await;
        self.open_latest_link(email).await;
        session
    }

    /// Asks for a password-recovery mail for `email` and opens its link, as the address's owner
    /// would; returns the recovery session's access token.
    pub async fn recover(&self, email: &str) -> String {
        self.recover_reply("", email).await.expect(StatusCode::OK);
        let link = self.latest_link(email).await;
        fragment(&self.open_link(&link).await)["access_token"].clone()
    }

    /// Asks for a recovery mail to `email`, with `query` (such as `?redirect_to=…`) on the path.
    pub async fn recover_reply(&self, query: &str, email: &str) -> Reply {
        let path = format!("/auth/v1/recover{query}");
        self.post(&path, None, json!({ "email": email })).await
    }

    /// Asks for another mail of this `type` to `email`.
    pub async fn resend(&self, kind: &str, email: &str) -> Reply {
        let body = json!({ "type": kind, "email": email });
        self.post("/auth/v1/resend", None, body).await
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

    /// Opens the newest link mailed to `to`; returns where it redirects.
    pub async fn open_latest_link(&self, to: &str) -> String {
        self.open_link(&self.latest_link(to).await).await
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

    /// Every non-null cell of every row of these tables, one a line.
    pub async fn dump_tables(&self, tables: &[&str]) -> String {
        let mut dump = String::new();
        for table in tables {
            for row in self.raw_rows(&format!("SELECT * FROM {table}")).await {
                for cell in row.into_iter().flatten() {
                    dump.push_str(&cell);
                    dump.push('\n');
                }
            }
        }
        dump
    }
}

impl TestApp {
    /// Opens the change feed as `session` from now on, once its replay is done.
    pub async fn ready_stream(&self, session: &Value) -> Feed {
        let mut feed = self.stream(access_token(session), None).await;
        feed.ready().await;
        feed
    }

    /// Opens the change feed as the session of `token`, resuming after `last_event_id`.
    pub async fn stream(&self, token: &str, last_event_id: Option<i64>) -> Feed {
        let mut req = self.request(Method::GET, "/realtime/v1/sse", Some(token));
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id.to_string());
        }
        let response = req.send().await.unwrap();
        Feed::open(response)
    }

    /// Pushes setting changes from the session of `token`.
    pub async fn push(&self, token: &str, mutation_id: &str, changes: Value) -> Reply {
        self.post(
            "/rest/v1/rpc/push_settings",
            Some(token),
            json!({ "mutation_id": mutation_id, "changes": changes }),
        )
        .await
    }
}

/// An HLC stamp `ms` milliseconds after the app clock's now (text form).
pub fn hlc_at(app: &TestApp, offset_ms: i64, counter: u32) -> String {
    let now = lockstep_cloud::clock::to_millis(lockstep_cloud::clock::Clock::now(&app.clock));
    format!("{:015}-{:010}", now + offset_ms, counter)
}

/// A server-sent event stream, read event by event.
pub struct Feed {
    events: std::pin::Pin<
        Box<
            dyn futures::Stream<
                    Item = Result<
                        eventsource_stream::Event,
                        eventsource_stream::EventStreamError<reqwest::Error>,
                    >,
                > + Send,
        >,
    >,
}

impl std::fmt::Debug for Feed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Feed")
    }
}

/// How long a test waits for an event before it fails (a bound, not a performance claim).
pub const EVENT_WAIT: std::time::Duration = std::time::Duration::from_secs(15);

impl Feed {
    /// Reads an SSE response.
    pub fn open(response: reqwest::Response) -> Feed {
        use eventsource_stream::Eventsource;
        assert_eq!(response.status(), StatusCode::OK, "the stream opens");
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        Feed {
            events: Box::pin(response.bytes_stream().eventsource()),
        }
    }

    /// The next event, or None when the stream ended.
    pub async fn next(&mut self) -> Option<eventsource_stream::Event> {
        use futures::StreamExt;
        match tokio::time::timeout(EVENT_WAIT, self.events.next()).await {
            Ok(Some(Ok(event))) => Some(event),
            Ok(Some(Err(e))) => panic!("stream failed: {e}"),
            Ok(None) => None,
            Err(_) => panic!("no event within {EVENT_WAIT:?}"),
        }
    }

    /// The next event of the given type, skipping others (e.g. `ready`).
    pub async fn next_of(&mut self, event: &str) -> eventsource_stream::Event {
        loop {
            let next = self
                .next()
                .await
                .unwrap_or_else(|| panic!("stream ended before a {event} event"));
            if next.event == event {
                return next;
            }
        }
    }

    /// The data of the next change event, with its id checked against `seq`.
    pub async fn next_change(&mut self) -> Value {
        let event = self.next_of("change").await;
        let data: Value = serde_json::from_str(&event.data).unwrap();
        assert_eq!(
            event.id,
            data["seq"].to_string(),
            "the SSE id is the sequence number"
        );
        data
    }

    /// Waits for the end of the replay and returns the id it names.
    pub async fn ready(&mut self) -> i64 {
        self.next_of("ready").await.id.parse().unwrap()
    }

    /// Waits for the `session` event that ends the stream and checks its reason.
    pub async fn expect_ended(&mut self, reason: &str) {
        let session = self.next_of("session").await;
        assert_eq!(
            serde_json::from_str::<Value>(&session.data).unwrap()["reason"],
            reason
        );
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

    /// The `retry-after` header, parsed.
    #[track_caller]
    pub fn retry_after<T: std::str::FromStr>(&self) -> T
    where
        T::Err: std::fmt::Debug,
    {
        self.headers["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap()
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

/// Counts answers by (status, error_code): what a burst of concurrent requests got.
/// The parameters in a redirect's fragment.
pub fn fragment(location: &str) -> std::collections::HashMap<String, String> {
    let (_, fragment) = location.split_once('#').expect("a fragment");
    url::form_urlencoded::parse(fragment.as_bytes())
        .into_owned()
        .collect()
}

/// How many answers of a tally had this status and error code.
pub fn count(
    counts: &std::collections::BTreeMap<(u16, String), usize>,
    status: u16,
    error_code: &str,
) -> Option<usize> {
    counts.get(&(status, error_code.to_owned())).copied()
}

/// Asserts how many answers of a tally had each (status, error code).
#[track_caller]
pub fn assert_counts(
    counts: &std::collections::BTreeMap<(u16, String), usize>,
    expected: &[(u16, &str, usize)],
) {
    for &(status, error_code, n) in expected {
        assert_eq!(count(counts, status, error_code), Some(n), "{counts:?}");
    }
}

pub fn tally(replies: &[Reply]) -> std::collections::BTreeMap<(u16, String), usize> {
    let mut counts = std::collections::BTreeMap::new();
    for reply in replies {
        let code = reply.body["error_code"].as_str().unwrap_or("").to_owned();
        *counts.entry((reply.status.as_u16(), code)).or_default() += 1;
    }
    counts
}
