//! Who may do what: the roles, the permissions each holds, and the one table (`OPERATIONS`) that
//! names the permission and the target of every API operation. Pure: the API's authorisation
//! layer asks `decide` with the caller and the operation, and nothing else decides.
//!
//! A token may also carry a scope: stack name patterns (`shop`, `shop-*`). A scoped caller acts
//! only on stacks its scope names, sees only those in listings, and is refused every operation
//! on the cluster as a whole (nodes, join tokens, the audit trail, tokens and users).

use wharf_types::Role;

/// Whether `role` holds `p`.
pub fn allows(role: Role, p: Permission) -> bool {
    use Permission::*;
    match role {
        Role::Admin => true,
        Role::Operator => !matches!(p, ManageAccess),
        Role::Deployer => matches!(p, Read | ReadLogs | Deploy | Operate | Exec),
        Role::Viewer => matches!(p, Read | ReadLogs),
    }
}

/// What an operation needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Permission {
    /// Read the state of stacks, services, deployments and nodes.
    Read,
    /// Read the output of instances.
    ReadLogs,
    /// Deploy or update a stack (and preview the change).
    Deploy,
    /// Scale, restart, roll back and rebalance services.
    Operate,
    /// Run commands in instances (`wharf service exec`): whatever the instance can do.
    Exec,
    /// Remove a stack.
    RemoveStack,
    /// Label, drain, activate and remove nodes; make join tokens for new ones.
    ManageNodes,
    /// Read the audit trail.
    ReadAudit,
    /// Create, list and revoke API tokens; add, list and remove users.
    ManageAccess,
    /// Create, update and remove secrets (their values are never read back).
    ManageSecrets,
    /// Collect the registry's garbage (blobs no manifest refers to).
    ManageRegistry,
}

impl Permission {
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::Read => "read",
            Permission::ReadLogs => "read_logs",
            Permission::Deploy => "deploy",
            Permission::Operate => "operate",
            Permission::Exec => "exec",
            Permission::RemoveStack => "remove_stack",
            Permission::ManageNodes => "manage_nodes",
            Permission::ReadAudit => "read_audit",
            Permission::ManageAccess => "manage_access",
            Permission::ManageSecrets => "manage_secrets",
            Permission::ManageRegistry => "manage_registry",
        }
    }
}

/// What an operation acts on, for the scope check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// Nothing in particular (the version, the API document): any authenticated caller.
    Open,
    /// The stack named by the `{stack}` path parameter.
    Stack,
    /// A listing: allowed to every scope; the handler leaves out what the scope does not name.
    Listing,
    /// A deployment: the handler checks the deployment's stack against the scope.
    Deployment,
    /// The cluster as a whole: refused to scoped callers.
    Cluster,
    /// Served without a token (outside the authenticated routes).
    Public,
}

/// One row of the policy: an operation (method and route as the router declares it), what it
/// needs and what it acts on.
#[derive(Clone, Copy, Debug)]
pub struct Operation {
    pub method: &'static str,
    pub path: &'static str,
    pub needs: Option<Permission>,
    pub target: Target,
}

const fn op(
    method: &'static str,
    path: &'static str,
    needs: Option<Permission>,
    target: Target,
) -> Operation {
    Operation {
        method,
        path,
        needs,
        target,
    }
}

use Permission::*;
use Target::*;

