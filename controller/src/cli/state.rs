//! Where standalone mode keeps its state; shared by `run`, `get` and `describe`.

use std::path::PathBuf;

#[derive(Clone, Debug, clap::Args)]
pub struct StateArgs {
    /// Directory holding the state database and the audit key.
    #[arg(
        long,
        env = "INFRAPILOT_STATE_DIR",
        default_value = ".infrapilot",
        value_name = "DIR"
    )]
    pub state_dir: PathBuf,
    /// State database URL: `sqlite://PATH` or `postgres://USER:PASSWORD@HOST/DB`
    /// [default: SQLite at STATE_DIR/state.db].
    #[arg(long, env = "INFRAPILOT_STATE", value_name = "URL")]
    pub state: Option<String>,
}

impl StateArgs {
    pub fn url(&self) -> String {
        self.state.clone().unwrap_or_else(|| {
            crate::standalone::store::sqlite_url(&self.state_dir.join("state.db"))
        })
    }
}
