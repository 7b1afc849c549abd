//! A TCP relay on a free loopback port to a server's port, whose connections can be made to go
//! silent ([`Relay::silence`]): what a client sees of a server lost without closing its
//! connections — a dead host, a failover whose address moved (a virtual IP, ProxySQL's
//! backend) — where the connections it had stay open and nothing comes back on them, while a
//! new one reaches a live server.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// The relay; stops accepting when dropped (its connections end with their tasks).
pub struct Relay {
    port: u16,
    /// Connections accepted so far (each is born with its number).
    accepted: Arc<AtomicU64>,
    /// Connections born before this number are silent.
    silenced_before: Arc<AtomicU64>,
    accept: JoinHandle<()>,
}

impl Relay {
    /// Relays `127.0.0.1:<port()>` to `127.0.0.1:<target>`.
    ///
    /// # Errors
    /// No loopback port can be bound.
    pub async fn start(target: u16) -> io::Result<Relay> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let port = listener.local_addr()?.port();
        let silenced_before = Arc::new(AtomicU64::new(0));
        let accepted = Arc::new(AtomicU64::new(0));
        let accept = {
            let (silenced_before, accepted) = (Arc::clone(&silenced_before), Arc::clone(&accepted));
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    let born = accepted.fetch_add(1, Ordering::SeqCst) + 1;
                    let silenced_before = Arc::clone(&silenced_before);
                    tokio::spawn(async move {
                        if let Ok(server) = TcpStream::connect(("127.0.0.1", target)).await {
                            relay(client, server, born, silenced_before).await;
                        }
                    });
                }
            })
        };
        Ok(Relay {
            port,
            accepted,
            silenced_before,
            accept,
        })
    }

    /// The relay's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// From now on nothing passes on the connections accepted so far, either way, and they
    /// are kept open; connections accepted later are relayed as before.
    pub fn silence(&self) {
        let accepted = self.accepted.load(Ordering::SeqCst);
        self.silenced_before.store(accepted + 1, Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn relay(client: TcpStream, server: TcpStream, born: u64, silenced_before: Arc<AtomicU64>) {
    let silent = move || born < silenced_before.load(Ordering::SeqCst);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    tokio::join!(
        pipe(client_read, server_write, silent.clone()),
        pipe(server_read, client_write, silent)
    );
}

/// Copies `from` to `to` until either ends; once `silent()`, swallows what comes and holds both
/// open: a host that no longer answers.
async fn pipe(
    mut from: impl AsyncReadExt + Unpin,
    mut to: impl AsyncWriteExt + Unpin,
    silent: impl Fn() -> bool,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if silent() {
            std::future::pending::<()>().await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
