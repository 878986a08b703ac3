#!/usr/bin/env bash
# Benchmarks of btrfs-rollback (issue 5): rollback wall time against the shell-script way and
# against the raw-ioctl floor, on real btrfs in sparse loop images under target/bench/ (never a
# real disk), plus the footprint (static binary size, peak RSS, time of --version).
#
#   scripts/bench.sh           full run (about 10 minutes): writes docs/benchmarks.md and
#                              docs/benchmarks.svg; the size target is checked on the musl
#                              binary of scripts/musl.sh (the one NixOS users get) where
#                              it can be built, else on the glibc +crt-static one
#   scripts/bench.sh --smoke   reduced sizes, one run each (well under a minute after the
#                              build): writes target/bench/benchmarks.{md,svg}; CI runs this and
#                              asserts no time, only that every rollback gave a fresh root
#   --disk                     put the image a run works on in a file on the disk under
#                              target/bench/ (flushes reach the disk) instead of in memory
#   --cold                     as --disk, and drop it from the page cache before the run, so the
#                              filesystem is read from the disk as at boot (on a shared
#                              machine the other users' disk latency then swamps the small cases)
#   --report-only              rewrite the report from the files the last run left in
#                              target/bench/ (after a change to the report's layout)
#
# The report is written by scripts/bench_report.py (WORK-DIR OUT-DIR MODE) from those files.
# Needs root (loop devices, mount). Installs btrfs-progs, python3 and time with apt-get if
# missing. Runs in a private mount namespace of its own.
#
# Every timed run starts from an identical state: the scenario's prepared image (built once,
# under target/bench/img/) is copied (cp --sparse=always) to a tmpfs that this script mounts at
# target/bench/ram/ (to target/bench/ with --disk/--cold), then attached to a fresh loop device:
# the filesystem's own caches start empty. The three ways run interleaved: ours, baseline, floor,
# ours, baseline, floor, ... Each run mounts the top-level volume, rolls back, commits and
# unmounts; the wall time of the whole command is measured. After every run a fresh mount
# checks the result (root is a fresh snapshot of root-blank, nothing nested is left, the other
# subvolumes are untouched); a wrong result stops the benchmark.
#   ours      target/release/btrfs-rollback run --device DEV --mountpoint MNT
#   baseline  the snippet user configs use (below, written to target/bench/baseline.sh)
#   floor     target/release/examples/floor DEV MNT: the same ioctls with no tool around them
# (both binaries copied to target/bench/bin/ right after the build, and run from there)
# Also timed, the same way (a fresh copy of the image on a fresh loop device for every run, so
# the filesystem's caches start empty each time): `btrfs-rollback diff --device DEV --mountpoint
# MNT`, its stdout to a file, on two images: diff-N (N files in the blank, root a snapshot of
# it with 6 changes: 2 files modified, 2 created, 2 deleted; the output must be exactly those
# 6) and files-100000 (every file new in root: the worst case). A wrong output stops the
# benchmark.
set -euo pipefail
cd "$(dirname "$0")/.."

mode=full media=ram
for arg in "$@"; do
  case $arg in
    --smoke) mode=smoke ;;
    --disk) media=disk ;;
    --cold) media=cold ;;
    --report-only) mode=report ;;
    -h | --help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench: unknown argument $arg (use --smoke, --disk, --cold, --report-only)" >&2; exit 2 ;;
  esac
done

# --- the report: docs/benchmarks.{md,svg} (target/bench/ for --smoke) from the files of a run ---
report() { # work-dir out-dir mode
  echo "== report"
  python3 scripts/bench_report.py "$1" "$2" "$3"
}

if [ "$mode" = report ]; then # rewrite the report of the last run, from its files
  work=$PWD/target/bench
  [ -f "$work/machine.tsv" ] || { echo "bench: no run in $work to report on" >&2; exit 1; }
  mode=$(awk -F'\t' '$1 == "mode" {print $2}' "$work/machine.tsv")
  if [ "$mode" = full ]; then out=$PWD/docs; else out=$work; fi
  report "$work" "$out" "$mode"
  echo "== wrote $out/benchmarks.md and $out/benchmarks.svg"
  exit 0
fi

