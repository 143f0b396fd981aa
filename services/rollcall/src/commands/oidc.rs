//! `rollcall oidc check`: the sign-in configuration checked before anyone signs in.

use clap::Subcommand;

/// The sign-in's commands.
#[derive(Debug, Subcommand)]
pub enum OidcCommand {
    /// Check the sign-in configuration before anyone signs in: the settings, the provider's
    /// discovery document and keys, and a client-credentials round trip that proves the client
    /// id and secret (or private key). Prints the redirect URI to register. Exits 1 on a problem.
    Check {
        #[command(flatten)]
        oidc: rollcall_access::oidc::OidcConfig,
        /// Domain of the session cookie.
        #[arg(long = "cookie-domain", env = "ROLLCALL_COOKIE_DOMAIN")]
        cookie_domain: Option<String>,
    },
}

/// Runs a sign-in command.
pub async fn run(command: OidcCommand) -> anyhow::Result<()> {
    match command {
        OidcCommand::Check {
            oidc,
            cookie_domain,
        } => check(&oidc, cookie_domain.as_deref()).await,
    }
}

async fn check(
    config: &rollcall_access::oidc::OidcConfig,
    cookie_domain: Option<&str>,
) -> anyhow::Result<()> {
    let rp = match rollcall_access::oidc::RelyingParty::from_config(config, cookie_domain) {
        Ok(Some(rp)) => rp,
        Ok(None) => anyhow::bail!("sign-in is not configured: set ROLLCALL_OIDC_ISSUER (Entra ID: https://login.microsoftonline.com/<tenant id>/v2.0)"),
        Err(problem) => anyhow::bail!("{problem}"),
    };
    println!(
        "Checking sign-in with {} as client {}",
        rp.issuer(),
        config.client_id.as_deref().unwrap_or_default()
    );
    let lines = rp.check().await;
    for (ok, line) in &lines {
        println!("  {} {line}", if *ok { "ok  " } else { "FAIL" });
    }
    if lines.iter().any(|(ok, _)| !ok) {
        anyhow::bail!("the sign-in configuration has problems (above)");
    }
    println!("Sign-in is ready.");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    #[tokio::test]
    async fn oidc_check_reads_its_settings_and_refuses_a_secret_id() {
        let cli = Cli::try_parse_from([
            "rollcall",
            "oidc",
            "check",
            "--oidc-issuer",
            "https://login.microsoftonline.com/0a1b2c3d-0000-0000-0000-000000000000/v2.0",
            "--oidc-client-id",
            "app",
            "--oidc-client-secret",
            "7f0e8a52-3c1d-4b6e-9a8f-2d5c4b3a1e0f",
            "--oidc-redirect-url",
            "https://auth.example.com/oauth2/callback",
        ])
        .unwrap();
        let Command::Oidc {
            command:
                OidcCommand::Check {
                    oidc,
                    cookie_domain,
                },
        } = cli.command
        else {
            panic!("not oidc check");
        };
        assert_eq!(oidc.client_id.as_deref(), Some("app"));
        // A GUID is the secret's ID, not its value: refused before any network call.
        let error = check(&oidc, cookie_domain.as_deref())
            .await
            .unwrap_err()
            .to_string();
        assert!(error.contains("Value"), "{error}");
        let unset = check(&rollcall_access::oidc::OidcConfig::default(), None)
            .await
            .unwrap_err()
            .to_string();
        assert!(unset.contains("not configured"), "{unset}");
    }
}
