//! The `interdict` endpoint binary: agent and admin CLI. All logic lives in the library.
fn main() -> std::process::ExitCode {
    interdict::cli::main()
}
