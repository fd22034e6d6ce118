//! Trust on the operator's side: named users and their tokens,
//! enrolment tokens and the fleet's provisioning key.

use crate::fleet::{bad, print_json, Connection};
use crate::table::Table;
use anyhow::Result;
use clap::Subcommand;
use fogswarm_protocol::api::{
    EnrolTokenCreate, Secret, UserCertificateCreate, UserCreate, UserRole, UserTokenCreate,
    UserUpdate,
};
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
            let expires_in_secs = seconds("expires", expires)?;
            let created = client
                .create_enrol_token(&EnrolTokenCreate {
                    swarm,
                    labels,
                    uses,
                    expires_in_secs,
                    role,
                })
                .await?;
            show_once(
                conn,
                serde_json::json!({"id": created.view.id, "swarm": created.view.swarm}),
                &format!(
                    "enrolment token {} for swarm {}",
                    created.view.id, created.view.swarm
                ),
                &created.token,
            )?;
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

#[derive(Subcommand, Debug)]
pub enum AdminTokenCommand {
    /// Replace the admin token: the old one stops working on every
    /// replica. The new one is printed once (and written to the serving
    /// replica's DATA/admin.token). Admins only.
    Rotate,
}

pub async fn admin_token(conn: &Connection, command: AdminTokenCommand) -> Result<()> {
    let client = conn.client()?;
    match command {
        AdminTokenCommand::Rotate => {
            let rotated = client.rotate_admin_token().await?;
            if conn.json {
                return print_json(&serde_json::json!({
                    "admin_token": rotated.admin_token.expose(),
                    "file": rotated.file,
                }));
            }
            println!("{}", rotated.admin_token.expose());
            eprintln!(
                "admin token rotated: the line above is the new one, shown once (also in {} on the server); the old one no longer works",
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

#[derive(Subcommand, Debug)]
pub enum UserCommand {
    /// Add a named user. A password for the dashboard is read from
    /// standard input with --password-stdin (never a flag: flags show in
    /// process lists).
    Add {
        name: String,
        /// viewer (reads everything, changes nothing), operator (changes
        /// its swarms) or admin (users, keys and swarms too).
        #[arg(long)]
        role: String,
        /// For operators: a swarm they may change (repeatable; none: all).
        #[arg(long = "swarm")]
        swarms: Vec<String>,
        #[arg(long)]
        password_stdin: bool,
    },
    /// Change a user's role, swarms or password.
    Update {
        name: String,
        #[arg(long)]
        role: Option<String>,
        /// Replaces the user's swarms (repeatable).
        #[arg(long = "swarm")]
        swarms: Vec<String>,
        /// Let an operator change every swarm again.
        #[arg(long, conflicts_with = "swarms")]
        all_swarms: bool,
        #[arg(long)]
        password_stdin: bool,
    },
    /// List users.
    Ls,
    /// Remove users: their tokens and sessions stop working at once.
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Who the server takes you for.
    Whoami,
}

fn role(s: &str) -> Result<UserRole> {
    UserRole::parse(s).ok_or_else(|| bad(format!("--role {s:?}: give viewer, operator or admin")))
}

fn password_from_stdin() -> Result<Secret> {
    let mut text = String::new();
    std::io::stdin()
        .read_line(&mut text)
        .map_err(|e| bad(format!("--password-stdin: {e}")))?;
    Ok(Secret::new(text.trim_end_matches(['\n', '\r'])))
}

pub async fn user(conn: &Connection, command: UserCommand) -> Result<()> {
    let client = conn.client()?;
    match command {
        UserCommand::Add {
            name,
            role: r,
            swarms,
            password_stdin,
        } => {
            let role = role(&r)?;
            for s in &swarms {
                validate::validate_swarm_name(s).map_err(bad)?;
            }
            let password = password_stdin.then(password_from_stdin).transpose()?;
            let view = client
                .create_user(&UserCreate {
                    name,
                    role,
                    swarms,
                    password,
                })
                .await?;
            if conn.json {
                return print_json(&view);
            }
            println!(
                "user {} added ({})",
                view.name,
                describe_scope(view.role, &view.swarms)
            );
        }
        UserCommand::Update {
            name,
            role: r,
            swarms,
            all_swarms,
            password_stdin,
        } => {
            let update = UserUpdate {
                role: r.as_deref().map(role).transpose()?,
                swarms: if all_swarms {
                    Some(Vec::new())
                } else {
                    (!swarms.is_empty()).then_some(swarms)
                },
                password: password_stdin.then(password_from_stdin).transpose()?,
            };
            let view = client.update_user(&name, &update).await?;
            if conn.json {
                return print_json(&view);
            }
            println!(
                "user {} now {}",
                view.name,
                describe_scope(view.role, &view.swarms)
            );
        }
        UserCommand::Ls => {
            let users = client.list_users().await?;
            if conn.json {
                return print_json(&users);
            }
            let mut table = Table::new(&["NAME", "ROLE", "SWARMS", "PASSWORD"]);
            for u in users {
                table.row([
                    u.name,
                    u.role.to_string(),
                    if u.swarms.is_empty() {
                        "all".into()
                    } else {
                        u.swarms.join(",")
                    },
                    if u.has_password { "set" } else { "-" }.into(),
                ]);
            }
            table.print();
        }
        UserCommand::Rm { names } => {
            for name in names {
                client.remove_user(&name).await?;
                if !conn.json {
                    println!("user {name} removed");
                }
            }
        }
        UserCommand::Whoami => {
            let me = client.whoami().await?;
            if conn.json {
                return print_json(&me);
            }
            println!("{} ({})", me.name, describe_scope(me.role, &me.swarms));
        }
    }
    Ok(())
}

fn describe_scope(role: UserRole, swarms: &[String]) -> String {
    match role {
        UserRole::Operator if !swarms.is_empty() => format!("operator of {}", swarms.join(", ")),
        UserRole::Operator => "operator of every swarm".into(),
        r => r.to_string(),
    }
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Make an API token (yours; admins: --user for anyone's). It is
    /// printed once and never again.
    Create {
        #[arg(long)]
        user: Option<String>,
        /// How long it is valid (Go-style duration: 720h) [default: 90 days].
        #[arg(long)]
        expires: Option<String>,
    },
    /// List tokens (yours; admins: everyone's, or --user's).
    Ls {
        #[arg(long)]
        user: Option<String>,
    },
    /// Revoke tokens at once.
    Rm {
        #[arg(required = true)]
        ids: Vec<String>,
    },
}

pub async fn token(conn: &Connection, command: TokenCommand) -> Result<()> {
    let client = conn.client()?;
    match command {
        TokenCommand::Create { user, expires } => {
            let expires_in_secs = seconds("expires", expires)?;
            let made = client
                .create_token(&UserTokenCreate {
                    user,
                    expires_in_secs,
                })
                .await?;
            show_once(
                conn,
                serde_json::json!({"id": made.view.id, "user": made.view.user, "expires_at": made.view.expires_at}),
                &format!("token {} for {}", made.view.id, made.view.user),
                &made.token,
            )?;
        }
        TokenCommand::Ls { user } => {
            let tokens = client.list_tokens(user.as_deref()).await?;
            if conn.json {
                return print_json(&tokens);
            }
            let mut table = Table::new(&["ID", "USER", "EXPIRES"]);
            for t in tokens {
                table.row([t.id, t.user, expires(Some(t.expires_at))]);
            }
            table.print();
        }
        TokenCommand::Rm { ids } => {
            for id in ids {
                let t = client.remove_token(&id).await?;
                if !conn.json {
                    println!("token {} of {} revoked", t.id, t.user);
                }
            }
        }
    }
    Ok(())
}

#[derive(Subcommand, Debug)]
pub enum CertCommand {
    /// Issue a client certificate from the fleet's CA (yours; admins:
    /// --user for anyone's) into DIR as Docker's TLS files: ca.pem,
    /// cert.pem, key.pem (0600). The key is shown this once.
    Create {
        #[arg(long)]
        user: Option<String>,
        /// Days it is valid [default: 365].
        #[arg(long)]
        days: Option<u32>,
        /// Where to write the three files (created 0700 if missing).
        #[arg(long)]
        out: std::path::PathBuf,
    },
    /// List certificates (yours; admins: everyone's, or --user's).
    Ls {
        #[arg(long)]
        user: Option<String>,
    },
    /// Revoke certificates at once.
    Rm {
        #[arg(required = true)]
        ids: Vec<String>,
    },
}

pub async fn cert(conn: &Connection, command: CertCommand) -> Result<()> {
    let client = conn.client()?;
    match command {
        CertCommand::Create { user, days, out } => {
            for name in ["cert.pem", "key.pem"] {
                if out.join(name).exists() {
                    return Err(bad(format!(
                        "--out {}: {name} exists already; choose another directory",
                        out.display()
                    )));
                }
            }
            let issued = client
                .create_certificate(&UserCertificateCreate { user, days })
                .await?;
            write_tls_files(&out, &issued.ca, &issued.certificate, issued.key.expose())?;
            if conn.json {
                return print_json(&issued.view);
            }
            println!(
                "certificate {} for {} (until {}) in {}: ca.pem, cert.pem, key.pem",
                issued.view.id,
                issued.view.user,
                expires(Some(issued.view.expires_at)),
                out.display()
            );
        }
        CertCommand::Ls { user } => {
            let certs = client.list_certificates(user.as_deref()).await?;
            if conn.json {
                return print_json(&certs);
            }
            let mut table = Table::new(&["ID", "USER", "EXPIRES", "FINGERPRINT"]);
            for c in certs {
                table.row([c.id, c.user, expires(Some(c.expires_at)), c.fingerprint]);
            }
            table.print();
        }
        CertCommand::Rm { ids } => {
            for id in ids {
                let c = client.remove_certificate(&id).await?;
                if !conn.json {
                    println!("certificate {} of {} revoked", c.id, c.user);
                }
            }
        }
    }
    Ok(())
}

/// Writes ca.pem and cert.pem (0644) and key.pem (0600, written whole or
/// not at all) into `dir`.
fn write_tls_files(dir: &std::path::Path, ca: &str, cert: &str, key: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| bad(format!("--out {}: {e}", dir.display())))?;
    let write = |name: &str, text: &str, mode: u32| -> Result<()> {
        let path = dir.join(name);
        let tmp = dir.join(format!(".{name}.tmp"));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        Ok(())
    };
    write("key.pem", key, 0o600)?;
    write("cert.pem", cert, 0o644)?;
    write("ca.pem", ca, 0o644)
}

/// A Go-style duration flag (`24h`) in whole seconds.
fn seconds(flag: &str, value: Option<String>) -> Result<Option<u64>> {
    value
        .map(|d| {
            fogswarm_protocol::service::parse_duration(&d)
                .map(|ns| ns / 1_000_000_000)
                .map_err(|m| bad(format!("--{flag}: {m}")))
        })
        .transpose()
}

/// A secret the server shows this once: alone on standard output for
/// scripts (`$(fogswarm token create)`), what it is on standard error; in
/// JSON with `about`.
fn show_once(
    conn: &Connection,
    mut about: serde_json::Value,
    what: &str,
    secret: &Secret,
) -> Result<()> {
    if conn.json {
        about["token"] = secret.expose().into();
        return print_json(&about);
    }
    eprintln!("{what} (shown once: keep it like a password)");
    println!("{}", secret.expose());
    Ok(())
}
