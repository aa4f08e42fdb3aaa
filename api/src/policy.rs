//! Who may do what: the one authorization table of the node. Every interface (REST, GraphQL,
//! WebSocket, gRPC) names the [`Action`] a request performs and asks [`authorize`], which
//! decides from the caller's roles alone, writes the audit line, and returns the error every
//! interface renders the same way (403 / `PERMISSION_DENIED`, code `permission_denied`).
//!
//! In a cluster a request may be served by the node that owns its user: the entry node carries
//! the caller's principal along (the gate keeps it in [`CALLER`] for the request's duration), and
//! the owner asks this same table again. Work a node does on its own (the push hub recomputing a
//! subscriber's list) is carried as [`Principal::node`], which no token can claim.

use common::{ApiError, ErrorCode};

/// A role, from the token's roles claim. Unknown role names are ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// An end user: only their own `sub`.
    User,
    /// A backend service: any user's recommendations and events, catalog reads.
    Service,
    /// Catalog writes.
    CatalogAdmin,
    /// The console and admin reads, actor actions, training and rollback.
    Operator,
    /// Everything, including GDPR erase and export.
    Admin,
    /// Another node of the cluster, for work of its own (the push hub's recomputes). Never
    /// read from a token: only the internal service grants it, to a caller that authenticated
    /// as a node.
    Node,
}

impl Role {
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "user" => Role::User,
            "service" => Role::Service,
            "catalog-admin" => Role::CatalogAdmin,
            "operator" => Role::Operator,
            "admin" => Role::Admin,
            // `node` is deliberately absent: a token cannot make its bearer a node.
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Service => "service",
            Role::CatalogAdmin => "catalog-admin",
            Role::Operator => "operator",
            Role::Admin => "admin",
            Role::Node => "node",
        }
    }
}

/// The authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// The token's `sub`; `anonymous` when authentication is off.
    pub sub: String,
    pub roles: Vec<Role>,
}

impl Principal {
    /// A caller nothing authenticated: allowed nothing.
    pub fn nobody() -> Self {
        Self {
            sub: String::new(),
            roles: Vec::new(),
        }
    }

    /// The caller when authentication is off: allowed everything.
    pub fn unauthenticated_admin() -> Self {
        Self {
            sub: "anonymous".into(),
            roles: vec![Role::Admin],
        }
    }

    /// A node acting on its own behalf (see [`Role::Node`]).
    pub fn node(node_id: &str) -> Self {
        Self {
            sub: format!("node:{node_id}"),
            roles: vec![Role::Node],
        }
    }

    fn has_any(&self, roles: &[Role]) -> bool {
        self.roles.iter().any(|r| roles.contains(r))
    }
}