[ "$(id -u)" = 0 ] || { echo "bench: needs root (loop devices and mount): sudo $0" >&2; exit 1; }
need=()
command -v mkfs.btrfs >/dev/null || need+=(btrfs-progs)
command -v python3 >/dev/null || need+=(python3)
command -v losetup >/dev/null || need+=(mount)
[ -x /usr/bin/time ] || need+=(time)
if [ ${#need[@]} -gt 0 ]; then
  echo "bench: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# Work in a private mount namespace: a mount namespace that another process creates while one
# of our test filesystems is mounted would otherwise keep a copy of that mount alive after our
# umount (seen on a shared machine), and the next image, with the same filesystem UUID, would
# then not mount.
if [ -z "${BENCH_PRIVATE_NS:-}" ]; then
  exec env BENCH_PRIVATE_NS=1 unshare --mount --propagation private "$0" "$@"
fi

work=$PWD/target/bench
if [ "$mode" = full ] && [ -z "${BENCH_SCENARIOS:-}" ]; then out=$PWD/docs; else out=$work; fi

# --- scenarios: name, runs of ours and the floor, runs of the baseline[, runs of diff] ----------
# BENCH_SCENARIOS="nested-1000 1 1;chain-100 2 1;diff-2000 0 0 1" replaces the list (the report
# then goes to target/bench/, as with --smoke; BENCH_NOTE, a paragraph for its top).
if [ -n "${BENCH_SCENARIOS:-}" ]; then
  IFS=';' read -r -a scenarios <<<"$BENCH_SCENARIOS"
  if [ "$mode" = full ]; then mode=custom; fi
elif [ "$mode" = full ]; then
  scenarios=(
    "impermanence 9 9"
    "nested-10 9 9"
    "nested-100 9 7"
    "nested-1000 9 3"
    "nested-5000 5 1"
    "chain-100 7 5"
    "files-0 7 7"
    "files-10000 5 5 5"
    "files-100000 7 7 7"
    "diff-200000 0 0 7"
  )
else
  scenarios=(
    "impermanence 1 1"
    "nested-10 1 1"
    "nested-100 1 1"
    "diff-2000 0 0 1"
  )
fi

echo "== building (release)"
cargo build --release --quiet --bin btrfs-rollback --example floor
static=""
if [ "$mode" = full ]; then
  echo "== building the static binary (for its size)"
  RUSTFLAGS='-C target-feature=+crt-static' cargo build --release --quiet \
    --target x86_64-unknown-linux-gnu --bin btrfs-rollback
  static=$PWD/target/x86_64-unknown-linux-gnu/release/btrfs-rollback
  # The static binary NixOS users get (pkgsStatic: musl), for the size target; empty where
  # scripts/musl.sh cannot run (it says why).
  echo "== building the musl binary (scripts/musl.sh, for its size)"
  musl=$(scripts/musl.sh --print-bin 2>"$PWD/target/bench-musl.log" | tail -1) ||
    { echo "bench: scripts/musl.sh failed; see target/bench-musl.log" >&2; exit 1; }
fi

# --- the work area -----------------------------------------------------------------------------
mnt=$work/mnt chk=$work/check prep=$work/prep
loops=()
cleanup() {
  local m d
  for m in "$mnt" "$chk" "$prep"; do
    if mountpoint -q "$m" 2>/dev/null; then umount "$m"; fi
  done
  for d in "${loops[@]}"; do losetup -d "$d" 2>/dev/null || true; done
  rm -f "${runs:-$work}/run.img"
  if [ -n "${runs:-}" ] && mountpoint -q "$runs" 2>/dev/null; then umount "$runs"; fi
}
trap cleanup EXIT
cleanup
rm -rf "$work"
mkdir -p "$work/img" "$work/bin" "$mnt" "$chk" "$prep" "$out"
# Copies, so that a rebuild in the tree during the run does not change what is measured.
cp target/release/btrfs-rollback target/release/examples/floor "$work/bin/"
# Where the copy of an image that a run works on lives: by default in memory (a tmpfs mounted in
# this private namespace), so that flushes cost what they cost on a fast SSD and the other
# users of a shared machine's disk do not add their latency; with --disk or --cold in a file
# under target/bench/ on the disk.
runs=$work
if [ "$media" = ram ]; then
  runs=$work/ram
  mkdir -p "$runs"
  mount -t tmpfs -o size=12G,mode=700 bench-ram "$runs"
fi
ours=$work/bin/btrfs-rollback
floor=$work/bin/floor
if [ -n "$static" ]; then cp "$static" "$work/bin/btrfs-rollback-static"; static=$work/bin/btrfs-rollback-static; fi
attach() { # image: attach it to a free loop device, named in $attached (and in $loops)
  attached=$(losetup -f --show "$1")
  loops+=("$attached")
}
detach() {
  losetup -d "$1"
  local keep=() d
  for d in "${loops[@]}"; do [ "$d" = "$1" ] || keep+=("$d"); done
  loops=("${keep[@]}")
}

# The baseline: what user configs do (the NixOS wiki's impermanence snippet, depth-first over
# `btrfs subvolume list -o`), then a snapshot of the blank and a final commit. Children are
# deleted before their parent at every depth, so it is correct for deep nesting too.
cat >"$work/baseline.sh" <<'EOF'
#!/usr/bin/env bash
set -euo pipefail
dev=$1 mnt=$2
mount -t btrfs -o subvolid=5 "$dev" "$mnt"
delete_subvolume_recursively() {
  IFS=$'\n'
  for i in $(btrfs subvolume list -o "$1" | cut -f 9- -d ' '); do
    delete_subvolume_recursively "$mnt/$i"
  done
  btrfs subvolume delete "$1" >/dev/null
}
delete_subvolume_recursively "$mnt/root"
btrfs subvolume snapshot "$mnt/root-blank" "$mnt/root" >/dev/null
btrfs filesystem sync "$mnt"
umount "$mnt"
EOF

# Fast fixture building: subvolumes by BTRFS_IOC_SUBVOL_CREATE, files by plain writes.
cat >"$work/mk.py" <<'EOF'
import fcntl, os, struct, sys
# BTRFS_IOC_SUBVOL_CREATE = _IOW(0x94, 14, struct btrfs_ioctl_vol_args), 4096 bytes
SUBVOL_CREATE = 0x5000940E
def subvol(parent, name):
    fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.ioctl(fd, SUBVOL_CREATE, bytearray(struct.pack("q4088s", 0, name.encode())))
    finally:
        os.close(fd)
what, where, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
if what == "pile":      # n subvolumes side by side (docker's btrfs driver)
    os.makedirs(where, exist_ok=True)
    fd = os.open(where, os.O_RDONLY | os.O_DIRECTORY)
    for i in range(n):
        fcntl.ioctl(fd, SUBVOL_CREATE, bytearray(struct.pack("q4088s", 0, b"layer%05d" % i)))
elif what == "chain":   # n subvolumes, each inside the previous one
    for i in range(n):
        subvol(where, "c")
        where = os.path.join(where, "c")
elif what == "files":   # n small files, 1000 to a directory
    for i in range(n):
        d = os.path.join(where, "d%03d" % (i // 1000))
        if i % 1000 == 0:
            os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "f%06d" % i), "w") as f:
            f.write("state nobody persisted %d\n" % i)
EOF

# Build the prepared image of a scenario: an impermanence install (root, its read-only blank,
# persist, nix), then what one boot leaves in root.
prepare() {
  local name=$1 img=$work/img/$1.img dev
  truncate -s 8G "$img"
  mkfs.btrfs -q -f "$img" >/dev/null
  attach "$img"
  dev=$attached
  mount -o subvolid=5 "$dev" "$prep"
  btrfs -q subvolume create "$prep/root"
  mkdir -p "$prep/root/etc" "$prep/root/var/lib" "$prep/root/var/log" "$prep/root/tmp"
  echo "installed system" >"$prep/root/etc/blank-marker"
  if [[ $name = diff-* ]]; then # the installed system's files, in the blank
    python3 "$work/mk.py" files "$prep/root/usr/share/files" "${name#diff-}"
  fi
  btrfs -q subvolume snapshot -r "$prep/root" "$prep/root-blank"
  btrfs -q subvolume create "$prep/persist"
  btrfs -q subvolume create "$prep/nix"
  echo "kept across boots" >"$prep/persist/kept"
  echo "state nobody persisted" >"$prep/root/etc/dirty"
  local r=$prep/root
  case $name in
    impermanence)
      # docker with a few layers, a container under machines (two deep), a read-only image
      python3 "$work/mk.py" files "$r/var/log" 500
      btrfs -q subvolume create "$r/var/lib/docker"
      python3 "$work/mk.py" pile "$r/var/lib/docker/btrfs/subvolumes" 3
      btrfs -q subvolume create "$r/var/lib/machines"
      btrfs -q subvolume create "$r/var/lib/machines/container"
      mkdir -p "$r/var/lib/portables"
      btrfs -q subvolume create "$r/var/lib/portables/image"
      btrfs property set -ts "$r/var/lib/portables/image" ro true
      ;;
    nested-*) python3 "$work/mk.py" pile "$r/var/lib/docker/btrfs/subvolumes" "${name#nested-}" ;;
    chain-*) python3 "$work/mk.py" chain "$r" "${name#chain-}" ;;
    files-*) python3 "$work/mk.py" files "$r/var/tmp/files" "${name#files-}" ;;
    diff-*)
      # A booted system: root is a fresh snapshot of the blank (holding its N files), then
      # 2 files modified, 2 created (one of them etc/dirty), 2 deleted. diff must report
      # exactly these ($img.expect) and nothing else.
      local n=${name#diff-} f=usr/share/files a b
      a=$(printf 'd%03d/f%06d' 0 0) b=$(printf 'd%03d/f%06d' $(((n - 1) / 1000)) $((n - 1)))
      btrfs -q subvolume delete "$r"
      btrfs -q subvolume snapshot "$prep/root-blank" "$r"
      echo "changed at boot" >>"$r/$f/$a"
      echo "changed at boot" >>"$r/$f/$b"
      echo "state nobody persisted" >"$r/etc/dirty"
      echo "boot log" >"$r/var/log/boot.log"
      rm "$r/$f/$(printf 'd%03d/f%06d' 0 1)" "$r/$f/$(printf 'd%03d/f%06d' $(((n - 2) / 1000)) $((n - 2)))"
      printf '%s\n' "~ /$f/$a" "~ /$f/$b" "+ /etc/dirty" "+ /var/log/boot.log" \
        "- /$f/$(printf 'd%03d/f%06d' 0 1)" "- /$f/$(printf 'd%03d/f%06d' $(((n - 2) / 1000)) $((n - 2)))" |
        sort >"$img.expect"
      ;;
    *) echo "bench: unknown scenario $name" >&2; exit 1 ;;
  esac
  btrfs subvolume list -o "$r" >/dev/null
  btrfs filesystem sync "$prep"
  umount "$prep"
  detach "$dev"
}

