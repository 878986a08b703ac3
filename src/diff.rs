//! `btrfs-rollback diff`: what the next rollback erases.

use anyhow::{bail, Result};

use crate::rollback::Target;

pub fn diff(_target: &Target, _exclude: &[String], _json: bool) -> Result<()> {
    bail!("diff is not implemented yet")
}
