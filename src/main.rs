fn main() -> std::process::ExitCode {
    btrfs_rollback::cli::main()
}