# After a run: root is a fresh snapshot of the blank, nothing of the old root is left, the
# other subvolumes are untouched.
verify() {
  local dev=$1 what=$2 subvols
  mount -o subvolid=5 "$dev" "$chk"
  subvols=$(btrfs subvolume list "$chk" | awk '{print $NF}' | sort | tr '\n' ' ')
  if [ "$subvols" != "nix persist root root-blank " ] || [ ! -f "$chk/root/etc/blank-marker" ] ||
    [ -e "$chk/root/etc/dirty" ] || [ ! -f "$chk/persist/kept" ]; then
    echo "bench: $what did not leave a fresh root: subvolumes: $subvols" >&2
    ls -la "$chk" "$chk/root/etc" >&2 || true
    umount "$chk"
    exit 1
  fi
  umount "$chk"
}

# Time one command: wall time in ms; the CPU time (user + system, ms) of it and its children
# (wait4); the peak RSS (KiB) of its largest process as GNU time reports it (ru_maxrss; from
# Python's own wait4 it would count the Python pages the child had before exec).
cat >"$work/timeit.py" <<'EOF'
import os, subprocess, sys, time
out, cmd = sys.argv[1], sys.argv[2:]
t0 = time.perf_counter()
p = subprocess.Popen(["/usr/bin/time", "-f", "%M", "-o", out + ".rss"] + cmd)
_, status, ru = os.wait4(p.pid, 0)
wall = (time.perf_counter() - t0) * 1e3
rc = os.waitstatus_to_exitcode(status)
rss = int(open(out + ".rss").read().split()[-1])
with open(out, "w") as f:
    f.write("%.3f %d %.1f %d\n" % (wall, rss, (ru.ru_utime + ru.ru_stime) * 1e3, rc))
