//! The `ringkv` command: runs a node (`serve`) and talks to one (everything else).

mod cli;

fn main() {
    std::process::exit(cli::main());
}
