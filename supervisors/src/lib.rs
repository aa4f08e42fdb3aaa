//! Supervision trees and the node that runs them.
//!
//! [`Supervisor`] is the one supervisor implementation: it starts children from factories
//! ([`ChildSpec`]), restarts a failed child after an exponential backoff, kills and restarts a
//! child stuck in one message past its limit ([`heartbeat`]), counts panics, errors and kills
//! apart, and escalates (fails itself, so that its own parent decides) when a child fails too
//! often. Its [`RestartPolicy`] and the limits come from `[supervision]` in the configuration.
//! [`Node`] builds the stores and the tree:
//!
//! ```text
//! root ─┬─ push            PushHub
//!       ├─ sessions        SessionManager ── session × live users
//!       ├─ models          Supervisor ── model-0 .. model-N
//!       ├─ ingest          Supervisor ── ingest-0 .. ingest-P
//!       ├─ trainer         TrainerActor
//!       ├─ archiver        ArchiverActor
//!       ├─ retention       RetentionActor
//!       └─ snapshotter     SnapshotActor
//! ```
//!
//! [`restore`] rebuilds a lost node's data dir from its snapshots and the archive.

pub mod backoff;
pub mod heartbeat;
pub mod node;
pub mod restore;
pub mod supervisor;

pub use backoff::RestartPolicy;
pub use node::{Node, Subscription};
pub use storage::snapshot::Manifest as SnapshotManifest;
pub use supervisor::{ChildSpec, Parent, Supervisor, SupervisorArgs, SupervisorMsg};
