fn main() -> std::process::ExitCode {
    infrapilot::cli::main()
}