/// What a request does, with the user it concerns where that matters.
#[derive(Clone, Copy, Debug)]
pub enum Action<'a> {
    /// A user's recommendations, session, or live pushes.
    ReadUser(&'a str),
    /// Events for these users.
    WriteEvents(&'a [&'a str]),
    /// Events for any user: whoever may need not have a batch read to see whose events it holds.
    WriteAnyEvents,
    /// A user's profile.
    WriteProfile(&'a str),
    /// Items and trending lists.
    ReadCatalog,
    /// Item upserts and deletes.
    WriteCatalog,
    /// The console, the actor tree, model versions.
    AdminRead,
    /// The cluster's shard map (`GET /v1/admin/cluster`): members, addresses, partitions.
    ReadCluster,
    /// Actor stop/restart/passivate, training, activation and rollback.
    AdminWrite,
    /// GDPR erasure of a user.
    EraseUser(&'a str),
    /// GDPR export of a user.
    ExportUser(&'a str),
    /// `/metrics` when `auth.protect_metrics` is set.
    Metrics,
    /// Bulk import of a data set (`items`, `profiles`, `events`).
    Import(&'a str),
    /// Bulk export of a data set; profiles leave decrypted.
    Export(&'a str),
}

impl Action<'_> {
    fn name(&self) -> &'static str {
        match self {
            Action::ReadUser(_) => "read_user",
            Action::WriteEvents(_) | Action::WriteAnyEvents => "write_events",
            Action::WriteProfile(_) => "write_profile",
            Action::ReadCatalog => "read_catalog",
            Action::WriteCatalog => "write_catalog",
            Action::AdminRead => "admin_read",
            Action::ReadCluster => "read_cluster",
            Action::AdminWrite => "admin_write",
            Action::EraseUser(_) => "erase_user",
            Action::ExportUser(_) => "export_user",
            Action::Metrics => "metrics",
            Action::Import(_) => "bulk_import",
            Action::Export(_) => "bulk_export",
        }
    }

    /// Admin actions are audited even when allowed.
    fn is_admin(&self) -> bool {
        matches!(
            self,
            Action::AdminWrite
                | Action::EraseUser(_)
                | Action::ExportUser(_)
                | Action::Import(_)
                | Action::Export(_)
        )
    }
}

/// The table. `User` appears only where the resource is the caller's own.
pub fn permits(principal: &Principal, action: &Action<'_>) -> bool {
    use Role::*;
    let own = |user: &str| principal.roles.contains(&User) && principal.sub == user;
    match action {
        Action::ReadUser(user) => principal.has_any(&[Service, Operator, Admin, Node]) || own(user),
        Action::WriteAnyEvents => principal.has_any(&[Service, Admin]),
        Action::WriteEvents(users) => {
            permits(principal, &Action::WriteAnyEvents)
                || (!users.is_empty() && users.iter().all(|u| own(u)))
        }
        Action::WriteProfile(user) => principal.has_any(&[Service, Admin]) || own(user),
        Action::ReadCatalog => principal.has_any(&[User, Service, CatalogAdmin, Operator, Admin]),
        Action::WriteCatalog => principal.has_any(&[CatalogAdmin, Admin]),
        Action::AdminRead | Action::ReadCluster | Action::AdminWrite | Action::Metrics => {
            principal.has_any(&[Operator, Admin])
        }
        Action::EraseUser(_) | Action::ExportUser(_) => principal.has_any(&[Admin]),
        // The catalogue in bulk is the catalogue's writers'; everyone's profiles (personal
        // data, decrypted on export) and events are the admin's alone.
        Action::Import(dataset) | Action::Export(dataset) => match *dataset {
            "items" => principal.has_any(&[CatalogAdmin, Admin]),
            _ => principal.has_any(&[Admin]),
        },
    }
}

/// Decides, audits, and returns the error to render on denial.
pub fn authorize(
    principal: &Principal,
    action: Action<'_>,
    via: &'static str,
) -> Result<(), ApiError> {
    let allowed = permits(principal, &action);
    if !allowed || action.is_admin() {
        let roles: Vec<&str> = principal.roles.iter().map(|r| r.as_str()).collect();
        tracing::info!(
            target: "audit",
            sub = %principal.sub,
            roles = %roles.join(","),
            action = action.name(),
            via,
            decision = if allowed { "allow" } else { "deny" },
            "access decision"
        );
    }
    if allowed {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::PermissionDenied,
            format!("the caller's roles do not allow {}", action.name()),
        ))
    }
}

tokio::task_local! {
    /// The principal of the request being served, set by the gate once it admitted the
    /// request, so that a request forwarded to another node carries its caller along.
    pub static CALLER: Principal;
}

/// The principal of the request being served, if a gate admitted one on this task.
pub fn caller() -> Option<Principal> {
    CALLER.try_with(Principal::clone).ok()
}

/// Audits a request refused before it had a principal (no, bad or expired token).
pub fn audit_unauthenticated(reason: &str, via: &'static str) {
    tracing::info!(target: "audit", via, reason, decision = "deny", "unauthenticated request");
}

