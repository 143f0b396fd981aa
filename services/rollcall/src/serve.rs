//! `rollcall serve`: every service in one process.

use anyhow::Context;
use clap::Args;
use rollcall_store::tenant::Scope;
use tokio::net::TcpListener;
use tracing::info;

use crate::{connect_nats, connect_store, Common};

/// Options of `rollcall serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    scim: rollcall_scim_api::Config,
    #[command(flatten)]
    projector: rollcall_projector::Config,
    #[command(flatten)]
    access: rollcall_access::Config,
    #[command(flatten)]
    audit: rollcall_audit_api::Config,
    /// Header, body and idle timeouts of every listener.
    #[command(flatten)]
    http: rollcall_http::HttpConfig,
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

pub async fn serve(common: Common, args: ServeArgs) -> anyhow::Result<()> {
    let _telemetry = rollcall_telemetry::init("rollcall")?;
    let (client, log) = connect_nats(&common).await?;
    let store = connect_store(&common).await?;
    let scim_url = args
        .scim
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{}/scim/v2", args.scim.addr));
    if store.tenants().await?.is_empty() {
        store.create_tenant("default").await?;
        let token = store
            .create_token("default", Scope::Scim, Some("created at first start"))
            .await?;
        println!("First start: created tenant \"default\".\n  SCIM URL: {scim_url}\n  Token:    {}\nThe token is shown only now; create more with `rollcall tokens create --tenant default`.\n", token.token);
    }
    let listen = |tcp| rollcall_http::Listener::new(tcp, args.http.clone());
    let listener = TcpListener::bind(args.scim.addr)
        .await
        .map(listen)
        .with_context(|| format!("binding the SCIM API to {}", args.scim.addr))?;
    let access_listener = TcpListener::bind(args.access.addr)
        .await
        .map(listen)
        .with_context(|| format!("binding the access service to {}", args.access.addr))?;
    let access = rollcall_access::Access::new(args.access.clone())
        .context("access service configuration")?
        .with_revoker(std::sync::Arc::new(
            rollcall_scim_api::operator::SignOutRevoker(log.clone()),
        ));
    let audit_listener = TcpListener::bind(args.audit.addr)
        .await
        .map(listen)
        .with_context(|| format!("binding the audit API to {}", args.audit.addr))?;
    let audit = rollcall_audit_api::AuditState::new(&args.audit, store.clone())
        .context("audit API configuration")?;
    // The access service runs here: SCIM writes answer once access decisions reflect them.
    let mut scim_config = args.scim.clone();
    scim_config.wait_for_access = true;
    let state =
        rollcall_scim_api::AppState::new(scim_config, client.clone(), log.clone(), store.clone())
            .await?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let projector = {
        let mut stopped = stopped.clone();
        let (client, log, store, config) = (
            client.clone(),
            log.clone(),
            store.clone(),
            args.projector.clone(),
        );
        tokio::spawn(async move {
            rollcall_projector::run(config, client, log, store, async move {
                let _ = stopped.wait_for(|&s| s).await;
            })
            .await
        })
    };
    let audit_server = {
        let mut stopped = stopped.clone();
        tokio::spawn(async move {
            rollcall_audit_api::serve(audit_listener, audit, async move {
                let _ = stopped.wait_for(|&s| s).await;
            })
            .await
        })
    };
    let access_server = {
        let mut stopped = stopped.clone();
        let (client, namespace) = (client.clone(), log.namespace().clone());
        tokio::spawn(async move {
            rollcall_access::serve(access_listener, access, client, namespace, async move {
                let _ = stopped.wait_for(|&s| s).await;
            })
            .await
        })
    };
    println!(
        "Rollcall is running (namespace {}, stream {}).",
        log.namespace(),
        log.namespace().stream()
    );
    println!("  SCIM API  {scim_url}");
    println!(
        "  access    http://{}/auth (forward-auth), /v1/decisions, /readyz, /metrics",
        args.access.addr
    );
    match &args.access.oidc.redirect_url {
        Some(redirect) if args.access.oidc.issuer.is_some() => println!(
            "  sign-in   {} (callback {redirect})",
            args.access.oidc.issuer.as_deref().unwrap_or_default()
        ),
        _ => {
            println!("  sign-in   off (set ROLLCALL_OIDC_ISSUER; see `rollcall oidc check --help`)")
        }
    }
    println!("  projector consuming {}", log.namespace().all_events());
    info!(scim = %args.scim.addr, "serving");
    let mut scim_stopped = stopped.clone();
    let server = rollcall_scim_api::serve(listener, state, async move {
        let _ = scim_stopped.wait_for(|&s| s).await;
    });
    tokio::select! {
        result = server => result.context("SCIM API")?,
        _ = shutdown_signal() => info!("shutting down"),
    }
    let _ = stop.send(true);
    let _ = projector.await;
    let _ = access_server.await;
    let _ = audit_server.await;
    Ok(())
}
