//! btrfs-rollback: replace a btrfs `root` subvolume, and everything nested in it, with a fresh
//! snapshot of a blank one, crash-safely, from stage 1 of the boot or a rescue shell.
//!
//! `unsafe` lives in `ioctl.rs` only.
#![deny(unsafe_code)]

pub mod beneath;
pub mod cli;
pub mod clock;
pub mod config;
pub mod device;
pub mod diff;
pub mod erase;
pub mod exchange;
pub mod failure;
pub mod forget;
pub mod inspect;
pub mod ioctl;
pub mod items;
pub mod json;
pub mod list;
pub mod logging;
pub mod logview;
pub mod mount;
pub mod mountinfo;
pub mod names;
pub mod plan;
pub mod render;
pub mod restore;
pub mod rollback;
pub mod session;
pub mod subvolume;
