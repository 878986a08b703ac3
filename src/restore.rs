//! `btrfs-rollback restore NAME`: make a kept old root the root for the next boot.

use std::ffi::OsStr;

use anyhow::{bail, Result};

use crate::rollback::{Outcome, Target};

pub fn restore(_target: &Target, _name: &OsStr) -> Result<Outcome> {
    bail!("restore is not implemented yet")
}
