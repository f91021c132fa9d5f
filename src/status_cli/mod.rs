//! `keyrelay status` (in progress).
use std::process::ExitCode;

use crate::cli::{Cli, StatusArgs};

pub fn run(_cli: &Cli, _args: &StatusArgs) -> ExitCode {
    ExitCode::FAILURE
}