/// The principal the gateway layer attached to a request (the all-allowed one when auth is
/// off; nobody on a route the layer did not cover).
pub fn principal_of(extensions: &axum::http::Extensions) -> Principal {
    extensions
        .get::<Principal>()
        .cloned()
        .unwrap_or_else(Principal::nobody)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(sub: &str, roles: &[Role]) -> Principal {
        Principal {
            sub: sub.into(),
            roles: roles.to_vec(),
        }
    }

    #[test]
    fn users_reach_only_their_own_data() {
        let alice = who("alice", &[Role::User]);
        assert!(permits(&alice, &Action::ReadUser("alice")));
        assert!(!permits(&alice, &Action::ReadUser("bob")));
        assert!(permits(&alice, &Action::WriteEvents(&["alice", "alice"])));
        assert!(!permits(&alice, &Action::WriteEvents(&["alice", "bob"])));
        assert!(!permits(&alice, &Action::WriteEvents(&[])));
        assert!(permits(&alice, &Action::ReadCatalog));
        for action in [
            Action::WriteCatalog,
            Action::AdminRead,
            Action::AdminWrite,
            Action::EraseUser("alice"),
            Action::ExportUser("alice"),
        ] {
            assert!(!permits(&alice, &action), "{action:?}");
        }
    }

    #[test]
    fn each_role_gets_its_share_and_no_more() {
        let service = who("svc", &[Role::Service]);
        assert!(permits(&service, &Action::ReadUser("anyone")));
        assert!(permits(&service, &Action::WriteEvents(&["a", "b"])));
        assert!(permits(&service, &Action::WriteAnyEvents));
        assert!(!permits(
            &who("alice", &[Role::User]),
            &Action::WriteAnyEvents
        ));
        assert!(!permits(&service, &Action::WriteCatalog));
        assert!(!permits(&service, &Action::AdminRead));
        let catalog = who("cat", &[Role::CatalogAdmin]);
        assert!(permits(&catalog, &Action::WriteCatalog));
        assert!(!permits(&catalog, &Action::ReadUser("a")));
        let operator = who("op", &[Role::Operator]);
        assert!(permits(&operator, &Action::AdminWrite));
        assert!(!permits(&operator, &Action::EraseUser("a")));
        assert!(!permits(&operator, &Action::WriteEvents(&["a"])));
        let admin = who("root", &[Role::Admin]);
        assert!(permits(&admin, &Action::EraseUser("a")));
        assert!(permits(&admin, &Action::ExportUser("a")));
        let nobody = who("x", &[]);
        assert!(!permits(&nobody, &Action::ReadCatalog));
        assert!(permits(&operator, &Action::ReadCluster));
        assert!(permits(&admin, &Action::ReadCluster));
        assert!(!permits(&service, &Action::ReadCluster));
    }

    #[test]
    fn bulk_items_are_for_catalogue_writers_and_everything_else_for_admins() {
        let catalog = who("cat", &[Role::CatalogAdmin]);
        let admin = who("root", &[Role::Admin]);
        for action in [Action::Import("items"), Action::Export("items")] {
            assert!(permits(&catalog, &action), "{action:?}");
            assert!(permits(&admin, &action), "{action:?}");
        }
        for dataset in ["profiles", "events", "unknown"] {
            for action in [Action::Import(dataset), Action::Export(dataset)] {
                assert!(permits(&admin, &action), "{action:?}");
                for role in [
                    Role::User,
                    Role::Service,
                    Role::CatalogAdmin,
                    Role::Operator,
                    Role::Node,
                ] {
                    assert!(!permits(&who("x", &[role]), &action), "{role:?} {action:?}");
                }
            }
        }
        for role in [Role::User, Role::Service, Role::Operator, Role::Node] {
            assert!(!permits(&who("x", &[role]), &Action::Import("items")));
            assert!(!permits(&who("x", &[role]), &Action::Export("items")));
        }
    }

    #[test]
    fn a_node_reads_users_for_its_push_hub_and_nothing_more() {
        let node = Principal::node("node-1");
        assert!(permits(&node, &Action::ReadUser("anyone")));
        for action in [
            Action::EraseUser("a"),
            Action::ExportUser("a"),
            Action::WriteAnyEvents,
            Action::WriteCatalog,
            Action::AdminRead,
            Action::ReadCluster,
            Action::ReadCatalog,
        ] {
            assert!(!permits(&node, &action), "{action:?}");
        }
        // No token can claim it.
        assert_eq!(Role::parse("node"), None);
        assert_eq!(Role::Node.as_str(), "node");
    }
}
