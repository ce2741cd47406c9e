//! The accept loop: HTTP/1.1 connections with bounded lifetimes, per-IP and total connection
//! caps, calm behaviour when descriptors run out, and a graceful shutdown with a deadline.
//!
//! - Request headers must arrive within `header_timeout`; the same limit closes a keep-alive
//!   connection that sits idle between requests. A request body must arrive within
//!   `body_timeout` (a 408 otherwise).
//! - One client IP holds at most `max_connections_per_ip` connections, the node at most
//!   `max_connections`; past either, a new connection is closed at once.
//! - When `accept` fails for lack of descriptors (EMFILE, ENFILE) or memory, the loop pauses
//!   briefly and goes on: it never spins, and it serves again as soon as sockets free up.
//! - [`listen`] opens the listening socket with a backlog of [`LISTEN_BACKLOG`], so a storm of
//!   connects (thousands of streams reconnecting after a restart) waits in the kernel's queue
//!   instead of having its SYNs dropped and retransmitted a second later.
//! - On shutdown it stops accepting, tells open change streams to end (`event: session`,
//!   `{"reason":"server_shutdown"}`; clients reconnect with `Last-Event-ID`), lets requests
//!   in flight and the work they handed off ([`crate::deferred`]) finish, and returns after at most `shutdown_grace`. Every write is one database
//!   transaction, so a request cut at the deadline is committed or not at all.

use std::{
    collections::HashMap,
    future::Future,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::extract::ConnectInfo;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
    service::TowerToHyperService,
};
use tower::ServiceExt;

use crate::{AppState, router};

/// How many connections the kernel queues for [`listen`]'s socket before `accept` takes them.
/// `std` and tokio's `TcpListener::bind` ask for 128, which a storm of reconnecting streams
/// overflows (each dropped SYN costs its client a one-second retransmit). Linux caps it at
/// `net.core.somaxconn` (4096 by default since 5.4).
pub const LISTEN_BACKLOG: u32 = 1024;

