//! The `ringkv` command: runs a node (`serve`) and talks to one (everything else).

mod cli;

/// mimalloc: a replicated write allocates on every layer it crosses (frames,
/// requests, objects, keys); with glibc's allocator that was a tenth of the
/// servers' CPU, and its per-thread caches contended (BENCHMARKS.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    std::process::exit(cli::main());
}
