//! Records the commit the binary is built from, for `dbsplice_build_info` and
//! `dbsplice --version`: `DBSPLICE_COMMIT` when the packager sets it, else
//! what git says of the checkout, else "unknown" (a source tarball).

use std::path::Path;
use std::process::Command;

fn main() {
    let commit = std::env::var("DBSPLICE_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty())
        .or_else(git_commit)
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=DBSPLICE_COMMIT={}", commit.trim());
    println!("cargo:rerun-if-env-changed=DBSPLICE_COMMIT");
    // HEAD changes on checkout, the branch's ref on commit.
    for path in [".git/HEAD", ".git/refs/heads", ".git/packed-refs"] {
        if Path::new(path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
}

fn git_commit() -> Option<String> {
    let out = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .filter(|c| !c.is_empty())
}
