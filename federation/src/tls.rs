//! The federation listener: TLS (rustls) in front of the federation router.

use std::{future::Future, sync::Arc, time::Duration};

use axum_server::{Handle, accept::NoDelayAcceptor, tls_rustls::RustlsConfig};

use crate::{FedError, Federation, routes::router};

/// Binds the listener and loads its certificate (so a bad one stops start-up
/// with a clear error); the returned future serves until `shutdown`
/// resolves, then drains for a few seconds.
pub async fn bind(
    fed: Arc<Federation>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<impl Future<Output = Result<(), FedError>>, FedError> {
    let (Some(listen), Some(cert), Some(key)) = (
        fed.config.listen,
        fed.config.tls_cert.clone(),
        fed.config.tls_key.clone(),
    ) else {
        return Err(FedError::Config(
            "federation needs listen, tls_cert and tls_key".into(),
        ));
    };
    let tls = RustlsConfig::from_pem_file(&cert, &key)
        .await
        .map_err(|e| {
            FedError::Config(format!(
                "TLS certificate {} / key {}: {e}",
                cert.display(),
                key.display()
            ))
        })?;
    let listener = std::net::TcpListener::bind(listen)
        .map_err(|e| FedError::Config(format!("binding the federation listener {listen}: {e}")))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| FedError::Config(e.to_string()))?;
    // TCP_NODELAY on every accepted socket (before the TLS handshake): small
    // responses written back to back must not wait for the peer's delayed ACK.
    let server = axum_server::from_tcp_rustls(listener, tls)
        .map_err(|e| FedError::Config(format!("federation listener {listen}: {e}")))?
        .map(|tls| tls.acceptor(NoDelayAcceptor::new()));
    let handle = Handle::new();
    fed.hearth.tasks.spawn({
        let handle = handle.clone();
        async move {
            shutdown.await;
            handle.graceful_shutdown(Some(Duration::from_secs(5)));
        }
    });
    tracing::info!(%listen, "federation listening (TLS)");
    Ok(async move {
        server
            .handle(handle)
            .serve(router(fed).into_make_service())
            .await
            .map_err(|e| FedError::Config(format!("federation listener {listen}: {e}")))
    })
}
