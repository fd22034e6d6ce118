//! `fogswarm secret`, `fogswarm config` and `fogswarm registry`: what a
//! swarm's services read and pull with, kept on the server. A value is read
//! from a file or standard input, never from the command line (where `ps`
//! and shell history would show it), and never printed back.

use crate::fleet::{bad, print_json, Connection};
use crate::table::Table;
use anyhow::Result;
use base64::Engine as _;
use clap::Subcommand;
use fogswarm_protocol::api::Secret;
use fogswarm_protocol::secret::*;
use fogswarm_protocol::service::DeployOutcome;
use std::io::Read;
use std::path::PathBuf;

pub fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// The same verbs for secrets and configs.
#[derive(Subcommand, Debug)]
pub enum FileCommand {
    /// Create one from a file, or from standard input with `-`.
    Create {
        name: String,
        file: PathBuf,
        #[arg(long)]
        swarm: String,
    },
    /// Give one a new value: a new version, to which the services using it
    /// roll (the old version is removed from the swarm once unused).
    Update {
        name: String,
        file: PathBuf,
        #[arg(long)]
        swarm: String,
    },
    /// List them, with versions and the services using each.
    Ls {
        #[arg(long)]
        swarm: String,
    },
    /// One, as JSON (a config with its value, base64; a secret never).
    Inspect {
        name: String,
        #[arg(long)]
        swarm: String,
    },
    /// Remove ones no service uses.
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
        #[arg(long)]
        swarm: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum RegistryCommand {
    /// Store a login the swarm's devices pull with (passed on by the
    /// leader agent, as `--with-registry-auth` does).
    Login {
        /// HOST[:PORT], as image references name it.
        host: String,
        #[arg(long)]
        swarm: String,
        #[arg(short = 'u', long)]
        username: String,
        /// Read the password (or token) from standard input.
        #[arg(long)]
        password_stdin: bool,
        /// Read the password from this file.
        #[arg(long, conflicts_with = "password_stdin")]
        password_file: Option<PathBuf>,
    },
    /// The swarm's registry logins (never their passwords).
    Ls {
        #[arg(long)]
        swarm: String,
    },
    /// Forget a login.
    Logout {
        host: String,
        #[arg(long)]
        swarm: String,
    },
}

fn read_value(file: &PathBuf) -> Result<Vec<u8>> {
    if file.as_os_str() == "-" {
        let mut data = Vec::new();
        std::io::stdin()
            .read_to_end(&mut data)
            .map_err(|e| bad(format!("reading standard input: {e}")))?;
        return Ok(data);
    }
    std::fs::read(file).map_err(|e| bad(format!("reading {}: {e}", file.display())))
}

pub async fn file(conn: &Connection, kind: FileKind, command: FileCommand) -> Result<()> {
    let client = conn.client()?;
    match command {
        FileCommand::Create { name, file, swarm } => {
            write(conn, kind, &swarm, name, &file, true).await
        }
        FileCommand::Update { name, file, swarm } => {
            write(conn, kind, &swarm, name, &file, false).await
        }
        FileCommand::Ls { swarm } => {
            let list = client.list_files(&swarm, kind).await?;
            if conn.json {
                return print_json(&list);
            }
            let mut table = Table::new(&["NAME", "VERSION", "USED BY", "UPDATED"]);
            for f in &list {
                table.row([
                    f.name.clone(),
                    f.version.to_string(),
                    f.used_by.join(","),
                    crate::fleet::ago(f.updated_at),
                ]);
            }
            table.print();
            Ok(())
        }
        FileCommand::Inspect { name, swarm } => {
            print_json(&client.get_file(&swarm, kind, &name).await?)
        }
        FileCommand::Rm { names, swarm } => {
            for name in &names {
                client.remove_file(&swarm, kind, name).await?;
                if !conn.json {
                    println!("{name}");
                }
            }
            if conn.json {
                print_json(&names)?;
            }
            Ok(())
        }
    }
}

async fn write(
    conn: &Connection,
    kind: FileKind,
    swarm: &str,
    name: String,
    file: &PathBuf,
    create_only: bool,
) -> Result<()> {
    validate_file_name(kind, &name).map_err(|e| bad(format!("NAME: {}", e.message)))?;
    let data = read_value(file)?;
    let written = conn
        .client()?
        .write_file(
            swarm,
            kind,
            &FileWrite {
                name,
                data: Secret::new(b64(&data)),
            },
            create_only,
        )
        .await?;
    show_written(conn, &written)
}

fn show_written(conn: &Connection, written: &FileWritten) -> Result<()> {
    if conn.json {
        return print_json(written);
    }
    let f = &written.file;
    match written.outcome {
        DeployOutcome::Unchanged => println!(
            "{} {} unchanged (version {})",
            f.kind.as_str(),
            f.name,
            f.version
        ),
        outcome => println!(
            "{} {} {} (version {})",
            f.kind.as_str(),
            f.name,
            outcome.as_str(),
            f.version
        ),
    }
    if !written.rolled.is_empty() {
        println!("rolling to it: {}", written.rolled.join(", "));
    }
    Ok(())
}

pub async fn registry(conn: &Connection, command: RegistryCommand) -> Result<()> {
    let client = conn.client()?;
    match command {
        RegistryCommand::Login {
            host,
            swarm,
            username,
            password_stdin,
            password_file,
        } => {
            let password = match (password_stdin, password_file) {
                (true, _) => read_value(&PathBuf::from("-"))?,
                (false, Some(path)) => read_value(&path)?,
                (false, None) => {
                    return Err(bad(
                        "give the password with --password-stdin or --password-file (never on the command line)",
                    ))
                }
            };
            let password = String::from_utf8(password)
                .map_err(|_| bad("the password is not UTF-8 text"))?
                .trim_end_matches(['\n', '\r'])
                .to_string();
            let view = client
                .registry_login(
                    &swarm,
                    &host,
                    &RegistryLogin {
                        username,
                        password: Secret::new(password),
                    },
                )
                .await?;
            if conn.json {
                return print_json(&view);
            }
            println!(
                "login for {} stored for swarm {} (user {})",
                view.host, view.swarm, view.username
            );
            Ok(())
        }
        RegistryCommand::Ls { swarm } => {
            let list = client.list_registries(&swarm).await?;
            if conn.json {
                return print_json(&list);
            }
            let mut table = Table::new(&["REGISTRY", "USER", "UPDATED"]);
            for r in &list {
                table.row([
                    r.host.clone(),
                    r.username.clone(),
                    crate::fleet::ago(r.updated_at),
                ]);
            }
            table.print();
            Ok(())
        }
        RegistryCommand::Logout { host, swarm } => {
            client.registry_logout(&swarm, &host).await?;
            if !conn.json {
                println!("{host}");
            }
            Ok(())
        }
    }
}
