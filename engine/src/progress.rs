//! Progress events: what the solver reports while a build runs. The terminal views and (later)
//! the daemon's gRPC stream both consume this one channel.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

/// A progress event. Deserializable too: `kiln build --addr` renders the events kilnd sends.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Event {
    /// A vertex began running.
    Started {
        /// Vertex index.
        vertex: usize,
        /// Description.
        name: String,
    },
    /// A vertex was satisfied from the cache.
    Cached {
        /// Vertex index.
        vertex: usize,
        /// Description.
        name: String,
    },
    /// Output of a running step.
    Log {
        /// Vertex index.
        vertex: usize,
        /// 1 = stdout, 2 = stderr.
        stream: u8,
        /// The bytes (lossy UTF-8).
        data: String,
    },
    /// A vertex finished.
    Done {
        /// Vertex index.
        vertex: usize,
        /// Wall time.
        #[serde(serialize_with = "secs", deserialize_with = "from_secs")]
        duration: Duration,
    },
    /// A vertex failed.
    Error {
        /// Vertex index.
        vertex: usize,
        /// Message.
        message: String,
    },
    /// How a RUN step was confined, as the sandbox applied it (capabilities, landlock ABI,
    /// network, masked paths); the provenance records it.
    Confined {
        /// Vertex index.
        vertex: usize,
        /// The sandbox's record.
        confinement: kiln_sandbox::Confinement,
    },
    /// A policy gate decided.
    Policy {
        /// The decision record.
        decision: kiln_policy::Decision,
    },
    /// A build-level phase (exporting, writing layers) began.
    Phase {
        /// Description.
        name: String,
    },
}

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

fn from_secs<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let secs = f64::deserialize(d)?;
    Duration::try_from_secs_f64(secs).map_err(serde::de::Error::custom)
}

/// Sending side; cloning is cheap. Sending never blocks and never fails the build.
#[derive(Debug, Clone)]
pub struct Progress {
    tx: Option<mpsc::UnboundedSender<Event>>,
}

impl Progress {
    /// A channel pair.
    pub fn channel() -> (Self, mpsc::UnboundedReceiver<Event>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Self { tx: Some(tx) }, rx)
    }

    /// A sink that drops everything.
    pub fn discard() -> Self {
        Self { tx: None }
    }

    /// Sends an event (dropped if nobody listens).
    pub fn send(&self, e: Event) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(e);
        }
    }
}
