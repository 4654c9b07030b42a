//! [`Dispatcher`]: sends from a service that is not a gateway (no node, no sessions, no subscriptions).

use std::future::Future;
use std::sync::Arc;

use mesa_engine::{
    BoxFuture, Delivery, DeliveryClass, EncodedFrame, EngineError, Health, Publication, Target,
};
use mesa_protocol::Frame;
use redis::RedisResult;

use crate::backend::PushHandler;
use crate::config::RedisConfig;
use crate::gateway::config_streams;
use crate::link::{Connections, Hooks, Link};
use crate::metrics::RedisMetricsSnapshot;
use crate::publisher::Publisher;
use crate::routing;
use crate::streams::Streams;

/// What a [`Dispatcher`] can send: a frame (encoded once here) or an already encoded one.
pub trait Dispatchable {
    /// The frame's bytes, as clients receive them.
    fn encoded(&self) -> EncodedFrame;

    /// Whether it may be stored for offline users (Mesa 1.5 sync). Default [`DeliveryClass::Durable`].
    fn class(&self) -> DeliveryClass {
        DeliveryClass::Durable
    }
}

/// A frame's `o` (Mesa 1.5 message options) is read, never sent: `o.sync: false` is
/// [`DeliveryClass::Volatile`].
impl Dispatchable for Frame {
    fn encoded(&self) -> EncodedFrame {
        if self.o.is_none() {
            return EncodedFrame::from(self.encode());
        }
        let mut bare = self.clone();
        bare.o = None;
        EncodedFrame::from(bare.encode())
    }

    fn class(&self) -> DeliveryClass {
        let sync = self
            .o
            .as_ref()
            .and_then(|o| o.get("sync"))
            .and_then(|s| s.as_bool());
        if sync == Some(false) {
            DeliveryClass::Volatile
        } else {
            DeliveryClass::Durable
        }
    }
}

impl Dispatchable for EncodedFrame {
    fn encoded(&self) -> EncodedFrame {
        self.clone()
    }
}

/// Sends to the users, connections or everyone of a gateway from any service, through Redis (Mesa 1.5's
/// `Dispatcher`, on this engine's channels). It takes the engine's publish path: the same routing, the
/// same envelope, one ordered queue, the same timeout; it has no node, so nothing is delivered locally and
/// every node holding a recipient receives it from Redis. With
/// [`mesa15_compat`](crate::RedisConfig::mesa15_compat) it publishes in Mesa 1.5's format, as a 1.5
/// `Dispatcher` with sync on does (1.5 nodes receive it too, and sends to offline users are stored).
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use mesa_redis::{Dispatcher, RedisConfig};
/// use mesa_protocol::Frame;
/// use mesa_engine::Target;
/// let dispatcher = Dispatcher::connect(RedisConfig::from_url("redis://127.0.0.1")?)?;
/// let frame = Frame::dispatch("NOTICE", serde_json::json!({"text": "maintenance at noon"}));
/// let delivery = dispatcher.send(&frame, &Target::all()).await?;
/// println!("handed to {} node(s)", delivery.nodes);
/// # Ok(()) }
/// ```
pub struct Dispatcher {
    link: Arc<Link>,
    publisher: Publisher,
    /// With [`RedisConfig::sessions`]: durable sends to users are appended to their streams.
    streams: Option<Streams>,
}

struct NoSubscriptions;

impl Hooks for NoSubscriptions {
    fn subscriber(&self, _generation: u64) -> Option<PushHandler> {
        None
    }

    fn connected<'a>(&'a self, _: &'a Arc<Connections>) -> BoxFuture<'a, RedisResult<()>> {
        Box::pin(std::future::ready(Ok(())))
    }
}

impl Dispatcher {
    /// Starts connecting on the current Tokio runtime. Fails only on an invalid configuration (or outside a
    /// runtime); sends made before the first connection wait for it within `publish_timeout`.
    pub fn connect(config: RedisConfig) -> Result<Dispatcher, EngineError> {
        config
            .validate()
            .map_err(|e| EngineError::Backend(format!("invalid Redis configuration: {e}")))?;
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(EngineError::Backend(
                "the Dispatcher must be started within a Tokio runtime".into(),
            ));
        }
        let link = Link::new(config);
        tokio::spawn(link.clone().supervise(Arc::new(NoSubscriptions)));
        let streams = config_streams(&link.config);
        Ok(Dispatcher {
            publisher: Publisher::start(link.clone()),
            link,
            streams,
        })
    }

    /// Sends `frame` to `target`. Queued when called (sends keep the order of the calls); `Ok` once Redis
    /// accepted it, with `nodes` = the subscribers Redis reported (a node holding two recipient users
    /// counts twice); `Err` when Redis cannot be reached or does not accept it within `publish_timeout`.
    pub fn send<F: Dispatchable + ?Sized>(
        &self,
        frame: &F,
        target: &Target,
    ) -> impl Future<Output = Result<Delivery, EngineError>> + Send + 'static {
        self.publish(
            Publication::send(None, target.clone(), frame.encoded()).with_class(frame.class()),
        )
    }

    /// Closes every session `target` names, on every node, with `code` and `reason`.
    pub fn disconnect(
        &self,
        target: &Target,
        code: u16,
        reason: &str,
    ) -> impl Future<Output = Result<Delivery, EngineError>> + Send + 'static {
        self.publish(Publication::disconnect(None, target.clone(), code, reason))
    }

    fn publish(
        &self,
        publication: Publication,
    ) -> impl Future<Output = Result<Delivery, EngineError>> + Send + 'static {
        let route = routing::route(
            &self.link.keys,
            &publication,
            None,
            |_| false,
            self.link.config.mesa15_compat,
            self.streams.as_ref(),
        );
        let pending = route.map(|route| self.publisher.submit(route.sends));
        async move {
            let counts = pending?.await?;
            let mut delivery = Delivery::default();
            delivery.nodes = counts
                .iter()
                .map(|n| usize::try_from(*n).unwrap_or(0))
                .sum();
            Ok(delivery)
        }
    }

    /// Whether Redis is reachable now.
    pub fn health(&self) -> Health {
        self.link.health()
    }

    /// Its counters.
    pub fn metrics(&self) -> RedisMetricsSnapshot {
        self.link.metrics.snapshot()
    }
}

impl Drop for Dispatcher {
    fn drop(&mut self) {
        self.link.shutdown.cancel();
    }
}
