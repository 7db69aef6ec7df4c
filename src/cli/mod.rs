//! Command-line interface. The contract (flags, output, exit codes) is relied on by
//! scripts: extend it, never break it.
//!
//! Exit codes: 0 ok, 1 not found, 2 usage error or bad input, 3 unavailable, 4 other,
//! 5 not authorized.

mod args;
mod client_cmd;
mod dev;
mod local;
mod ops_cmd;
mod security_cmd;
mod serve;

use clap::Parser;

/// Exit code: success.
pub const EXIT_OK: i32 = 0;
/// Exit code: the key (or member) does not exist.
pub const EXIT_NOT_FOUND: i32 = 1;
/// Exit code: usage error or input the server refused.
pub const EXIT_USAGE: i32 = 2;
/// Exit code: no node reachable, or quorum not reached.
pub const EXIT_UNAVAILABLE: i32 = 3;
/// Exit code: anything else.
pub const EXIT_OTHER: i32 = 4;
/// Exit code: the node refused the token (none, unknown, or a role too small).
pub const EXIT_NOT_AUTHORIZED: i32 = 5;

/// A failure with its exit code and one line for stderr.
#[derive(Debug)]
pub struct Failure {
    /// Exit code.
    pub code: i32,
    /// The message.
    pub message: String,
}

impl Failure {
    fn usage(message: impl Into<String>) -> Self {
        Failure {
            code: EXIT_USAGE,
            message: message.into(),
        }
    }
    fn other(message: impl Into<String>) -> Self {
        Failure {
            code: EXIT_OTHER,
            message: message.into(),
        }
    }
}

impl From<ringkv::ClientError> for Failure {
    fn from(e: ringkv::ClientError) -> Self {
        use ringkv::ClientError;
        use ringkv::rpc::api::ErrorClass;
        let code = match &e {
            ClientError::Connect { .. } | ClientError::Unavailable { .. } => EXIT_UNAVAILABLE,
            ClientError::NotAuthorized { .. } => EXIT_NOT_AUTHORIZED,
            ClientError::Api(api) => match api.class() {
                ErrorClass::Denied => EXIT_NOT_AUTHORIZED,
                ErrorClass::Invalid => EXIT_USAGE,
                ErrorClass::Unavailable => EXIT_UNAVAILABLE,
                ErrorClass::Failed => EXIT_OTHER,
            },
        };
        Failure {
            code,
            message: e.to_string(),
        }
    }
}

/// The cluster secret from `file`, else from `RINGKV_CLUSTER_SECRET`; `None` if
/// neither is given.
fn read_secret(file: Option<&std::path::Path>) -> Result<Option<Vec<u8>>, Failure> {
    let secret = match file {
        Some(path) => {
            // Like ssh with a private key: a secret anyone on the machine can read
            // is no secret. Group access is allowed (Kubernetes mounts a Secret
            // group-readable under fsGroup).
            use std::os::unix::fs::PermissionsExt;
            if let Ok(meta) = std::fs::metadata(path)
                && meta.permissions().mode() & 0o007 != 0
            {
                return Err(Failure::usage(format!(
                    "cluster secret {} is readable by others (mode {:o}): chmod 600 it",
                    path.display(),
                    meta.permissions().mode() & 0o777
                )));
            }
            let bytes = std::fs::read(path).map_err(|e| {
                Failure::usage(format!(
                    "cannot read cluster secret {}: {e}",
                    path.display()
                ))
            })?;
            Some(bytes.trim_ascii().to_vec())
        }
        None => std::env::var("RINGKV_CLUSTER_SECRET")
            .ok()
            .map(|s| s.trim().as_bytes().to_vec()),
    };
    match secret {
        Some(s) if s.len() < 16 => Err(Failure::usage(
            "the cluster secret must be at least 16 bytes",
        )),
        other => Ok(other),
    }
}

/// Parses arguments, runs the command, returns the exit code.
pub fn main() -> i32 {
    let cli = match args::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { EXIT_OK };
            let _ = e.print();
            return code;
        }
    };
    let outcome = match cli.command {
        args::Command::Serve(a) => serve::run(*a),
        args::Command::Dev(a) => dev::run(a),
        other => client_cmd::run(other),
    };
    match outcome {
        Ok(code) => code,
        Err(f) => {
            let line = f.message.replace('\n', " ");
            eprintln!("error: {line}");
            f.code
        }
    }
}