/// Every operation of the API. An operation that is not here is refused to everybody (the
/// authorisation layer fails closed), and the role matrix test fails for it.
pub const OPERATIONS: &[Operation] = &[
    op("GET", "/v1/version", None, Open),
    op("GET", "/v1/openapi.json", None, Open),
    op("GET", "/v1/stacks", Some(Read), Listing),
    op("GET", "/v1/stacks/{stack}", Some(Read), Stack),
    op("PUT", "/v1/stacks/{stack}", Some(Deploy), Stack),
    op("DELETE", "/v1/stacks/{stack}", Some(RemoveStack), Stack),
    op("POST", "/v1/stacks/{stack}/diff", Some(Deploy), Stack),
    op("GET", "/v1/stacks/{stack}/instances", Some(Read), Stack),
    op("GET", "/v1/services", Some(Read), Listing),
    op("GET", "/v1/services/{stack}/{service}", Some(Read), Stack),
    op(
        "GET",
        "/v1/services/{stack}/{service}/instances",
        Some(Read),
        Stack,
    ),
    op(
        "POST",
        "/v1/services/{stack}/{service}/scale",
        Some(Operate),
        Stack,
    ),
    op(
        "POST",
        "/v1/services/{stack}/{service}/restart",
        Some(Operate),
        Stack,
    ),
    op(
        "POST",
        "/v1/services/{stack}/{service}/rollback",
        Some(Operate),
        Stack,
    ),
    op(
        "POST",
        "/v1/services/{stack}/{service}/rebalance",
        Some(Operate),
        Stack,
    ),
    op(
        "POST",
        "/v1/services/{stack}/{service}/update",
        Some(Operate),
        Stack,
    ),
    op(
        "GET",
        "/v1/services/{stack}/{service}/history",
        Some(Read),
        Stack,
    ),
    op(
        "GET",
        "/v1/services/{stack}/{service}/logs",
        Some(ReadLogs),
        Stack,
    ),
    op("GET", "/v1/jobs", Some(Read), Listing),
    op("GET", "/v1/jobs/{stack}/{service}", Some(Read), Stack),
    op(
        "POST",
        "/v1/jobs/{stack}/{service}/run",
        Some(Operate),
        Stack,
    ),
    op(
        "GET",
        "/v1/services/{stack}/{service}/exec",
        Some(Exec),
        Stack,
    ),
    op(
        "GET",
        "/v1/services/{stack}/{service}/stats",
        Some(Read),
        Stack,
    ),
    // Every reader; the handler leaves out the stacks the scope does not name.
    op("GET", "/v1/stats", Some(Read), Listing),
    op("GET", "/v1/deployments", Some(Read), Listing),
    op("GET", "/v1/events", Some(Read), Listing),
    op("GET", "/v1/deployments/{id}", Some(Read), Deployment),
    op("GET", "/v1/nodes", Some(Read), Cluster),
    op("GET", "/v1/masters", Some(Read), Cluster),
    op("GET", "/v1/nodes/{node}", Some(Read), Cluster),
    op("DELETE", "/v1/nodes/{node}", Some(ManageNodes), Cluster),
    op(
        "POST",
        "/v1/nodes/{node}/labels",
        Some(ManageNodes),
        Cluster,
    ),
    op("POST", "/v1/nodes/{node}/drain", Some(ManageNodes), Cluster),
    op(
        "POST",
        "/v1/nodes/{node}/rotate-keys",
        Some(ManageNodes),
        Cluster,
    ),
    op(
        "POST",
        "/v1/nodes/{node}/activate",
        Some(ManageNodes),
        Cluster,
    ),
    op("POST", "/v1/join-tokens", Some(ManageNodes), Cluster),
    op("GET", "/v1/audit", Some(ReadAudit), Cluster),
    op("GET", "/v1/audit/verify", Some(ReadAudit), Cluster),
    op("GET", "/v1/tokens", Some(ManageAccess), Cluster),
    op("POST", "/v1/tokens", Some(ManageAccess), Cluster),
    op("DELETE", "/v1/tokens/{name}", Some(ManageAccess), Cluster),
    op("GET", "/v1/users", Some(ManageAccess), Cluster),
    op("POST", "/v1/users", Some(ManageAccess), Cluster),
    op("DELETE", "/v1/users/{name}", Some(ManageAccess), Cluster),
    op(
        "POST",
        "/v1/users/{name}/password",
        Some(ManageAccess),
        Cluster,
    ),
    op("POST", "/v1/me/password", None, Open),
    op("POST", "/v1/keys/rotate", Some(ManageAccess), Cluster),
    // Every reader, scoped or not: a deployer needs to know what its stacks may ask for.
    op("GET", "/v1/policy", Some(Read), Open),
    op("GET", "/v1/scan/db", Some(Read), Open),
    op("POST", "/v1/scan/db", Some(ManageAccess), Cluster),
    // Costs a node an export of the image: deployers, not viewers.
    op("POST", "/v1/images/scan", Some(Deploy), Open),
    op("GET", "/v1/images", Some(Read), Listing),
    op("GET", "/v1/secrets", Some(Read), Cluster),
    op("GET", "/v1/secrets/{name}", Some(Read), Cluster),
    op("PUT", "/v1/secrets/{name}", Some(ManageSecrets), Cluster),
    op("DELETE", "/v1/secrets/{name}", Some(ManageSecrets), Cluster),
    op("GET", "/v1/configs", Some(Read), Cluster),
    op("GET", "/v1/configs/{name}", Some(Read), Cluster),
    op("PUT", "/v1/configs/{name}", Some(ManageSecrets), Cluster),
    op("DELETE", "/v1/configs/{name}", Some(ManageSecrets), Cluster),
    // Webhooks: a hook deploys a stack or sends the cluster's events away, as a token would.
    op("GET", "/v1/hooks", Some(ManageAccess), Cluster),
    op("POST", "/v1/hooks", Some(ManageAccess), Cluster),
    op("DELETE", "/v1/hooks/{id}", Some(ManageAccess), Cluster),
    op(
        "GET",
        "/v1/hooks/{id}/deliveries",
        Some(ManageAccess),
        Cluster,
    ),
    // Needs no token: authenticated by its HMAC signature under the hook's secret (a bad one
    // is refused, 401, audited and counted against the address like a bad token).
    op("POST", "/v1/hooks/{id}", None, Public),
    // Needs no token: a password buys one (rate-limited per address).
    op("POST", "/v1/login", None, Public),
    op("GET", "/healthz", None, Public),
    op("GET", "/metrics", Some(Read), Cluster),
    op("POST", "/v1/registry/gc", Some(ManageRegistry), Cluster),
    // The registry (`api/registry.rs`, OCI Distribution): its routes as `registry::path::Route`
    // names them; the `{stack}` of a repository is its first component (`shop/web` is stack
    // `shop`'s), so a scoped token pulls and pushes its stacks' repositories only. Pulls are
    // reads, pushes and deletes deploys.
    op(
        "POST",
        "/git/{stack}.git/git-receive-pack",
        Some(Deploy),
        Stack,
    ),
    op(
        "POST",
        "/git/{stack}.git/git-upload-pack",
        Some(Read),
        Stack,
    ),
    op("GET", "/v2/", None, Open),
    op("GET", "/v2/_catalog", Some(Read), Listing),
    op("GET", "/v2/{name}/tags/list", Some(Read), Stack),
    op("GET", "/v2/{name}/manifests/{reference}", Some(Read), Stack),
    op(
        "HEAD",
        "/v2/{name}/manifests/{reference}",
        Some(Read),
        Stack,
    ),
    op(
        "PUT",
        "/v2/{name}/manifests/{reference}",
        Some(Deploy),
        Stack,
    ),
    op(
        "DELETE",
        "/v2/{name}/manifests/{reference}",
        Some(Deploy),
        Stack,
    ),
    op("GET", "/v2/{name}/blobs/{digest}", Some(Read), Stack),
    op("HEAD", "/v2/{name}/blobs/{digest}", Some(Read), Stack),
    op("DELETE", "/v2/{name}/blobs/{digest}", Some(Deploy), Stack),
    op("POST", "/v2/{name}/blobs/uploads/", Some(Deploy), Stack),
    op("GET", "/v2/{name}/blobs/uploads/{id}", Some(Deploy), Stack),
    op(
        "PATCH",
        "/v2/{name}/blobs/uploads/{id}",
        Some(Deploy),
        Stack,
    ),
    op("PUT", "/v2/{name}/blobs/uploads/{id}", Some(Deploy), Stack),
    op(
        "DELETE",
        "/v2/{name}/blobs/uploads/{id}",
        Some(Deploy),
        Stack,
    ),
];

