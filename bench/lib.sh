# bench/lib.sh — what bench/many-recipes.sh and bench/boot-test-vs-qemu.sh share (sourced).
#
# bench_setup NAME "$@": parses --keep / --help (the calling script's header comment is its
# help), checks root and RUNS, builds the release binary if WEBAKE is not given and missing,
# makes the scratch directory $SCRATCH (removed on exit unless --keep, or a failure, also in
# a subshell, ran `keep_scratch`) with a copy of webake and webake-agent in $SCRATCH/bin, so a rebuild during the run
# changes nothing measured. Sets REPO, RUNS, KEEP, SCRATCH.
bench_setup() {
    local name=$1; shift
    KEEP=0
    for a in "$@"; do
        case "$a" in
            --keep) KEEP=1 ;;
            -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
            *) echo "unknown argument: $a" >&2; exit 2 ;;
        esac
    done
    [ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 2; }
    REPO=$(cd "$(dirname "$0")/.." && pwd)
    RUNS=${RUNS:-3}
    case "$RUNS" in ''|*[!0-9]*|0) echo "RUNS must be a positive number" >&2; exit 2 ;; esac
    local src=${WEBAKE:-$REPO/target/release/webake}
    [ -x "$src" ] || (cd "$REPO" && cargo build --release -p webake -p webake-agent)
    SCRATCH=$(mktemp -d "${BENCH_TMP:-/var/tmp}/webake-bench-$name.XXXXXX")
    trap 'if [ "$KEEP" = 1 ] || [ -e "$SCRATCH/.keep" ]; then echo "kept $SCRATCH" >&2; else rm -rf "$SCRATCH"; fi' EXIT
    mkdir -p "$SCRATCH/bin"
    cp "$src" "$SCRATCH/bin/webake"
    cp "$(dirname "$src")/webake-agent" "$SCRATCH/bin/webake-agent"
}

# keep_scratch: keep the scratch directory for its logs (works from a subshell).
keep_scratch() { touch "$SCRATCH/.keep"; }

# median: of the numbers on stdin, one per line.
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

# seconds_since T0: wall seconds since `date +%s.%N` gave T0, one decimal.
seconds_since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f\n", b - a}'; }

# verdict RATIO LIMIT: "met" or "NOT met".
verdict() { awk -v r="$1" -v l="$2" 'BEGIN {print (r <= l) ? "met" : "NOT met"}'; }

# ratio A B: A / B to three decimals.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.3f", a / b}'; }
