//! `ringkv token` and `ringkv certs`: what an operator makes before starting a
//! secure cluster. Nothing here talks to a node.

use std::path::Path;

use serde_json::json;

use super::args::{CertsOp, RoleArg, TokenOp};
use super::client_cmd::{out, print_json};
use super::{EXIT_OK, Failure};
use ringkv::auth::{Role, token};
use ringkv::tls::issue::{self, Holder};

/// `ringkv token create`: the token on the first line, the auth-file line on the
/// second.
pub fn token(op: TokenOp) -> Result<i32, Failure> {
    let TokenOp::Create { role, name, json } = op;
    let role = match role {
        RoleArg::Read => Role::Read,
        RoleArg::Write => Role::Write,
        RoleArg::Admin => Role::Admin,
    };
    let name = name.unwrap_or_else(|| role.name().to_string());
    if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(Failure::usage(
            "--name must be non-empty, without spaces or control characters",
        ));
    }
    let secret = token::generate();
    let line = format!(
        "{name} {role} {}",
        token::hex(&token::hash(secret.as_bytes()))
    );
    if json {
        print_json(
            &json!({"token": secret, "auth_line": line, "name": name, "role": role.name()}),
        )?;
    } else {
        out(secret.as_bytes())?;
        out(line.as_bytes())?;
    }
    Ok(EXIT_OK)
}

/// Writes `text` to `path`, refusing to replace a file: a second `certs init`
/// must not silently orphan every certificate the first CA signed. Keys are
/// readable by their owner only.
fn write_new(path: &Path, text: &str, private: bool) -> Result<(), Failure> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => Failure::usage(format!(
                "{} exists already: remove it first to make a new one",
                path.display()
            )),
            _ => Failure::other(format!("cannot create {}: {e}", path.display())),
        })?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| Failure::other(format!("cannot write {}: {e}", path.display())))
}

fn read(path: &Path) -> Result<String, Failure> {
    std::fs::read_to_string(path).map_err(|e| {
        Failure::usage(format!(
            "cannot read {}: {e} (make the CA first: ringkv certs init --dir DIR)",
            path.display()
        ))
    })
}

fn check_days(days: i64) -> Result<(), Failure> {
    if !(1..=36_500).contains(&days) {
        return Err(Failure::usage("--days must be between 1 and 36500"));
    }
    Ok(())
}

fn check_name(name: &str) -> Result<(), Failure> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
    if !ok {
        return Err(Failure::usage(format!(
            "{name:?}: a certificate name is letters, digits, '-', '.' and '_' (it names the files)"
        )));
    }
    Ok(())
}

/// `ringkv certs init|node|client`.
pub fn certs(op: CertsOp) -> Result<i32, Failure> {
    let tls_err = |e: ringkv::tls::TlsError| Failure::usage(e.to_string());
    let written = match op {
        CertsOp::Init { dir, days } => {
            check_days(days)?;
            std::fs::create_dir_all(&dir)
                .map_err(|e| Failure::other(format!("cannot create {}: {e}", dir.display())))?;
            let ca = issue::ca(days).map_err(tls_err)?;
            let (crt, key) = (dir.join("ca.crt"), dir.join("ca.key"));
            if crt.exists() || key.exists() {
                return Err(Failure::usage(format!(
                    "{} already holds a CA: remove ca.crt and ca.key first to make a new one",
                    dir.display()
                )));
            }
            write_new(&key, &ca.key_pem, true)?;
            write_new(&crt, &ca.cert_pem, false)?;
            vec![crt, key]
        }
        CertsOp::Node {
            name,
            dir,
            hosts,
            days,
        } => {
            check_days(days)?;
            check_name(&name)?;
            let mut all = vec![name.clone(), "localhost".into(), "127.0.0.1".into()];
            for h in hosts {
                if !all.contains(&h) {
                    all.push(h);
                }
            }
            issue_into(&dir, Holder::Node, &name, &all, days)?
        }
        CertsOp::Client { name, dir, days } => {
            check_days(days)?;
            check_name(&name)?;
            issue_into(&dir, Holder::Client, &name, &[], days)?
        }
    };
    for path in &written {
        out(path.display().to_string().as_bytes())?;
    }
    Ok(EXIT_OK)
}

fn issue_into(
    dir: &Path,
    holder: Holder,
    name: &str,
    hosts: &[String],
    days: i64,
) -> Result<Vec<std::path::PathBuf>, Failure> {
    let ca_cert = read(&dir.join("ca.crt"))?;
    let ca_key = read(&dir.join("ca.key"))?;
    let issued = issue::signed(&ca_cert, &ca_key, holder, name, hosts, days)
        .map_err(|e| Failure::usage(e.to_string()))?;
    let (crt, key) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    if crt.exists() || key.exists() {
        return Err(Failure::usage(format!(
            "{} or {} exists already: remove them first to make new ones",
            crt.display(),
            key.display()
        )));
    }
    write_new(&key, &issued.key_pem, true)?;
    write_new(&crt, &issued.cert_pem, false)?;
    Ok(vec![crt, key])
}
