#!/usr/bin/env bash
# Builds keygate with profile-guided optimisation, as the container image ships it:
#
#   scripts/build-pgo.sh            # → target/pgo/keygate (the path is printed last)
#
# 1. a release build instrumented to count what runs (-Cprofile-generate);
# 2. the training run, scripts/pgo-train.sh: that build serves chat completions, streams,
#    model lists and refusals over HTTP/1.1 and HTTP/2, minimal and production configs;
# 3. llvm-profdata (rustup's llvm-tools, installed if missing) merges the counts;
# 4. the release build again, laid out and inlined by those counts (-Cprofile-use);
# 5. when LLVM's BOLT is installed (Debian: `apt-get install bolt-19`; the container image
#    does): that binary instrumented by llvm-bolt, the same training run again, and
#    llvm-bolt lays the binary out from what ran; the result is checked with the training
#    run once more (every answer's status) and shipped. Without BOLT the step is skipped,
#    and said. BOLT=0 skips it too; LLVM_BOLT names the llvm-bolt binary.
#
# Why: a request runs through more code than fits the CPU's instruction cache (hyper, tokio,
# the stages), and the counts let the compiler put the hot paths together and the cold ones
# aside. The load harness's callgrind table (benches/RESULTS.md) measures both builds on its
# request: about 23% fewer instructions and a third fewer instruction-cache misses per
# request than the plain release build. The compiler places code within a function and
# splits off cold functions, but lays out the functions themselves in source order; BOLT
# orders the functions that run together, across crates, and moves the cold blocks of hot
# functions out of their way: 5% fewer instruction-cache misses per request on top of the
# profile (29% on a plain build); the same table's `keygate-pgo-only` row is the binary
# before it.
# Both builds are from scratch in their own target directories (about twice a release
# build's time); RUSTFLAGS, if set, are kept. Needs curl and, for the training run's
# ports, nothing else: everything is on 127.0.0.1. PGO_DIR (target/pgo) is where it works.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=$(realpath -m "${PGO_DIR:-target/pgo}")
mkdir -p "$OUT"
log() { printf '[build-pgo %s] %s\n' "$(date +%T)" "$*" >&2; }

host=$(rustc -vV | sed -n 's/^host: //p')
PROFDATA="$(rustc --print sysroot)/lib/rustlib/$host/bin/llvm-profdata"
if [[ ! -x "$PROFDATA" ]]; then
    log "installing llvm-tools (llvm-profdata) with rustup"
    rustup component add llvm-tools
fi
[[ -x "$PROFDATA" ]] || {
    log "no llvm-profdata at $PROFDATA"
    exit 1
}

# BOLT, if wanted and installed: the newest llvm-bolt on PATH or in /usr/lib/llvm-*/bin.
BOLT_BIN=""
if [[ "${BOLT:-1}" != 0 ]]; then
    BOLT_BIN=${LLVM_BOLT:-$(command -v llvm-bolt || ls /usr/lib/llvm-*/bin/llvm-bolt 2>/dev/null | sort -V | tail -1 || true)}
    if [[ -z "$BOLT_BIN" || ! -x "$BOLT_BIN" ]]; then
        log "no llvm-bolt (apt-get install bolt-19): the binary will not be laid out by BOLT"
        BOLT_BIN=""
    fi
fi
# llvm-bolt moves functions only in a binary that kept its relocations.
RELOCS=""
[[ -n "$BOLT_BIN" ]] && RELOCS="-Clink-arg=-Wl,--emit-relocs"

rm -rf "$OUT/raw" "$OUT/bolt"
log "1/4 instrumented build"
RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-generate=$OUT/raw" \
    cargo build --release --locked --bin keygate --target-dir "$OUT/instrumented"
log "2/4 training run"
bash scripts/pgo-train.sh "$OUT/instrumented/release/keygate" >&2
log "3/4 merging the profiles"
"$PROFDATA" merge -o "$OUT/keygate.profdata" "$OUT"/raw/*.profraw
log "4/4 optimised build"
RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-use=$OUT/keygate.profdata $RELOCS" \
    cargo build --release --locked --bin keygate --target-dir "$OUT/optimized"
BUILT="$OUT/optimized/release/keygate"
if [[ -n "$BOLT_BIN" ]]; then
    MERGE_FDATA="$(dirname "$BOLT_BIN")/merge-fdata"
    mkdir -p "$OUT/bolt"
    log "5/5 BOLT ($BOLT_BIN): instrumented, trained, laid out, checked"
    "$BOLT_BIN" "$BUILT" -instrument -o "$OUT/bolt/instrumented" \
        --instrumentation-file="$OUT/bolt/prof" --instrumentation-file-append-pid >&2
    # Each process (the gateways and the mock) writes its own counts when it exits.
    bash scripts/pgo-train.sh "$OUT/bolt/instrumented" >&2
    "$MERGE_FDATA" "$OUT"/bolt/prof.*.fdata >"$OUT/bolt/merged.fdata"
    # Blocks in the order they run (ext-tsp), functions that call each other together
    # (cdsort), each hot function's cold blocks moved out of it; line tables kept.
    "$BOLT_BIN" "$BUILT" -o "$OUT/bolt/keygate" -data="$OUT/bolt/merged.fdata" \
        -reorder-blocks=ext-tsp -reorder-functions=cdsort -split-functions -split-all-cold \
        -split-eh -update-debug-sections -dyno-stats >&2
    bash scripts/pgo-train.sh "$OUT/bolt/keygate" >&2
    BUILT="$OUT/bolt/keygate"
fi
# Copied beside, then renamed: a `cp` over a binary that is running fails ("Text file busy").
cp "$BUILT" "$OUT/keygate.new"
mv -f "$OUT/keygate.new" "$OUT/keygate"
log "done"
echo "$OUT/keygate"