/// The policy row of `method` on the route `path` (as the router declares it).
pub fn operation(method: &str, path: &str) -> Option<&'static Operation> {
    OPERATIONS
        .iter()
        .find(|o| o.method.eq_ignore_ascii_case(method) && o.path == path)
}

/// Who is calling, as authentication found them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The token's (or user's) name: the actor in the audit trail.
    pub name: String,
    pub role: Role,
    /// Stack name patterns this caller may act on; empty: every stack and the cluster.
    pub scope: Vec<String>,
    /// The user whose session this is (none for machine tokens).
    pub user: Option<String>,
    /// The name of that session's token (its other sessions end when it changes its password).
    pub session: Option<String>,
}

impl Caller {
    /// A caller with every permission and no scope (`wharf up`'s own token, controllers).
    pub fn admin(name: &str) -> Caller {
        Caller {
            name: name.to_string(),
            role: Role::Admin,
            scope: Vec::new(),
            user: None,
            session: None,
        }
    }

    /// Whether the caller's scope names `stack`.
    pub fn sees(&self, stack: &str) -> bool {
        self.scope.is_empty() || self.scope.iter().any(|p| glob_match(p, stack))
    }

    fn describe(&self) -> String {
        if self.scope.is_empty() {
            format!("{:?} has role {} and no stack scope", self.name, self.role)
        } else {
            format!(
                "{:?} has role {} and stack scope {}",
                self.name,
                self.role,
                self.scope.join(", ")
            )
        }
    }
}

