//! The `relay` binary: everything lives in the library; see `cli/mod.rs`.

fn main() {
    std::process::exit(relay::cli::main());
}