sys.exit(rc)
EOF

run_once() { # scenario tool run
  local sc=$1 tool=$2 i=$3 run=$runs/run.img dev cmd
  rm -f "$run" # a new file each time, never one a loop device may still hold
  cp --sparse=always "$work/img/$sc.img" "$run"
  sync "$run"
  if [ "$media" = cold ]; then
    dd if="$run" iflag=nocache count=0 status=none # drop the copy from the page cache
  fi
  sync
  attach "$run"
  dev=$attached
  case $tool in
    ours) cmd=("$ours" run --device "$dev" --mountpoint "$mnt") ;;
    baseline) cmd=(bash "$work/baseline.sh" "$dev" "$mnt") ;;
    floor) cmd=("$floor" "$dev" "$mnt") ;;
  esac
  echo "--- $sc $tool $i: ${cmd[*]}" >>"$work/runs.log"
  if ! nice -n -10 python3 "$work/timeit.py" "$work/t" "${cmd[@]}" >>"$work/runs.log" 2>&1; then
    echo "bench: $sc: $tool failed; see $work/runs.log" >&2
    tail -20 "$work/runs.log" >&2
    exit 1
  fi
  verify "$dev" "$sc/$tool"
  detach "$dev"
  read -r ms rss cpu _ <"$work/t"
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$sc" "$tool" "$i" "$ms" "$rss" "$cpu" >>"$work/results.tsv"
  printf '  %-15s %-8s run %d: %9.1f ms  %6d KiB  cpu %7.1f ms\n' "$sc" "$tool" "$i" "$ms" "$rss" "$cpu"
}

