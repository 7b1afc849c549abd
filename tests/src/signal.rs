//! Waiting for the operator to stop a binary: Ctrl-C (SIGINT) or SIGTERM.

/// Resolves when the process receives SIGINT or SIGTERM (on non-Unix: Ctrl-C only).
///
/// If a handler cannot be installed, that signal is simply not waited for; the other one
/// still works (and the default disposition still ends the process).
pub async fn terminated() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
