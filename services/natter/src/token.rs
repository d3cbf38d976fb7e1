use std::process::ExitCode;

use natter_auth::{Identity, Signer};
use natter_core::{Role, TenantId, UserId};
use natter_server::InfraArgs;

#[derive(Debug, clap::Args)]
pub(crate) struct TokenArgs {
    #[command(flatten)]
    infra: InfraArgs,
    /// The tenant (business) the user belongs to.
    #[arg(long, default_value = "demo")]
    tenant: String,
    /// The user id.
    #[arg(long)]
    user: String,
    /// customer, agent, bot or service.
    #[arg(long, default_value = "customer")]
    role: String,
    /// How long the token is valid.
    #[arg(long, default_value_t = 24 * 3600)]
    ttl_seconds: u64,
}

pub(crate) fn print(args: &TokenArgs) -> ExitCode {
    match mint(args) {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("natter token: {e}");
            ExitCode::from(64)
        }
    }
}

fn mint(args: &TokenArgs) -> Result<String, String> {
    let settings = args
        .infra
        .settings_with(crate::dev::defaults)
        .map_err(|e| e.to_string())?;
    if settings.auth.hs256_secret.is_empty() {
        return Err("tokens can only be minted with auth.hs256_secret set".into());
    }
    let identity = Identity {
        tenant: TenantId::new(&args.tenant).map_err(|e| e.to_string())?,
        user: UserId::new(&args.user).map_err(|e| e.to_string())?,
        role: Role::parse(&args.role).map_err(|e| e.to_string())?,
    };
    Signer::hs256(settings.auth.hs256_secret.expose().as_bytes())
        .token(&identity, args.ttl_seconds)
        .map_err(|e| e.to_string())
}
