//! Opening a connection: the byte stream (TCP to the URL's host, or the application's `dial`), TLS for
//! `wss://` (rustls), and the WebSocket upgrade with custom headers, all under one timeout.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::{client_async_tls_with_config, Connector, MaybeTlsStream, WebSocketStream};

use crate::config::Config;
use crate::error::{ConnectError, ConnectErrorKind};

/// A byte stream a connection can run over.
pub(crate) trait Io: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// The byte stream of one connection, whatever opened it.
pub(crate) type BoxedIo = Box<dyn Io>;

/// Opens the byte stream of one connection attempt (see `ClientBuilder::dial`).
pub(crate) type Dial =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = io::Result<BoxedIo>> + Send>> + Send + Sync>;

/// The socket of one connection.
pub(crate) type Socket = WebSocketStream<MaybeTlsStream<BoxedIo>>;

/// Opens one connection; the caller runs the Hello and everything after.
pub(crate) async fn open(config: &Config) -> Result<Socket, ConnectError> {
    let attempt = async {
        let request = config.request()?;
        let stream = match &config.dial {
            Some(dial) => dial().await,
            None => tcp(&config.host, config.port).await,
        }
        .map_err(|e| ConnectError::with_source(ConnectErrorKind::Io, e))?;
        let connector = match &config.tls {
            Some(tls) => Connector::Rustls(tls.clone()),
            None => Connector::Plain,
        };
        let ws_config = Some(config.websocket_config());
        let (socket, _response) =
            client_async_tls_with_config(request, stream, ws_config, Some(connector))
                .await
                .map_err(classify)?;
        Ok(socket)
    };
    match tokio::time::timeout(config.connect_timeout, attempt).await {
        Err(_) => Err(ConnectError::new(ConnectErrorKind::Timeout {
            after: config.connect_timeout,
        })),
        Ok(result) => result,
    }
}

async fn tcp(host: &str, port: u16) -> io::Result<BoxedIo> {
    let stream = TcpStream::connect((host, port)).await?;
    stream.set_nodelay(true)?;
    Ok(Box::new(stream))
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
fn is_tls(io: &io::Error) -> bool {
    io.get_ref()
        .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some())
}
