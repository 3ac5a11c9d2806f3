//! Where the state database is; shared by `run`, `get`, `describe` and `audit`.

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
        self.state
            .clone()
            .unwrap_or_else(|| crate::state::sqlite_url(&self.state_dir.join("state.db")))
    }

    /// The state database an operator made, for the commands that read it.
    pub async fn open_existing(&self) -> anyhow::Result<crate::state::Database> {
        crate::state::Database::open_existing(&self.url()).await
    }
}
