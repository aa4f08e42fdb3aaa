//! Authentication and the gateway layer, in three parts that depend only downward:
//! - `jwt`: validates bearer tokens (HS256 or JWKS keys, refreshed) into a [`Principal`];
//! - `limiter`: the per-caller token buckets;
//! - `node`: how another node of the cluster authenticates to the internal service;
//! - `gate`: the layer every request passes (authenticate, rate-limit, authorize REST routes),
//!   which attaches the [`Principal`] and the `Caller` (`streams.rs`).
//!
//! Who may do what is `policy.rs`; rendering a refusal for the request's protocol is `error.rs`.

mod gate;
mod jwt;
mod limiter;
pub mod node;

pub use gate::{Gate, bearer, gate};
pub use jwt::{AuthError, Authenticator, Verified};
pub use limiter::RateLimiter;

pub use crate::policy::{Action, Principal, Role, authorize, principal_of};
