//! Opening a connection: TCP, TLS for `wss://` (rustls), and the WebSocket upgrade with custom headers,
//! all under one timeout.

use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::{
    connect_async_tls_with_config, Connector, MaybeTlsStream, WebSocketStream,
};

use crate::config::Config;
use crate::error::{ConnectError, ConnectErrorKind};

/// The socket of one connection.
pub(crate) type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Opens one connection; the caller runs the Hello and everything after.
pub(crate) async fn open(config: &Config) -> Result<Socket, ConnectError> {
    let request = config.request()?;
    let connector = match &config.tls {
        Some(tls) => Connector::Rustls(tls.clone()),
        None => Connector::Plain,
    };
    let attempt = connect_async_tls_with_config(
        request,
        Some(config.websocket_config()),
        true,
        Some(connector),
    );
    match tokio::time::timeout(config.connect_timeout, attempt).await {
        Err(_) => Err(ConnectError::new(ConnectErrorKind::Timeout {
            after: config.connect_timeout,
        })),
        Ok(Err(error)) => Err(classify(error)),
        Ok(Ok((socket, _response))) => Ok(socket),
    }
}

fn classify(error: WsError) -> ConnectError {
    let kind = match &error {
        WsError::Http(response) => ConnectErrorKind::Rejected {
            status: response.status().as_u16(),
        },
        WsError::Io(io) if is_tls(io) => ConnectErrorKind::Tls,
        WsError::Io(_) | WsError::ConnectionClosed | WsError::AlreadyClosed => ConnectErrorKind::Io,
        WsError::Tls(_) => ConnectErrorKind::Tls,
        WsError::Url(_) => ConnectErrorKind::InvalidUrl,
        _ => ConnectErrorKind::Handshake,
    };
    ConnectError::with_source(kind, error)
}

/// tokio-rustls reports handshake failures (bad certificate, unknown issuer) as I/O errors wrapping a
/// `rustls::Error`.
fn is_tls(io: &std::io::Error) -> bool {
    io.get_ref()
        .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some())
}
