//! Trust on the operator's side: enrolment tokens and the fleet's
//! provisioning key.

use crate::fleet::{bad, print_json, Connection};
use crate::table::Table;
use anyhow::Result;
use clap::Subcommand;
use fogswarm_protocol::api::EnrolTokenCreate;
use fogswarm_protocol::validate::{self, Role};

#[derive(Subcommand, Debug)]
pub enum EnrolTokenCommand {
    /// Make a token that admits new devices into a swarm, with labels.
    /// It is printed once and never again.
    Create {
        #[arg(long)]
        swarm: String,
        /// A label every device it admits gets, KEY=VALUE (repeatable).
        #[arg(long = "label")]
        labels: Vec<String>,
        /// Devices it may admit [default: unbounded until it expires].
        #[arg(long)]
        uses: Option<u32>,
        /// How long it is valid (Go-style duration: 24h, 30m) [default: no expiry].
        #[arg(long)]
        expires: Option<String>,
        /// The role of the devices it admits: worker or manager.
        #[arg(long, default_value = "worker")]
        role: String,
    },
    /// List tokens (never the tokens themselves).
    Ls {
        #[arg(long)]
        swarm: Option<String>,
    },
    /// Revoke a token at once.
    Rm {
        #[arg(required = true)]
        ids: Vec<String>,
    },
}

pub async fn enrol_token(conn: &Connection, command: EnrolTokenCommand) -> Result<()> {
    let client = conn.client()?;
    match command {
        EnrolTokenCommand::Create {
            swarm,
            labels,
            uses,
            expires,
            role,
        } => {
            validate::validate_swarm_name(&swarm).map_err(bad)?;
            let labels = labels
                .iter()
                .map(|a| validate::parse_label_assignment(a).map_err(bad))
                .collect::<Result<_>>()?;
            let role = Role::parse(&role).map_err(bad)?;
            let expires_in_secs = expires
                .map(|d| {
                    fogswarm_protocol::service::parse_duration(&d)
                        .map(|ns| ns / 1_000_000_000)
                        .map_err(|m| bad(format!("--expires: {m}")))
                })
                .transpose()?;
            let created = client
                .create_enrol_token(&EnrolTokenCreate {
                    swarm,
                    labels,
                    uses,
                    expires_in_secs,
                    role,
                })
                .await?;
            if conn.json {
                return print_json(&serde_json::json!({
                    "id": created.view.id,
                    "swarm": created.view.swarm,
                    "token": created.token.expose(),
                }));
            }
            eprintln!(
                "enrolment token {} for swarm {} (shown once: keep it like a password)",
                created.view.id, created.view.swarm
            );
            println!("{}", created.token.expose());
        }
        EnrolTokenCommand::Ls { swarm } => {
            let tokens = client.list_enrol_tokens(swarm.as_deref()).await?;
            if conn.json {
                return print_json(&tokens);
            }
            let mut table = Table::new(&["ID", "SWARM", "ROLE", "LABELS", "USED", "EXPIRES", "BY"]);
            for t in tokens {
                table.row([
                    t.id,
                    t.swarm,
                    t.role.to_string(),
                    t.labels
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(","),
                    match t.uses {
                        Some(u) => format!("{}/{u}", t.used),
                        None => t.used.to_string(),
                    },
                    expires(t.expires_at),
                    t.created_by,
                ]);
            }
            table.print();
        }
        EnrolTokenCommand::Rm { ids } => {
            for id in ids {
                let t = client.remove_enrol_token(&id).await?;
                if !conn.json {
                    println!("enrolment token {} revoked", t.id);
                }
            }
        }
    }
    Ok(())
}

#[derive(Subcommand, Debug)]
pub enum ProvisioningKeyCommand {
    /// Replace the fleet's provisioning key: devices not enrolled yet need
    /// the new one; enrolled devices are not affected.
    Rotate,
}

pub async fn provisioning_key(conn: &Connection, command: ProvisioningKeyCommand) -> Result<()> {
    let client = conn.client()?;
    match command {
        ProvisioningKeyCommand::Rotate => {
            let rotated = client.rotate_provisioning_key().await?;
            if conn.json {
                return print_json(&serde_json::json!({ "file": rotated.file }));
            }
            println!(
                "provisioning key rotated; the new key is in {} on the server",
                rotated.file
            );
        }
    }
    Ok(())
}

/// When a token expires, for the table: "in 3 hours", "expired", "never".
fn expires(at: Option<i64>) -> String {
    let Some(at) = at else {
        return "never".into();
    };
    let left = at - fogswarm_protocol::time::unix_now();
    match left {
        ..=0 => "expired".into(),
        1..=119 => format!("in {left} seconds"),
        120..=7199 => format!("in {} minutes", left / 60),
        7200..=172_799 => format!("in {} hours", left / 3600),
        _ => format!("in {} days", left / 86_400),
    }
}
