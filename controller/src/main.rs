use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--version" | "-V") => {
            #[allow(clippy::print_stdout)]
            {
                println!("infrapilot {}", infrapilot::VERSION);
            }
            ExitCode::SUCCESS
        }
        // The runtime (`run`, `get`, `crd`, ...) is the next issue's work; until it lands the
        // binary says so plainly instead of pretending to reconcile anything.
        _ => {
            eprintln!(
                "infrapilot {}: the operator runtime has not landed yet; only --version works",
                infrapilot::VERSION
            );
            ExitCode::from(2)
        }
    }
}
