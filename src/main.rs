//! The `kmsfs` command line: parses arguments, runs one subcommand, and turns its error
//! into a message, a hint and an exit code.

fn main() {
    println!("kmsfs {}", env!("CARGO_PKG_VERSION"));
}
