//! Waiting for the operator to stop a binary: Ctrl-C (SIGINT), SIGTERM, or SIGHUP (its
//! terminal closed).

use std::future::Future;

/// Resolves when the process receives SIGINT, SIGTERM or SIGHUP (on non-Unix: Ctrl-C only),
/// listening from this call on rather than from the first poll: a binary that calls it first
/// is stopped by its stop signals however early they come, and can stop what it started —
/// with the default disposition a `make down` during `make up`'s start, or a closed terminal,
/// ended `weauth-stack` at once, the processes it had started left running. Must be called
/// within a Tokio runtime.
///
/// If a handler cannot be installed, that signal is simply not waited for; the others still
/// work (and the default disposition still ends the process).
pub fn terminated() -> impl Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, Signal, SignalKind};
        let mut interrupt = signal(SignalKind::interrupt()).ok();
        let mut terminate = signal(SignalKind::terminate()).ok();
        let mut hangup = signal(SignalKind::hangup()).ok();
        async fn received(signal: &mut Option<Signal>) {
            match signal {
                Some(signal) => {
                    signal.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        async move {
            tokio::select! {
                () = received(&mut interrupt) => {}
                () = received(&mut terminate) => {}
                () = received(&mut hangup) => {}
            }
        }
    }
    #[cfg(not(unix))]
    async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
