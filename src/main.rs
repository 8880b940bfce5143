//! The `relay` binary: everything lives in the library; see `cli.rs`.

fn main() {
    std::process::exit(relay::cli::main());
}