diff_once() { # scenario run: time `btrfs-rollback diff` on a fresh copy of the image, check it
  local sc=$1 i=$2 run=$runs/run.img out=$runs/diff.out dev summary got
  rm -f "$run"
  cp --sparse=always "$work/img/$sc.img" "$run"
  sync "$run"
  if [ "$media" = cold ]; then
    dd if="$run" iflag=nocache count=0 status=none
  fi
  sync
  attach "$run"
  dev=$attached
  echo "--- $sc diff $i: $ours diff --device $dev --mountpoint $mnt >$out" >>"$work/runs.log"
  if ! nice -n -10 python3 "$work/timeit.py" "$work/t" "$ours" diff --device "$dev" --mountpoint "$mnt" \
    >"$out" 2>>"$work/runs.log"; then
    echo "bench: $sc: diff failed; see $work/runs.log" >&2
    tail -20 "$work/runs.log" >&2
    exit 1
  fi
  if mountpoint -q "$mnt"; then
    echo "bench: $sc: diff left $mnt mounted" >&2
    exit 1
  fi
  detach "$dev"
  summary=$(tail -1 "$out")
  echo "$summary ($(($(wc -l <"$out") - 1)) entries listed)" >>"$work/runs.log"
  # "N new, N changed, N metadata only, N gone, N subvolumes" -> N N N N N
  got=$(sed -n 's/^\([0-9]*\) new, \([0-9]*\) changed, \([0-9]*\) metadata only, \([0-9]*\) gone, \([0-9]*\) subvolumes$/\1 \2 \3 \4 \5/p' <<<"$summary")
  [ -n "$got" ] || { echo "bench: $sc: diff printed no summary line: $summary" >&2; exit 1; }
  local n=${sc#*-} want
  case $sc in
    diff-*)
      want="2 2 0 2 0"
      if ! head -n -1 "$out" | sort | cmp -s - "$work/img/$sc.img.expect"; then
        echo "bench: $sc: diff did not report exactly the 6 changes:" >&2
        head -n -1 "$out" | sort | diff "$work/img/$sc.img.expect" - >&2 || true
        exit 1
      fi
      ;;
    files-*) # all new: etc/dirty, var/tmp, var/tmp/files, its directories of 1000 and the files
      if [ "$n" = 0 ]; then want="1 0 0 0 0"; else want="$((n + (n + 999) / 1000 + 3)) 0 0 0 0"; fi ;;
    *) want="" ;;
  esac
  if [ -n "$want" ] && [ "$got" != "$want" ]; then
    echo "bench: $sc: diff reported $summary (expected new/changed/metadata/gone/subvolumes $want)" >&2
    exit 1
  fi
  read -r ms rss cpu _ <"$work/t"
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$sc" "$i" "$ms" "$rss" "$cpu" "${got// /$'\t'}" >>"$work/diff.tsv"
  printf '  %-15s %-8s run %d: %9.1f ms  %6d KiB  cpu %7.1f ms  (%s)\n' "$sc" diff "$i" "$ms" "$rss" "$cpu" "$summary"
}

