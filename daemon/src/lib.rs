//! kilnd: kiln's multi-tenant build daemon, and its client.
//!
//! kilnd serves the gRPC API of `proto/kiln/v1/kiln.proto` over TLS 1.3 with client
//! certificates required ([`tls`]); each connection's certificate identity maps to a tenant
//! of `kilnd.toml` ([`config`]), whose policy, cache namespace, limits and entitlements every
//! build of that connection gets ([`server`]). Build contexts travel incrementally
//! ([`context`]): the daemon keeps a copy per tenant and context, and asks only for the files
//! that changed. [`client`] is the other end, used by `kiln build --addr`. [`confine`] is the
//! landlock domain kilnd puts itself in, and why it has no file-system rule.

pub mod admin;
pub mod client;
pub mod config;
pub mod confine;
pub mod context;
pub mod records;
pub mod serve;
pub mod server;
pub mod ssh;
pub mod tls;

/// The generated protobuf messages and gRPC stubs.
#[allow(missing_docs, clippy::all, clippy::pedantic, clippy::unwrap_used)]
pub mod proto {
    tonic::include_proto!("kiln.v1");
}