/// Why an operation is refused: the message names the missing permission, or the stack outside
/// the scope, with the caller's role and scope; the hint says what to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denial {
    pub message: String,
    pub hint: String,
}

/// Whether `caller` may run `op`; `stack` is the `{stack}` path parameter of the request, if any.
pub fn decide(caller: &Caller, op: &Operation, stack: Option<&str>) -> Result<(), Denial> {
    if let Some(p) = op.needs
        && !allows(caller.role, p)
    {
        return Err(Denial {
            message: format!(
                "permission {} is needed for {} {}; {}",
                p.as_str(),
                op.method,
                op.path,
                caller.describe()
            ),
            hint: "use a token with a role that has it (`wharf token create --role ...`)".into(),
        });
    }
    match op.target {
        Open | Listing | Deployment | Public => Ok(()),
        Stack => match stack {
            Some(s) if !caller.sees(s) => Err(Denial {
                message: format!("stack {s:?} is outside the scope; {}", caller.describe()),
                hint: "use a token whose --stack scope names this stack".into(),
            }),
            _ => Ok(()),
        },
        Cluster if !caller.scope.is_empty() => Err(Denial {
            message: format!(
                "{} {} acts on the whole cluster; {}",
                op.method,
                op.path,
                caller.describe()
            ),
            hint: "use a token without a --stack scope".into(),
        }),
        Cluster => Ok(()),
    }
}