# --- machine facts ----------------------------------------------------------------------------
{
  echo "date	$(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "nproc	$(nproc)"
  echo "cpu	$(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
  echo "mem	$(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)"
  echo "kernel	$(uname -r)"
  echo "btrfs-progs	$(btrfs --version | head -1)"
  echo "rustc	$(rustc --version)"
  changed=$(git status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null | awk '{print $2}' | tr '\n' ' ')
  echo "commit	$(git rev-parse --short HEAD 2>/dev/null || echo unknown)${changed:+ with uncommitted changes to ${changed% }}"
  echo "disk	$(findmnt -no FSTYPE -T "$work") on $(findmnt -no SOURCE -T "$work") (loop devices on sparse image files)"
  echo "load_before	$(cut -d' ' -f1-3 /proc/loadavg)"
  echo "mode	$mode"
  echo "media	$media"
  echo "scenarios	${BENCH_SCENARIOS:-}"
  echo "note	${BENCH_NOTE:-}"
} >"$work/machine.tsv"
printf 'scenario\ttool\trun\tms\trss_kib\tcpu_ms\n' >"$work/results.tsv"
printf 'scenario\trun\tms\trss_kib\tcpu_ms\tnew\tchanged\tmetadata\tgone\tsubvolumes\n' >"$work/diff.tsv"

# --- rollback wall time -----------------------------------------------------------------------
for s in "${scenarios[@]}"; do
  read -r sc n nb nd <<<"$s"
  nd=${nd:-0}
  echo "== $sc: preparing the image"
  prepare "$sc"
  if [ "$n" -gt 0 ]; then echo "== $sc: $n run(s) of ours and the floor, $nb of the baseline, interleaved"; fi
  for ((i = 1; i <= n; i++)); do
    run_once "$sc" ours "$i"
    if [ "$i" -le "$nb" ]; then run_once "$sc" baseline "$i"; fi
    run_once "$sc" floor "$i"
  done
  if [ "$nd" -gt 0 ]; then echo "== $sc: $nd run(s) of diff"; fi
  for ((i = 1; i <= nd; i++)); do diff_once "$sc" "$i"; done
  if [ "$mode" = full ]; then rm -f "$work/img/$sc.img" "$work/img/$sc.img.expect"; fi
done
echo "load_after	$(cut -d' ' -f1-3 /proc/loadavg)" >>"$work/machine.tsv"

# --- footprint --------------------------------------------------------------------------------
echo "== footprint"
{
  if [ -n "$static" ]; then
    echo "static_size	$(stat -c %s "$static")"
  fi
  if [ -n "${musl:-}" ]; then
    echo "musl_size	$(stat -c %s "$musl")"
  fi
  echo "release_size	$(stat -c %s "$ours")"
  if [ -n "$static" ]; then
    # What the toolchain alone costs: a static program that only prints, built the same way.
    echo 'fn main() { println!("btrfs-rollback"); }' >"$work/empty.rs"
    rustc --edition 2021 -C opt-level=s -C panic=abort -C strip=symbols -C codegen-units=1 \
      -C target-feature=+crt-static --target x86_64-unknown-linux-gnu -o "$work/empty" "$work/empty.rs"
    echo "empty_static_size	$(stat -c %s "$work/empty")"
  fi
  python3 - "$ours" <<'EOF'
import subprocess, sys, time
ts = []
for _ in range(200):
    t0 = time.perf_counter()
    subprocess.run([sys.argv[1], "--version"], stdout=subprocess.DEVNULL, check=True)
    ts.append((time.perf_counter() - t0) * 1e3)
ts.sort()
print("version_ms\t%.3f\t%.3f\t%.3f" % (ts[len(ts) // 2], ts[0], ts[-1]))
EOF
} >"$work/footprint.tsv"
cat "$work/footprint.tsv"

report "$work" "$out" "$mode"
echo "== wrote $out/benchmarks.md and $out/benchmarks.svg"