/// Opens the server's listening socket on `addr` (port 0: any free port) with a backlog of
/// [`LISTEN_BACKLOG`]. Like `std`, it sets `SO_REUSEADDR` on Unix, so a restarted server can
/// bind its port again while old connections linger in `TIME_WAIT`. Call it on a tokio runtime.
pub fn listen(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Serves until the listener is dropped with the future.
pub async fn serve(listener: tokio::net::TcpListener, state: AppState) -> std::io::Result<()> {
    serve_until(listener, state, std::future::pending()).await
}

/// Serves until `shutdown` completes, then shuts down gracefully (see the module docs).
pub async fn serve_until(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let config = &state.config;
    let header_timeout = Duration::from_secs(config.header_timeout_seconds);
    let grace = Duration::from_secs(config.shutdown_grace_seconds);
    let slots = Slots::new(config.max_connections_per_ip, config.max_connections);
    let app = router(state.clone());
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    pause_after(&error).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Some(slot) = slots.take(peer.ip()) else {
            tracing::debug!(ip = %peer.ip(), "connection refused: too many open connections");
            continue; // dropping the stream closes it
        };
        let _ = stream.set_nodelay(true);
        let service =
            app.clone()
                .map_request(move |mut request: hyper::Request<hyper::body::Incoming>| {
                    request
                        .extensions_mut()
                        .insert(ConnectInfo::<SocketAddr>(peer));
                    request.map(axum::body::Body::new)
                });
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(Some(header_timeout))
            .keep_alive(true)
            .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    tracing::info!("shutting down: no new connections; ending streams");
    state.shut_down();
    let drained = async {
        graceful.shutdown().await;
        state.deferred.settled().await;
    };
    if tokio::time::timeout(grace, drained).await.is_err() {
        tracing::warn!(
            grace_seconds = grace.as_secs(),
            "connections or deferred mail still pending after the grace period; stopping anyway"
        );
    }
    Ok(())
}

/// After a failed `accept`: descriptors or memory ran out (wait for some to free, without
/// spinning), or one connection failed before we saw it (go on at once).
async fn pause_after(error: &std::io::Error) {
    // EMFILE 24, ENFILE 23, ENOBUFS 105, ENOMEM 12 (Linux; the same class elsewhere).
    let exhausted = matches!(error.raw_os_error(), Some(23 | 24 | 105 | 12))
        || error.kind() == std::io::ErrorKind::OutOfMemory;
    if exhausted {
        tracing::warn!(%error, "cannot accept connections now (out of descriptors?); retrying shortly");
        tokio::time::sleep(Duration::from_millis(100)).await;
    } else {
        tracing::debug!(%error, "accept failed");
    }
}

/// Open connections, per client IP and in all.
#[derive(Debug, Clone)]
struct Slots {
    inner: Arc<Mutex<SlotCounts>>,
    per_ip: usize,
    total: usize,
}

#[derive(Debug, Default)]
struct SlotCounts {
    by_ip: HashMap<IpAddr, usize>,
    total: usize,
}

/// One open connection; dropping it frees the slot.
#[derive(Debug)]
struct Slot {
    slots: Slots,
    ip: IpAddr,
}

impl Slots {
    fn new(per_ip: u64, total: u64) -> Slots {
        Slots {
            inner: Arc::default(),
            per_ip: usize::try_from(per_ip).unwrap_or(usize::MAX),
            total: usize::try_from(total).unwrap_or(usize::MAX),
        }
    }

    fn take(&self, ip: IpAddr) -> Option<Slot> {
        let mut counts = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let held = counts.by_ip.get(&ip).copied().unwrap_or(0);
        if held >= self.per_ip || counts.total >= self.total {
            return None;
        }
        counts.by_ip.insert(ip, held + 1);
        counts.total += 1;
        Some(Slot {
            slots: self.clone(),
            ip,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.slots.inner.lock().unwrap_or_else(|p| p.into_inner());
        counts.total = counts.total.saturating_sub(1);
        if let Some(held) = counts.by_ip.get_mut(&self.ip) {
            *held -= 1;
            if *held == 0 {
                counts.by_ip.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// More connects than `std`'s backlog of 128, none accepted yet: all of them complete (with
    /// 128 the kernel drops the SYNs past the queue and the connects hang).
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_connect_storm_waits_in_the_listen_queue() {
        // The kernel caps every backlog at this (128 before Linux 5.4).
        let cap = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .ok()
            .and_then(|text| text.trim().parse::<u32>().ok());
        if cap.is_none_or(|cap| cap < 1024) {
            eprintln!("skipped: net.core.somaxconn is {cap:?}, below the backlog asked for");
            return;
        }
        let listener = listen(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
        let addr = listener.local_addr().unwrap();
        let connects = (0..600).map(|_| tokio::net::TcpStream::connect(addr));
        let connected = tokio::time::timeout(
            Duration::from_secs(15),
            futures::future::try_join_all(connects),
        )
        .await
        .expect("every connect is queued, none dropped")
        .unwrap();
        assert_eq!(connected.len(), 600);
        drop(listener);
    }

    #[test]
    fn an_ipv6_address_gets_an_ipv6_socket() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .unwrap();
        let _guard = runtime.enter();
        let Ok(listener) = listen("[::1]:0".parse().unwrap()) else {
            return; // no IPv6 loopback on this machine
        };
        assert!(listener.local_addr().unwrap().is_ipv6());
    }

    #[test]
    fn slots_cap_each_ip_and_the_total_and_free_on_drop() {
        let slots = Slots::new(2, 3);
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let a1 = slots.take(a).expect("first");
        let _a2 = slots.take(a).expect("second");
        assert!(slots.take(a).is_none(), "per-ip cap");
        let _b1 = slots.take(b).expect("another ip");
        assert!(slots.take(b).is_none(), "total cap");
        drop(a1);
        assert!(slots.take(b).is_some(), "a freed slot is reusable");
    }
}