/// Whether `name` matches `pattern`, where `*` stands for any run of characters.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = name.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty(); // no `*`: the whole name
    };
    for p in middle {
        match rest.find(p) {
            Some(i) => rest = &rest[i + p.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(role: Role, scope: &[&str]) -> Caller {
        Caller {
            name: "t".into(),
            role,
            scope: scope.iter().map(|s| s.to_string()).collect(),
            user: None,
            session: None,
        }
    }

    #[test]
    fn globs_match_whole_names_with_stars_for_any_run() {
        for (p, name, want) in [
            ("shop", "shop", true),
            ("shop", "shops", false),
            ("shop", "sho", false),
            ("shop-*", "shop-eu", true),
            ("shop-*", "shop-", true),
            ("shop-*", "shop", false),
            ("*", "anything", true),
            ("*-prod", "shop-prod", true),
            ("*-prod", "shop-prod-2", false),
            ("a*b*c", "abc", true),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "acb", false),
            ("ab*ba", "aba", false),
        ] {
            assert_eq!(glob_match(p, name), want, "{p:?} ~ {name:?}");
        }
    }

    #[test]
    fn a_scoped_deployer_acts_only_on_its_stacks_and_never_on_the_cluster() {
        let ci = caller(Role::Deployer, &["shop"]);
        let deploy = operation("PUT", "/v1/stacks/{stack}").unwrap();
        assert!(decide(&ci, deploy, Some("shop")).is_ok());
        let e = decide(&ci, deploy, Some("other")).unwrap_err();
        assert!(
            e.message.contains("\"other\" is outside the scope")
                && e.message.contains("role deployer and stack scope shop"),
            "{e:?}"
        );
        let drain = operation("POST", "/v1/nodes/{node}/drain").unwrap();
        let e = decide(&ci, drain, None).unwrap_err();
        assert!(e.message.contains("permission manage_nodes"), "{e:?}");
        let tokens = operation("POST", "/v1/tokens").unwrap();
        let e = decide(&ci, tokens, None).unwrap_err();
        assert!(e.message.contains("permission manage_access"), "{e:?}");
        let nodes = operation("GET", "/v1/nodes").unwrap();
        let e = decide(&ci, nodes, None).unwrap_err();
        assert!(e.message.contains("acts on the whole cluster"), "{e:?}");
    }

    #[test]
    fn exec_is_for_those_who_may_deploy_the_stack_and_stats_for_every_reader() {
        let exec = operation("GET", "/v1/services/{stack}/{service}/exec").unwrap();
        assert_eq!(exec.needs, Some(Permission::Exec));
        let e = decide(&caller(Role::Viewer, &[]), exec, Some("shop")).unwrap_err();
        assert!(
            e.message.contains("permission exec") && e.message.contains("role viewer"),
            "{e:?}"
        );
        for role in [Role::Admin, Role::Operator, Role::Deployer] {
            assert!(
                decide(&caller(role, &[]), exec, Some("shop")).is_ok(),
                "{role}"
            );
        }
        let ci = caller(Role::Deployer, &["shop"]);
        assert!(decide(&ci, exec, Some("shop")).is_ok());
        assert!(
            decide(&ci, exec, Some("other")).is_err(),
            "outside its scope"
        );
        let stats = operation("GET", "/v1/services/{stack}/{service}/stats").unwrap();
        assert!(decide(&caller(Role::Viewer, &["shop"]), stats, Some("shop")).is_ok());
        let top = operation("GET", "/v1/stats").unwrap();
        assert!(decide(&caller(Role::Viewer, &["shop"]), top, None).is_ok());
    }

    #[test]
    fn registry_pulls_are_reads_and_pushes_deploys_of_the_repositorys_stack() {
        use crate::registry::path::{Route, stack_of};
        let pull = ["GET /v2/a/web/manifests/v1", "HEAD /v2/a/web/blobs/sha256:"];
        let push = [
            "PUT /v2/a/web/manifests/v1",
            "POST /v2/a/web/blobs/uploads/",
            "PATCH /v2/a/web/blobs/uploads/0f",
            "DELETE /v2/a/web/manifests/v1",
        ];
        // (role, scope, pulls of a/web allowed, pushes to a/web allowed)
        for (role, scope, pulls, pushes) in [
            (Role::Admin, &[][..], true, true),
            (Role::Deployer, &["a"][..], true, true),
            (Role::Deployer, &["b"][..], false, false),
            (Role::Deployer, &["a-*"][..], false, false),
            (Role::Viewer, &[][..], true, false),
            (Role::Viewer, &["b"][..], false, false),
        ] {
            let c = caller(role, scope);
            for (ops, want) in [(&pull[..], pulls), (&push[..], pushes)] {
                for o in ops {
                    let (method, path) = o.split_once(' ').unwrap();
                    let path = path.strip_prefix("/v2/").unwrap();
                    let path = if path.ends_with("sha256:") {
                        format!("{path}{}", "0".repeat(64))
                    } else {
                        path.to_string()
                    };
                    let route = Route::parse(&path).unwrap();
                    let op = operation(method, route.pattern())
                        .unwrap_or_else(|| panic!("no row for {o}"));
                    let got = decide(&c, op, route.name().map(stack_of));
                    assert_eq!(got.is_ok(), want, "{role} {scope:?} {o}: {got:?}");
                }
            }
        }
        // The catalog is every reader's (filtered by scope); the version check anybody's.
        assert!(
            decide(
                &caller(Role::Viewer, &["a"]),
                operation("GET", "/v2/_catalog").unwrap(),
                None
            )
            .is_ok()
        );
        assert_eq!(operation("GET", "/v2/").unwrap().needs, None);
    }

    #[test]
    fn an_operator_does_everything_but_access_administration() {
        let op = caller(Role::Operator, &[]);
        for o in OPERATIONS {
            let r = decide(&op, o, Some("any"));
            assert_eq!(
                r.is_ok(),
                o.needs != Some(Permission::ManageAccess),
                "{o:?}: {r:?}"
            );
        }
    }

    #[test]
    fn roles_parse_from_their_names_and_say_which_there_are() {
        for r in Role::ALL {
            assert_eq!(Role::parse(r.as_str()), Ok(r));
        }
        let e = Role::parse("root").unwrap_err();
        assert!(e.contains("admin, operator, deployer and viewer"), "{e}");
    }
}
