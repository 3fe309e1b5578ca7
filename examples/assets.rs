//! Writes dbsplice's manual pages (one per command) and its bash, zsh and
//! fish completions into a directory, generated from the command line's one
//! definition (`dbsplice::args`). `scripts/package` and `scripts/install` run
//! it:
//!
//! ```sh
//! cargo run --release --locked --example assets -- target/assets
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use clap::CommandFactory;

fn main() -> ExitCode {
    let Some(dir) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: assets DIRECTORY");
        return ExitCode::from(64);
    };
    let written = (|| -> std::io::Result<()> {
        std::fs::create_dir_all(&dir)?;
        clap_mangen::generate_to(dbsplice::args::Cli::command(), &dir)?;
        for shell in [
            clap_complete::Shell::Bash,
            clap_complete::Shell::Zsh,
            clap_complete::Shell::Fish,
        ] {
            clap_complete::generate_to(
                shell,
                &mut dbsplice::args::Cli::command(),
                "dbsplice",
                &dir,
            )?;
        }
        Ok(())
    })();
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("assets: writing to {}: {e}", dir.display());
            ExitCode::FAILURE
        }
    }
}
