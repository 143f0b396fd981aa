//! `rollcall serve`: Rollcall's roles in this process — all four by default, or those of
//! `--roles` — started through [`Instance`], until SIGINT/SIGTERM or a role fails.

use std::net::{Ipv4Addr, SocketAddr};

use clap::Args;
use rollcall_store::tenant::Scope;
use tracing::{error, info};

use crate::cli::Common;
use crate::connection::Connections;
use crate::instance::{Instance, InstanceHandle};
use crate::role::{Role, Roles};

/// Where the operations listener binds when no role with an HTTP listener runs.
pub const DEFAULT_METRICS_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::UNSPECIFIED), 9464);

/// Options of `rollcall serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// The roles this process runs, comma-separated: any of scim, projector, access, audit.
    #[arg(
        long,
        env = "ROLLCALL_ROLES",
        default_value = "scim,projector,access,audit"
    )]
    pub roles: Roles,
    /// Serve /metrics, /healthz and /readyz on this address too. Default: 0.0.0.0:9464 when no
    /// role with an HTTP listener runs (a projector-only process), else off (every HTTP role
    /// serves them).
    #[arg(long, env = "ROLLCALL_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    #[command(flatten)]
    pub scim: rollcall_scim_api::Config,
    #[command(flatten)]
    pub projector: rollcall_projector::Config,
    #[command(flatten)]
    pub access: rollcall_access::Config,
    #[command(flatten)]
    pub audit: rollcall_audit_api::Config,
    /// Header, body and idle timeouts of every listener.
    #[command(flatten)]
    pub http: rollcall_http::HttpConfig,
}

impl ServeArgs {
    /// Where the operations listener binds, if anywhere.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
            .or_else(|| (!self.roles.has_listener()).then_some(DEFAULT_METRICS_ADDR))
    }

    /// The instance these options describe.
    pub fn instance(&self) -> Instance {
        let instance = Instance::new(self.roles)
            .scim(self.scim.clone())
            .projector(self.projector.clone())
            .access(self.access.clone())
            .audit(self.audit.clone())
            .http(self.http.clone());
        match self.metrics_addr() {
            Some(addr) => instance.ops_addr(addr),
            None => instance,
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}

/// Runs `rollcall serve`.
pub async fn run(common: Common, args: ServeArgs) -> anyhow::Result<()> {
    let _telemetry = rollcall_telemetry::init("rollcall")?;
    let connections = Connections::open(&common).await?;
    let scim_url = args
        .scim
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{}/scim/v2", args.scim.addr));
    // The first tenant and its token are for the SCIM API Entra talks to: made where it runs.
    if args.roles.contains(Role::Scim) && connections.store.tenants().await?.is_empty() {
        let store = &connections.store;
        store.create_tenant("default").await?;
        let token = store
            .create_token("default", Scope::Scim, Some("created at first start"))
            .await?;
        println!("First start: created tenant \"default\".\n  SCIM URL: {scim_url}\n  Token:    {}\nThe token is shown only now; create more with `rollcall tokens create --tenant default`.\n", token.token);
    }
    let mut handle = args.instance().start(connections).await?;
    banner(&handle, &args, &scim_url);
    info!(roles = %args.roles, scim = ?handle.addr(Role::Scim), "serving");
    tokio::select! {
        stopped = handle.failed() => {
            let error = stopped.into_error();
            error!(error = format!("{error:#}"), "a role stopped; shutting down the others");
            let _ = handle.shutdown().await;
            Err(error)
        }
        _ = shutdown_signal() => {
            info!("shutting down");
            handle.shutdown().await
        }
    }
}

/// What runs where, for whoever started it.
fn banner(handle: &InstanceHandle, args: &ServeArgs, scim_url: &str) {
    let log = &handle.connections().log;
    println!(
        "Rollcall is running (namespace {}, stream {}, roles {}).",
        log.namespace(),
        log.stream_name(),
        handle.roles()
    );
    if handle.roles().contains(Role::Scim) {
        println!("  SCIM API  {scim_url}");
    }
    if let Some(addr) = handle.addr(Role::Access) {
        println!("  access    http://{addr}/auth (forward-auth), /v1/decisions, /readyz, /metrics");
        match &args.access.oidc.redirect_url {
            Some(redirect) if args.access.oidc.issuer.is_some() => println!(
                "  sign-in   {} (callback {redirect})",
                args.access.oidc.issuer.as_deref().unwrap_or_default()
            ),
            _ => println!(
                "  sign-in   off (set ROLLCALL_OIDC_ISSUER; see `rollcall oidc check --help`)"
            ),
        }
    }
    if let Some(addr) = handle.addr(Role::Audit) {
        println!("  audit     http://{addr}/audit/ (page), /audit/v1/… (API)");
    }
    if handle.roles().contains(Role::Projector) {
        println!("  projector consuming {}", log.namespace().all_events());
    }
    if let Some(addr) = handle.ops_addr() {
        println!("  ops       http://{addr}/metrics, /healthz, /readyz");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    fn serve(args: &[&str]) -> ServeArgs {
        let cli = Cli::try_parse_from(["rollcall", "serve"].iter().chain(args)).unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("not serve");
        };
        *args
    }

    #[test]
    fn serve_runs_every_role_by_default_without_an_ops_listener() {
        let args = serve(&[]);
        assert_eq!(args.roles, Roles::all());
        assert_eq!(args.metrics_addr(), None);
    }

    #[test]
    fn a_projector_only_process_gets_an_ops_listener_by_default() {
        let args = serve(&["--roles", "projector"]);
        assert_eq!(args.roles.to_string(), "projector");
        assert_eq!(args.metrics_addr(), Some(DEFAULT_METRICS_ADDR));
        let args = serve(&["--roles", "projector", "--metrics-addr", "127.0.0.1:9000"]);
        assert_eq!(args.metrics_addr(), Some("127.0.0.1:9000".parse().unwrap()));
        let args = serve(&["--roles", "scim,audit", "--metrics-addr", "127.0.0.1:9000"]);
        assert_eq!(args.metrics_addr(), Some("127.0.0.1:9000".parse().unwrap()));
    }

    #[test]
    fn an_unknown_role_is_refused_with_the_known_ones() {
        let error = Cli::try_parse_from(["rollcall", "serve", "--roles", "scim,web"])
            .unwrap_err()
            .to_string();
        assert!(error.contains("unknown role \"web\""), "{error}");
        let error = Cli::try_parse_from(["rollcall", "serve", "--roles", ""])
            .unwrap_err()
            .to_string();
        assert!(error.contains("no role given"), "{error}");
    }
}
