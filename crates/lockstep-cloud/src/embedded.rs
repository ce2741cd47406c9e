//! A `lockstep-cloud` running inside another program, on a tokio runtime and an OS thread of
//! its own: for the client's tests and for embedders that want a local server.
//!
//! Because the runtime is its own, [`EmbeddedCloud::kill`] stops the server the hard way (every
//! task and socket dropped at once, open streams cut mid-flight, as when a process dies), and
//! [`EmbeddedCloud::restart`] starts it again on the same address and data directory.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;

use crate::{AppState, Config, clock::SystemClock};

/// Adjusts the configuration before each start (the data dir and address are set already).
pub type Configure = Arc<dyn Fn(&mut Config) + Send + Sync>;

/// A running (or killed) embedded server.
pub struct EmbeddedCloud {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    pub anon_key: String,
    pub addr: SocketAddr,
    data_dir: PathBuf,
    configure: Configure,
    runtime: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for EmbeddedCloud {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedCloud")
            .field("url", &self.url)
            .field("data_dir", &self.data_dir)
            .field("running", &self.runtime.is_some())
            .finish_non_exhaustive()
    }
}

impl Drop for EmbeddedCloud {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts the server on a runtime of its own. Runs on a fresh thread: a runtime cannot be
/// built or blocked on from inside another one.
fn boot(
    data_dir: &Path,
    addr: SocketAddr,
    configure: &Configure,
) -> anyhow::Result<(tokio::runtime::Runtime, SocketAddr, String)> {
    let data_dir = data_dir.to_owned();
    let configure = configure.clone();
    std::thread::spawn(move || -> anyhow::Result<_> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("lockstep-cloud")
            .enable_all()
            .build()?;
        let (addr, anon_key) = runtime.block_on(async {
            let listener = crate::serve::listen(addr)
                .with_context(|| format!("could not listen on {addr}"))?;
            let mut config = Config::for_data_dir(&data_dir);
            config.bind = listener.local_addr()?;
            configure(&mut config);
            let state = AppState::new(config, Arc::new(SystemClock)).await?;
            let addr = state.config.bind;
            let anon_key = state.keys.anon_key.clone();
            tokio::spawn(async move {
                if let Err(error) = crate::serve(listener, state).await {
                    tracing::error!(%error, "the embedded server stopped");
                }
            });
            anyhow::Ok((addr, anon_key))
        })?;
        Ok((runtime, addr, anon_key))
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the embedded server's thread panicked"))?
}

impl EmbeddedCloud {
    /// Starts a server with its data in `data_dir`, on a free port of 127.0.0.1.
    pub fn start(data_dir: &Path, configure: Configure) -> anyhow::Result<EmbeddedCloud> {
        let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
        let (runtime, addr, anon_key) = boot(data_dir, any_port, &configure)?;
        Ok(EmbeddedCloud {
            url: format!("http://{addr}"),
            anon_key,
            addr,
            data_dir: data_dir.to_owned(),
            configure,
            runtime: Some(runtime),
        })
    }

    /// The server's data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The first link of the newest message mailed to `to` (kept in the data directory, as mail
    /// is without SMTP), for a test to open as the recipient would.
    pub fn newest_link(&self, to: &str) -> anyhow::Result<String> {
        let mail = crate::mail::read_mail_dir(&self.data_dir.join("mail"), Some(to))?;
        mail.iter()
            .find_map(|message| message.links.first().cloned())
            .with_context(|| format!("no link was mailed to {to}"))
    }

    /// The messages mailed to `to` (kept in the data directory, as mail is without SMTP),
    /// newest first.
    pub fn mail_to(&self, to: &str) -> anyhow::Result<Vec<crate::mail::OutgoingMail>> {
        crate::mail::read_mail_dir(&self.data_dir.join("mail"), Some(to))
    }

    /// The code of the newest message mailed to `to` that carries one (confirmation, email
    /// change, password reset): what the recipient types into the app instead of opening
    /// the link.
    pub fn newest_code(&self, to: &str) -> anyhow::Result<String> {
        self.mail_to(to)?
            .iter()
            .find_map(|message| crate::mail::code_in(&message.text))
            .with_context(|| format!("no code was mailed to {to}"))
    }

    /// Stops the server at once, as if its process died.
    pub fn kill(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }

    /// Starts the server again on the same address and data (the database and keys survive).
    /// Retries for up to 10 s while the port is still held by the old sockets.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match boot(&self.data_dir, self.addr, &self.configure) {
                Ok((runtime, _, _)) => {
                    self.runtime = Some(runtime);
                    return Ok(());
                }
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                Err(error) => return Err(error),
            }
        }
    }
}
