#!/usr/bin/env bash
# keygate load harness: one command, writes benches/RESULTS.md. See benches/load/README.md.
#
#   benches/load/run.sh
#
# Environment knobs: ROUNDS (3), DUR (wrk seconds, 5), PAIRS (80) and PAIR_DUR (1 s): the
# paired runs behind the two-contender targets, CONNS (client connections of the
# throughput rows, "32 256 1024"), MICRO (1: also run the criterion
# benches; 0: reuse target/criterion results if any), BIG_KEYS (1000000: the large key
# set for the memory test), WORK (work dir, default a new
# /tmp/keygate-load.*), OUT (benches/RESULTS.md), NO_INSTALL=1 (never apt-get),
# OHA (path to oha; else looked up in PATH and ~/.cargo/bin), PGO (1: measure the
# profile-guided build the container image ships, scripts/build-pgo.sh → target/pgo/keygate;
# 0: the plain release build, target/release/keygate), NO_BUILD=1 (use the existing binary).
#
# Everything listens on and targets 127.0.0.1 only; every wait is bounded; every process
# started here is killed on exit.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
ROUNDS=${ROUNDS:-3}
DUR=${DUR:-5}
CONNS=${CONNS:-32 256 1024}
MICRO=${MICRO:-1}
BIG_KEYS=${BIG_KEYS:-1000000}
BIG_LABEL=$([[ $BIG_KEYS == 1000000 ]] && echo "1M keys" || echo "$BIG_KEYS keys")
OUT=${OUT:-$ROOT/benches/RESULTS.md}
WORK=${WORK:-$(mktemp -d /tmp/keygate-load.XXXXXX)}
mkdir -p "$WORK"
RES=$WORK/results.jsonl
: >"$RES"
PY=${PYTHON:-python3}
TOOLS="$ROOT/benches/load/tools.py"
T() { "$PY" "$TOOLS" "$@"; }
# core_ticks CPU: "busy,total" clock ticks of one CPU from /proc/stat (busy: all but idle and
# iowait, so softirq and steal count). awk, not Python: read right at the run's edges.
core_ticks() { awk -v c="cpu$1" '$1 == c { for (i = 2; i <= NF; i++) { t += $i; if (i != 5 && i != 6) b += $i } print b "," t }' /proc/stat; }
PGO=${PGO:-1}
if [[ "$PGO" == 1 ]]; then
    BIN=$ROOT/target/pgo/keygate
    BUILD_KIND="profile-guided (scripts/build-pgo.sh, as the container image)"
    # Also built (and measured under callgrind only) to show what the profile changes.
    PLAIN_BIN=$ROOT/target/release/keygate
else
    BIN=$ROOT/target/release/keygate
    PLAIN_BIN=$BIN
    BUILD_KIND="plain release (cargo build --release)"
fi
PROXY_CPU=0
LOAD_CPU=1
P_MOCK=18080 P_KG=18081 P_HA=18082 P_NG=18083 P_KG100K=18085 P_MEM=18086
# The later contenders and the metrics listeners take ports the kernel reports free.
read -r P_KGP P_KGP_M P_NGL P_K100_M P_HAW < <(T free-ports 5)
STARTED=$(date +%s)
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
# An operator's RUST_LOG would override the generated [log] levels.
unset RUST_LOG
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }

# Every proxy holds a client and an upstream socket per connection, so a row with N client
# connections needs about 2N descriptors; rows the limit cannot hold are left out (and said).
CONNS_NOTE=""
conns_ok=()
for c in $CONNS; do
    if (($(ulimit -n) >= 2 * c + 256)); then
        conns_ok+=("$c")
    else
        CONNS_NOTE+="${CONNS_NOTE:+ }-c$c left out: ulimit -n is $(ulimit -n), it needs at least $((2 * c + 256))."
    fi
done
((${#conns_ok[@]})) || {
    log "no connection count in CONNS=\"$CONNS\" fits ulimit -n $(ulimit -n)"
    exit 1
}
CONNS_LIST=("${conns_ok[@]}")
[[ -n "$CONNS_NOTE" ]] && log "$CONNS_NOTE"
CMAX=$(printf '%s\n' "${CONNS_LIST[@]}" | sort -n | tail -1)
CBASE=$(printf '%s\n' "${CONNS_LIST[@]}" | sort -n | head -1)

# ------------------------------------------------------------------ process bookkeeping
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]:-}"; do
        [[ -n "$p" ]] && kill -TERM "$p" 2>/dev/null || true
    done
    sleep 0.5
    for p in "${PIDS[@]:-}"; do
        [[ -n "$p" ]] && kill -KILL "$p" 2>/dev/null || true
    done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start NAME CPU CMD...: starts CMD pinned to CPU, logs to $WORK/NAME.log, sets $LAST_PID.
# The log is opened for appending, so it can be truncated between runs while the process
# writes to it (keygate-prod's access log).
start() {
    local name=$1 cpu=$2
    shift 2
    : >"$WORK/$name.log"
    taskset -c "$cpu" "$@" >>"$WORK/$name.log" 2>&1 &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
}

stop() {
    local pid=$1 i
    kill -TERM "$pid" 2>/dev/null || return 0
    for i in $(seq 200); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# wait_http URL SECS [EXPECT]: polls until URL answers (status EXPECT, default any).
wait_http() {
    local url=$1 secs=$2 expect=${3:-} end code
    end=$(($(date +%s) + secs))
    while (($(date +%s) < end)); do
        code=$(curl -s -o /dev/null -m 1 -w '%{http_code}' "$url" || true)
        if [[ "$code" != "000" && (-z "$expect" || "$code" == "$expect") ]]; then
            return 0
        fi
        sleep 0.05
    done
    log "timed out waiting for $url"
    return 1
}

# ------------------------------------------------------------------ tools
need_install=()
command -v wrk >/dev/null || need_install+=(wrk)
command -v haproxy >/dev/null || need_install+=(haproxy)
command -v nginx >/dev/null || need_install+=(nginx-light)
if ((${#need_install[@]})) && [[ "${NO_INSTALL:-0}" != 1 ]] && [[ $(id -u) == 0 ]]; then
    log "installing ${need_install[*]} with apt-get"
    apt-get update >"$WORK/apt.log" 2>&1 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y "${need_install[@]}" >>"$WORK/apt.log" 2>&1 ||
        log "apt-get install failed; continuing with what is there"
fi
# The profile-guided build lays the binary out with BOLT when it is there, as the image does
# (on its own: a distribution without the package must not stop the others).
if [[ "$PGO" == 1 && "${NO_BUILD:-0}" != 1 && "${NO_INSTALL:-0}" != 1 && $(id -u) == 0 ]] &&
    ! command -v llvm-bolt >/dev/null && ! ls /usr/lib/llvm-*/bin/llvm-bolt >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y bolt-19 >>"$WORK/apt.log" 2>&1 ||
        log "no bolt-19 package: the profile-guided build is measured without BOLT's layout"
fi
command -v wrk >/dev/null || {
    log "wrk is required"
    exit 1
}
HAVE_HA=0 HAVE_NG=0
command -v haproxy >/dev/null && HAVE_HA=1
command -v nginx >/dev/null && HAVE_NG=1
OHA=${OHA:-$(command -v oha || true)}
[[ -z "$OHA" && -x "$HOME/.cargo/bin/oha" ]] && OHA=$HOME/.cargo/bin/oha
[[ -n "$OHA" && -x "$OHA" ]] || OHA=""

if [[ "${NO_BUILD:-0}" == 1 && -x "$BIN" ]]; then
    log "NO_BUILD=1: using the existing $BIN"
elif [[ "$PGO" == 1 ]]; then
    log "building profile-guided (scripts/build-pgo.sh: two release builds and a training run)"
    bash scripts/build-pgo.sh >"$WORK/build.log" 2>&1 || {
        tail -30 "$WORK/build.log"
        exit 1
    }
    log "building release (the plain build, for the callgrind comparison)"
    cargo build --release --bin keygate >>"$WORK/build.log" 2>&1 || {
        tail -30 "$WORK/build.log"
        exit 1
    }
else
    log "building release"
    cargo build --release --bin keygate >"$WORK/build.log" 2>&1 || {
        tail -30 "$WORK/build.log"
        exit 1
    }
fi
# hyper alone (examples/hyper_floor.rs), measured under callgrind beside keygate: the floor
# under keygate's request path.
FLOOR_BIN=$ROOT/target/release/examples/hyper_floor
if [[ "${NO_BUILD:-0}" != 1 || ! -x "$FLOOR_BIN" ]]; then
    log "building the hyper floor (examples/hyper_floor.rs)"
    cargo build --release --example hyper_floor >>"$WORK/build.log" 2>&1 ||
        log "the hyper floor did not build; its callgrind rows are left out"
fi
# When build-pgo.sh laid the binary out with BOLT (it leaves target/pgo/bolt only then), the
# binary before that is measured too, under callgrind only, to show what BOLT changes.
PGO_ONLY_BIN=""
if [[ "$PGO" == 1 && -x $ROOT/target/pgo/bolt/keygate ]]; then
    PGO_ONLY_BIN=$ROOT/target/pgo/optimized/release/keygate
    BUILD_KIND="profile-guided and laid out by BOLT (scripts/build-pgo.sh, as the container image)"
fi
# The micro-benchmark binary is built now, from the same sources, and run at the end.
MICRO_EXE=""
if [[ "$MICRO" == 1 ]]; then
    log "building the micro-benchmarks (cargo bench --bench keycheck --no-run)"
    if cargo bench --bench keycheck --no-run >"$WORK/micro-build.log" 2>&1; then
        MICRO_EXE=$(sed -n 's/.*Executable .*(\(.*\)).*/\1/p' "$WORK/micro-build.log" | tail -1)
        [[ "$MICRO_EXE" == /* ]] || MICRO_EXE="$ROOT/$MICRO_EXE"
    else
        log "cargo bench --no-run failed (see $WORK/micro-build.log); micro-benchmarks skipped"
    fi
fi

# ------------------------------------------------------------------ keys and configs
BODY='{"model":"llama-3.1-8b-instruct","messages":[{"role":"user","content":"Say hello in five words, please."}],"max_tokens":16}'

# gateway_toml DIR PORT [METRICS_PORT [LOG_FORMAT LOG_LEVEL]]: writes DIR/gateway.toml (keys
# in DIR/keys.json). Without the optional arguments: the minimal configuration (no metrics
# listener, logs at warn, so no access lines); everything not written here is the default.
gateway_toml() {
    local metrics=""
    [[ -n "${3:-}" ]] && metrics=$(printf '[metrics]\nlisten = "127.0.0.1:%s"\n' "$3")
    mkdir -p "$1"
    cat >"$1/gateway.toml" <<EOF
[server]
listen = "127.0.0.1:$2"
max_in_flight = 100000

[keys]
file = "keys.json"
prefix = "sk_kg"
reload = true
poll_interval = "1s"

[limits]
requests_per_minute = 100000000
max_in_flight = 100000
failed_auth_per_minute = 1000000000

[[upstream]]
name = "mock"
url = "http://127.0.0.1:$P_MOCK"
models = ["*"]

$metrics
[log]
format = "${4:-text}"
level = "${5:-warn}"
EOF
}

# new_key DIR NAME RPM: creates a key with the CLI, prints its plaintext.
new_key() {
    "$BIN" --config "$1/gateway.toml" keys create --name "$2" --rpm "$3" --json |
        "$PY" -c 'import json,sys; print(json.load(sys.stdin)["key"])'
}

# lua FILE [KEY]: a wrk script that POSTs the chat body, with the key when given.
lua() {
    {
        echo 'wrk.method = "POST"'
        echo 'wrk.path = "/v1/chat/completions"'
        echo "wrk.body = '$BODY'"
        echo 'wrk.headers["Content-Type"] = "application/json"'
        [[ -n "${2:-}" ]] && echo "wrk.headers[\"Authorization\"] = \"Bearer $2\""
        true
    } >"$1"
}

KEYS_MAIN=1000
log "creating keys (work dir $WORK)"
gateway_toml "$WORK/kg" $P_KG
KEY=$(new_key "$WORK/kg" bench 100000000)
KEY_LIMITED=$(new_key "$WORK/kg" limited 1)
T filler "$WORK/kg/keys.json" $((KEYS_MAIN - 2))
gateway_toml "$WORK/junk" 1
BADKEY=$(new_key "$WORK/junk" unknown 1) # well-formed, valid checksum, in no key file we serve
lua "$WORK/key.lua" "$KEY"
lua "$WORK/nokey.lua"
lua "$WORK/badkey.lua" "$BADKEY"
lua "$WORK/limited.lua" "$KEY_LIMITED"

# keygate-prod: the same keys (its own copy, so each instance keeps its own usage state file)
# in the production configuration: metrics listener on, access lines at info in JSON on stderr,
# which start() sends to $WORK/keygate-prod.log on disk, as a service manager would.
gateway_toml "$WORK/kgp" "$P_KGP" "$P_KGP_M" json info
cp "$WORK/kg/keys.json" "$WORK/kgp/keys.json"
for d in kg kgp; do
    "$BIN" --config "$WORK/$d/gateway.toml" check >"$WORK/check-$d.log" 2>&1 || {
        log "keygate check rejects the generated $WORK/$d/gateway.toml:"
        cat "$WORK/check-$d.log" >&2
        exit 1
    }
done

# HAProxy: SHA-256 (upper-case hex, as the `hex` converter prints it) of every key.
"$PY" -c 'import json,sys; [print(k["sha256"].upper()) for k in json.load(open(sys.argv[1]))["keys"]]' \
    "$WORK/kg/keys.json" >"$WORK/haproxy-keys.lst"
# maxconn leaves room above the largest client-connection count (HAProxy sizes its descriptor
# limit from it; `no strict-limits`: if the hard limit is lower, warn instead of refusing).
HA_MAXCONN=$((CMAX + 1000))
cat >"$WORK/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn $HA_MAXCONN
    no strict-limits
    log stderr format raw local0 err

defaults
    mode http
    maxconn $HA_MAXCONN
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    option http-keep-alive

backend per_key_rate
    stick-table type string len 64 size 2m expire 60s store http_req_rate(60s)

frontend fe
    bind 127.0.0.1:$P_HA
    http-request set-var(txn.kh) req.hdr(authorization),word(2,' '),sha2(256),hex
    acl key_ok var(txn.kh) -m str -f $WORK/haproxy-keys.lst
    http-request deny deny_status 401 unless key_ok
    http-request track-sc0 var(txn.kh) table per_key_rate
    http-request deny deny_status 429 if { sc_http_req_rate(0) gt 100000000 }
    default_backend mock

backend mock
    http-reuse always
    server mock 127.0.0.1:$P_MOCK
EOF
# haproxy-wire: the same HAProxy, made to put on the wire what keygate's contract puts there,
# so the load generator (wrk and the mock on one core) does the same work behind either: to
# the upstream the forwarding headers, a request id and a key id, identity encoding and no
# Authorization; to the client the request id and the three rate-limit headers. At 256
# connections that core is the bottleneck, and these bytes are part of its cost per request.
awk '/^    default_backend mock/ {
        print "    unique-id-format req_%{+X}o%rt%pid%Ts%ci"
        print "    http-request set-header x-request-id %[unique-id]"
        print "    http-request set-header x-forwarded-for %[src]"
        print "    http-request set-header x-forwarded-proto http"
        print "    http-request set-header x-keygate-key-id key_%[var(txn.kh),bytes(0,16)]"
        print "    http-request set-header accept-encoding identity"
        print "    http-request del-header authorization"
        print "    http-response set-header x-request-id %[unique-id]"
        print "    http-response set-header x-ratelimit-limit-requests 100000000"
        print "    http-response set-header x-ratelimit-remaining-requests %[sc_http_req_rate(0),neg,add(100000000)]"
        print "    http-response set-header x-ratelimit-reset-requests 0ms"
    }
    { sub("bind 127.0.0.1:'"$P_HA"'$", "bind 127.0.0.1:'"$P_HAW"'"); print }' "$WORK/haproxy.cfg" >"$WORK/haproxy-wire.cfg"

# nginx: `map` on the whole Authorization header (the bench key plus fillers of the same
# shape, as many as keygate has keys), per-key limit_req, keep-alive upstream. Two instances:
# "nginx" with no access log, "nginx-log" with a buffered access log on disk; otherwise
# identical. worker_connections counts client and upstream connections, so it is twice the
# largest client count plus room; the idle upstream cache (`keepalive`) is at least that
# count, so no row closes upstream connections for lack of cache room; the listen backlog
# takes all of wrk's connections at once.
NG_CONNS=$((2 * CMAX + 512 > 2000 ? 2 * CMAX + 512 : 2000))
NG_KEEPALIVE=$((CMAX > 64 ? CMAX : 64))
mkdir -p "$WORK/nginx"
{
    echo "    \"Bearer $KEY\" 1;"
    echo "    \"Bearer $KEY_LIMITED\" 1;"
    "$PY" -c '
import secrets,sys
B="0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
for _ in range(int(sys.argv[1])):
    print("    \"Bearer sk_kg_" + "".join(secrets.choice(B) for _ in range(38)) + "\" 1;")
' $((KEYS_MAIN - 2))
} >"$WORK/nginx/keys.map"
# nginx_conf DIR PORT ACCESS_LOG_DIRECTIVE: writes DIR/nginx.conf.
nginx_conf() {
    mkdir -p "$1/logs" "$1/tmp"
    cat >"$1/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $1/nginx.pid;
error_log $1/logs/error.log warn;
events { worker_connections $NG_CONNS; }
http {
    log_format main escape=json '{"time":"\$time_iso8601","client_addr":"\$remote_addr",'
        '"method":"\$request_method","path":"\$uri","protocol":"\$server_protocol","status":\$status,'
        '"bytes_in":\$request_length,"bytes_out":\$bytes_sent,"duration_s":\$request_time,'
        '"upstream":"\$upstream_addr","upstream_s":"\$upstream_response_time",'
        '"request_id":"\$request_id","user_agent":"\$http_user_agent"}';
    $3
    client_body_temp_path $1/tmp/body;
    proxy_temp_path $1/tmp/proxy;
    fastcgi_temp_path $1/tmp/fastcgi;
    uwsgi_temp_path $1/tmp/uwsgi;
    scgi_temp_path $1/tmp/scgi;
    map_hash_bucket_size 128;
    map \$http_authorization \$key_ok {
        default 0;
        include $WORK/nginx/keys.map;
    }
    limit_req_zone \$http_authorization zone=per_key:32m rate=1000000r/s;
    upstream mock {
        server 127.0.0.1:$P_MOCK;
        keepalive $NG_KEEPALIVE;
    }
    server {
        listen 127.0.0.1:$2 backlog=4096;
        location / {
            if (\$key_ok = 0) { return 401; }
            limit_req zone=per_key burst=1000000 nodelay;
            proxy_pass http://mock;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }
    }
}
EOF
}
nginx_conf "$WORK/nginx" "$P_NG" "access_log off;"
NGL_LOG="$WORK/nginx-log/logs/access.log"
nginx_conf "$WORK/nginx-log" "$P_NGL" "access_log $NGL_LOG main buffer=64k flush=1s;"

# ------------------------------------------------------------------ start everything
log "starting mock, keygate, keygate-prod$( ((HAVE_HA)) && echo ', haproxy, haproxy-wire')$( ((HAVE_NG)) && echo ', nginx, nginx-log')"
TOKIO_WORKER_THREADS=1 start mock $LOAD_CPU "$BIN" mock --listen 127.0.0.1:$P_MOCK
MOCK_PID=$LAST_PID
wait_http "http://127.0.0.1:$P_MOCK/v1/models" 30
TOKIO_WORKER_THREADS=1 start keygate $PROXY_CPU "$BIN" serve --config "$WORK/kg/gateway.toml"
KG_PID=$LAST_PID
wait_http "http://127.0.0.1:$P_KG/readyz" 60 200
TOKIO_WORKER_THREADS=1 start keygate-prod $PROXY_CPU "$BIN" serve --config "$WORK/kgp/gateway.toml"
KGP_PID=$LAST_PID
KGP_LOG="$WORK/keygate-prod.log"
KGP_METRICS="http://127.0.0.1:$P_KGP_M/metrics"
wait_http "http://127.0.0.1:$P_KGP/readyz" 60 200
wait_http "$KGP_METRICS" 30 200
if ((HAVE_HA)); then
    haproxy -c -f "$WORK/haproxy.cfg" >"$WORK/haproxy-check.log" 2>&1 || {
        cat "$WORK/haproxy-check.log"
        exit 1
    }
    start haproxy $PROXY_CPU haproxy -db -f "$WORK/haproxy.cfg"
    HA_PID=$LAST_PID
    wait_http "http://127.0.0.1:$P_HA/" 30
    haproxy -c -f "$WORK/haproxy-wire.cfg" >"$WORK/haproxy-wire-check.log" 2>&1 || {
        cat "$WORK/haproxy-wire-check.log"
        exit 1
    }
    start haproxy-wire $PROXY_CPU haproxy -db -f "$WORK/haproxy-wire.cfg"
    HAW_PID=$LAST_PID
    wait_http "http://127.0.0.1:$P_HAW/" 30
fi
if ((HAVE_NG)); then
    nginx -t -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" >"$WORK/nginx-check.log" 2>&1 || {
        cat "$WORK/nginx-check.log"
        exit 1
    }
    start nginx $PROXY_CPU nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf"
    NG_PID=$LAST_PID
    wait_http "http://127.0.0.1:$P_NG/" 30
    nginx -t -p "$WORK/nginx-log" -c "$WORK/nginx-log/nginx.conf" >"$WORK/nginx-log-check.log" 2>&1 || {
        cat "$WORK/nginx-log-check.log"
        exit 1
    }
    start nginx-log $PROXY_CPU nginx -p "$WORK/nginx-log" -c "$WORK/nginx-log/nginx.conf"
    NGL_PID=$LAST_PID
    wait_http "http://127.0.0.1:$P_NGL/" 30
fi

# Sanity: every contender forwards the bench key and refuses a missing one.
for t in "direct $P_MOCK" "keygate $P_KG" "keygate-prod $P_KGP" "haproxy $P_HA" "haproxy-wire $P_HAW" "nginx $P_NG" "nginx-log $P_NGL"; do
    set -- $t
    [[ $1 == haproxy* && $HAVE_HA == 0 ]] && continue
    [[ $1 == nginx* && $HAVE_NG == 0 ]] && continue
    ok=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \
        -d "$BODY" "http://127.0.0.1:$2/v1/chat/completions")
    no=$(curl -s -o /dev/null -w '%{http_code}' -H 'Content-Type: application/json' -d "$BODY" \
        "http://127.0.0.1:$2/v1/chat/completions")
    log "sanity $1: with key $ok, without key $no"
    [[ $ok == 200 ]] || {
        log "$1 does not forward; see $WORK/*.log"
        exit 1
    }
done
# haproxy-wire is only a like-for-like baseline if its answers carry keygate's headers.
if ((HAVE_HA)); then
    heads=$(curl -s -o /dev/null -D - -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \
        -d "$BODY" "http://127.0.0.1:$P_HAW/v1/chat/completions" | tr -d '\r')
    for h in x-request-id x-ratelimit-limit-requests x-ratelimit-remaining-requests x-ratelimit-reset-requests; do
        grep -qi "^$h: " <<<"$heads" || {
            log "haproxy-wire's answer lacks $h:"
            printf '%s\n' "$heads" >&2
            exit 1
        }
    done
fi
# The production row is only that if its access lines reach the file: wait (bounded) for the
# sanity requests' lines, JSON, and show one.
ACCESS_MARK='"target":"keygate::access"'
for _ in $(seq 100); do grep -qF "$ACCESS_MARK" "$KGP_LOG" && break; sleep 0.05; done
grep -qF "$ACCESS_MARK" "$KGP_LOG" || {
    log "keygate-prod wrote no JSON access line to $KGP_LOG:"
    tail -5 "$KGP_LOG" >&2
    exit 1
}
KGP_SAMPLE=$(grep -m1 -F "$ACCESS_MARK" "$KGP_LOG")
log "keygate-prod access line: $KGP_SAMPLE"

# ------------------------------------------------------------------ measurement helpers
declare -A URL=([direct]="http://127.0.0.1:$P_MOCK/v1/chat/completions"
    [keygate]="http://127.0.0.1:$P_KG/v1/chat/completions"
    [keygate-prod]="http://127.0.0.1:$P_KGP/v1/chat/completions"
    [haproxy]="http://127.0.0.1:$P_HA/v1/chat/completions"
    [haproxy-wire]="http://127.0.0.1:$P_HAW/v1/chat/completions"
    [nginx]="http://127.0.0.1:$P_NG/v1/chat/completions"
    [nginx-log]="http://127.0.0.1:$P_NGL/v1/chat/completions")
declare -A PID_OF=([direct]=$MOCK_PID [keygate]=$KG_PID [keygate-prod]=$KGP_PID [haproxy]=${HA_PID:-} [haproxy-wire]=${HAW_PID:-}
    [nginx]=${NG_PID:-} [nginx-log]=${NGL_PID:-})
# keygate instances and their usage state files.
declare -A STATE_OF=([keygate]="$WORK/kg/keys.json.state" [keygate-prod]="$WORK/kgp/keys.json.state")
# keygate-429: the minimal keygate with the rate-limited key (every answer a 429), for the
# paired runs that compare refusals with proxied requests.
URL[keygate-429]=${URL[keygate]}
PID_OF[keygate-429]=$KG_PID
STATE_OF[keygate-429]=${STATE_OF[keygate]}
declare -A SCRIPT_OF=([keygate-429]="$WORK/limited.lua")
CONTENDERS=(direct keygate keygate-prod)
((HAVE_HA)) && CONTENDERS+=(haproxy haproxy-wire)
((HAVE_NG)) && CONTENDERS+=(nginx nginx-log)

# emit JSON_FROM_TOOL EXTRA_JSON: merges and appends one record to results.jsonl.
emit() {
    "$PY" -c 'import json,sys; d=json.loads(sys.argv[1]); d.update(json.loads(sys.argv[2])); print(json.dumps(d))' \
        "$1" "$2" >>"$RES"
}

# wrk_run OUTFILE SCRIPT URL [SECS [CONNS]]
wrk_run() {
    taskset -c $LOAD_CPU timeout $((${4:-$DUR} + 20)) wrk -t1 -c"${5:-$CBASE}" -d"${4:-$DUR}"s --timeout 5s --latency \
        -s "$2" "$3" >"$1" 2>&1 || true
}

# mtime of a keygate instance's usage state file (default: the minimal one): it is rewritten
# every 10 s, and a run during which that happened is flagged, since the rewrite costs CPU on
# the same core.
state_mtime() { stat -c %Y "${STATE_OF[${1:-keygate}]:-/nonexistent}" 2>/dev/null || echo 0; }

# The access logs grow by a few hundred MB per round: each is emptied before a run (both
# writers append, so truncation is safe), after the first lines are kept once for reading.
head -50 "$KGP_LOG" >"$WORK/keygate-prod.head.log"
reset_logs() {
    : >"$KGP_LOG"
    [[ -n "${NGL_PID:-}" ]] && : >"$NGL_LOG"
    true
}

# throughput NAME ROUND CONNS [KIND SECS]: one wrk run and its CPU, recorded as KIND
# (throughput: the rounds' table; paired: the paired runs below, ROUND being the pair).
throughput() {
    local name=$1 round=$2 conns=$3 kind=${4:-throughput} secs=${5:-$DUR}
    local f="$WORK/wrk-$1-c$3-r$2${4:+-$4}.txt" c0 c1 m0 m1 d0 d1 l0 l1 extra
    reset_logs
    [[ $name == keygate-prod ]] && d0=$(T metrics "$KGP_METRICS" keygate_log_lines_dropped_total)
    c0=$(T cpu ${PID_OF[$name]})
    m0=$(state_mtime "$name")
    l0=$(core_ticks "$LOAD_CPU")
    wrk_run "$f" "${SCRIPT_OF[$name]:-$WORK/key.lua}" "${URL[$name]}" "$secs" "$conns"
    # How busy wrk and the mock kept their core: near 100%, the load generator and not the
    # proxy set the pace, and its own queue the latency's spread.
    l1=$(core_ticks "$LOAD_CPU")
    # keygate-prod: its writer thread may still be writing queued lines; that is CPU the
    # requests caused, so it is counted, and then the lines are.
    [[ $name == keygate-prod ]] && T settle "$KGP_LOG"
    m1=$(state_mtime "$name")
    c1=$(T cpu ${PID_OF[$name]})
    extra="{\"kind\":\"$kind\",\"conns\":$conns,\"load_core_busy\":$(T core-busy "$l0" "$l1"),\"state_flush\":$([[ $name == keygate* && $m0 != "$m1" ]] && echo true || echo false)"
    if [[ $name == keygate-prod ]]; then
        d1=$(T metrics "$KGP_METRICS" keygate_log_lines_dropped_total)
        extra+=",\"access_lines\":$(T access-lines "$KGP_LOG"),\"dropped\":$(T delta "$d0" "$d1")"
    fi
    emit "$(T throughput "$f" "$name" "$round" "$c0" "$c1")" "$extra${6:+,\"set\":\"$6\"}}"
    log "  $name c$conns ${kind:0:1}$round: $(tail -1 "$RES")"
}

fixed_rate() { # NAME ROUND RATE SECS CONNS
    local name=$1 round=$2 rate=$3 secs=$4 conns=$5 f="$WORK/oha-$1-$3-r$2.json"
    taskset -c $LOAD_CPU timeout $((secs + 30)) "$OHA" -z "${secs}s" -q "$rate" -c "$conns" --latency-correction \
        --no-tui --output-format json -m POST -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \
        -d "$BODY" "${URL[$name]}" >"$f" 2>"$f.err" || true
    emit "$(T oha "$f")" "{\"kind\":\"fixed_rate\",\"target\":\"$name\",\"round\":$round,\"rate\":$rate}"
}

# ------------------------------------------------------------------ memory (before the rounds)
mem_instance() { # LABEL DIR PORT WINDOW -> record; leaves the instance running with $LAST_PID
    local label=$1 dir=$2 port=$3 window=$4 t0 t1 r c0 c1
    t0=$(date +%s.%N)
    TOKIO_WORKER_THREADS=1 start "kg-$port" $PROXY_CPU "$BIN" serve --config "$dir/gateway.toml"
    MEM_PID=$LAST_PID
    wait_http "http://127.0.0.1:$port/readyz" 180 200
    t1=$(date +%s.%N)
    sleep 1
    c0=$(T cpu "$MEM_PID")
    sleep "$window"
    c1=$(T cpu "$MEM_PID")
    r=$(T rss "$MEM_PID")
    emit "{\"kind\":\"memory\",\"label\":\"$label\"}" "$("$PY" -c "import json,sys; d=json.loads(sys.argv[1]); print(json.dumps({'rss_kb':d['VmRSS'],'hwm_kb':d['VmHWM'],'ready_s':$t1-$t0,'idle_cpu_ms':($c1-$c0)*1000,'idle_window_s':$window}))" "$r")"
    log "  $label: $(tail -1 "$RES")"
}

log "memory: 1 key"
gateway_toml "$WORK/m1" $P_MEM
new_key "$WORK/m1" one 100000000 >/dev/null
mem_instance "1 key" "$WORK/m1" $P_MEM 5
before=$(T rss "$MEM_PID")
T idle 127.0.0.1 $P_MEM 1000 6 >"$WORK/idle.out" &
IDLE_PID=$!
PIDS+=("$IDLE_PID")
for _ in $(seq 100); do [[ -s "$WORK/idle.out" ]] && break; sleep 0.1; done
sleep 1
after=$(T rss "$MEM_PID")
wait "$IDLE_PID" || true
"$PY" -c "import json,sys; b=json.loads(sys.argv[1]); a=json.loads(sys.argv[2]); print(json.dumps({'kind':'conns','n':1000,'ok':int(open(sys.argv[3]).read().split()[0] or 0),'before_kb':b['VmRSS'],'after_kb':a['VmRSS'],'delta_kb':a['VmRSS']-b['VmRSS']}))" \
    "$before" "$after" "$WORK/idle.out" >>"$RES"
log "  conns: $(tail -1 "$RES")"
stop "$MEM_PID"

log "memory: $BIG_LABEL (generating the key file)"
gateway_toml "$WORK/m1m" $P_MEM
new_key "$WORK/m1m" bench 100000000 >/dev/null
T filler "$WORK/m1m/keys.json" $((BIG_KEYS - 1))
echo "{\"kind\":\"keyfile\",\"label\":\"$BIG_LABEL\",\"bytes\":$(stat -c %s "$WORK/m1m/keys.json")}" >>"$RES"
mem_instance "$BIG_LABEL" "$WORK/m1m" $P_MEM 11
stop "$MEM_PID"
rm -f "$WORK/m1m/keys.json" "$WORK/m1m/keys.json.state"

log "memory: 100k keys (kept running for the reload test)"
gateway_toml "$WORK/k100" $P_KG100K
KEY100=$(new_key "$WORK/k100" bench 100000000)
T filler "$WORK/k100/keys.json" 99999
echo "{\"kind\":\"keyfile\",\"label\":\"100k keys\",\"bytes\":$(stat -c %s "$WORK/k100/keys.json")}" >>"$RES"
mem_instance "100k keys" "$WORK/k100" $P_KG100K 11
# For the reload rows the same instance runs again with a metrics listener (it was measured
# without one, like the other memory rows): the key-index counters say whether a reload
# rebuilt the index.
stop "$MEM_PID"
gateway_toml "$WORK/k100" $P_KG100K $P_K100_M
TOKIO_WORKER_THREADS=1 start kg-100k $PROXY_CPU "$BIN" serve --config "$WORK/k100/gateway.toml"
K100_PID=$LAST_PID
K100_METRICS="http://127.0.0.1:$P_K100_M/metrics"
wait_http "http://127.0.0.1:$P_KG100K/readyz" 180 200
wait_http "$K100_METRICS" 30 200
lua "$WORK/key100.lua" "$KEY100"
URL100="http://127.0.0.1:$P_KG100K/v1/chat/completions"
INDEX_METRICS="keygate_key_reloads_total keygate_key_index_rebuilds_total keygate_key_index_changes_applied_total"

# ------------------------------------------------------------------ rounds
log "warm-up (-c$CMAX, so every proxy has opened its upstream connections)"
for n in "${CONTENDERS[@]}"; do wrk_run "$WORK/warm-$n.txt" "$WORK/key.lua" "${URL[$n]}" 2 "$CMAX"; done
wrk_run "$WORK/warm-k100.txt" "$WORK/key100.lua" "$URL100" 2
FIXED_NOTE=""
if [[ -z "$OHA" ]]; then
    FIXED_NOTE="oha is not installed (\`cargo install oha --locked\`, about 15 minutes to build) and Debian has no wrk2 package; wrk is closed-loop and cannot hold a fixed rate, so open-loop latency at 1k and 1 req/s was not measured."
fi

# reload_window MODE ROUND BASELINE: stages a key-file change (one_key: `keys create` adds a
# key; replace: the same, then every other key but the bench key gets a new hash), then, under
# wrk, swaps it in and times until the new key works; the key-index counters are read before
# and after (null when this build does not export them). A control window follows: the same
# wrk and poller, no change, so the poller's own cost is not counted as the reload's.
reload_window() {
    local mode=$1 round=$2 fb=$3 fd="$WORK/wrk-k100-$1-r$2.txt" fc="$WORK/wrk-k100-$1-control-r$2.txt"
    local stage="$WORK/k100-stage-$1-r$2" m0 m1 secs
    taskset -c $LOAD_CPU timeout 90 "$PY" "$TOOLS" reload-stage "$BIN" "$WORK/k100/gateway.toml" "$stage" "$mode" || true
    m0=$(T metrics "$K100_METRICS" $INDEX_METRICS)
    wrk_run "$fd" "$WORK/key100.lua" "$URL100" &
    WRK_BG=$!
    PIDS+=("$WRK_BG")
    sleep 1.5
    taskset -c $LOAD_CPU timeout 60 "$PY" "$TOOLS" reload "$stage" "$WORK/k100/gateway.toml" "$URL100" "$WORK/reload-$mode-r$round.json" || true
    wait "$WRK_BG" || true
    m1=$(T metrics "$K100_METRICS" $INDEX_METRICS)
    # The control window: the same wrk and the same poller for as long, with a key that never
    # goes live and no file change; the poller shares the load core with wrk and the mock.
    secs=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1])).get("works_after_swap_s") or 0.3)' \
        "$WORK/reload-$mode-r$round.json" 2>/dev/null || echo 0.3)
    wrk_run "$fc" "$WORK/key100.lua" "$URL100" &
    WRK_BG=$!
    PIDS+=("$WRK_BG")
    sleep 1.5
    taskset -c $LOAD_CPU timeout 60 "$PY" "$TOOLS" reload-control "$stage" "$URL100" "$secs" "$WORK/reload-control-$mode-r$round.json" || true
    wait "$WRK_BG" || true
    "$PY" - "$WORK/reload-$mode-r$round.json" "$fb" "$fd" "$round" "$TOOLS" "$mode" "$m0" "$m1" "$fc" >>"$RES" <<'EOF'
import json,sys,importlib.util
spec=importlib.util.spec_from_file_location("tools",sys.argv[5]); t=importlib.util.module_from_spec(spec); spec.loader.exec_module(t)
try:
    r=json.load(open(sys.argv[1]))
except Exception as e:
    r={"cli_s":None,"works_after_swap_s":None,"error":str(e)}
b=t.parse_wrk(open(sys.argv[2]).read()); d=t.parse_wrk(open(sys.argv[3]).read())
import re
def wmax(path):
    m=re.search(r"Latency\s+\S+\s+\S+\s+(\S+)",open(path).read())
    return t.to_ms(m.group(1)) if m else None
try:
    c=t.parse_wrk(open(sys.argv[9]).read())
except Exception:
    c={"p99_ms":None,"rps":None}
m0,m1=json.loads(sys.argv[7]),json.loads(sys.argv[8])
delta={k.replace("keygate_key_","").replace("_total",""):(None if m0.get(k) is None or m1.get(k) is None else m1[k]-m0[k]) for k in m1}
r.update({"kind":"reload","mode":sys.argv[6],"round":int(sys.argv[4]),"base_p99_ms":b["p99_ms"],"during_p99_ms":d["p99_ms"],
          "base_rps":b["rps"],"during_rps":d["rps"],"during_max_ms":wmax(sys.argv[3]),
          "control_p99_ms":c.get("p99_ms"),"control_rps":c.get("rps"),
          "control_max_ms":wmax(sys.argv[9]) if c.get("p99_ms") is not None else None,
          "counters":delta})
print(json.dumps(r))
EOF
    log "  reload ($mode): $(tail -1 "$RES")"
}

for round in $(seq "$ROUNDS"); do
    # Rotate the order each round so no contender always runs first or last.
    k=$(((round - 1) % ${#CONTENDERS[@]}))
    order=("${CONTENDERS[@]:k}" "${CONTENDERS[@]:0:k}")
    for conns in "${CONNS_LIST[@]}"; do
        log "round $round/$ROUNDS: throughput at -c$conns (${order[*]})"
        for n in "${order[@]}"; do throughput "$n" "$round" "$conns"; done
    done

    log "round $round: rejections"
    for c in no_key:nokey invalid_key:badkey rate_limited:limited; do
        f="$WORK/wrk-reject-${c%%:*}-r$round.txt"
        c0=$(T cpu "$KG_PID")
        m0=$(state_mtime)
        wrk_run "$f" "$WORK/${c##*:}.lua" "${URL[keygate]}"
        m1=$(state_mtime)
        c1=$(T cpu "$KG_PID")
        emit "$(T throughput "$f" keygate "$round" "$c0" "$c1")" "{\"kind\":\"reject\",\"case\":\"${c%%:*}\",\"conns\":$CBASE,\"state_flush\":$([[ $m0 != "$m1" ]] && echo true || echo false)}"
        log "  ${c%%:*}: $(tail -1 "$RES")"
    done

    if [[ -n "$OHA" ]]; then
        log "round $round: fixed-rate latency (oha)"
        for n in "${order[@]}"; do
            reset_logs
            fixed_rate "$n" "$round" 1000 6 16
        done
        # 1 req/s: direct, keygate, HAProxy and nginx side by side (the machine is idle
        # between requests; four clients at 1 req/s each rarely meet), so the target's row can
        # say what the VM's wake-ups from idle cost any proxy.
        # Each run in the background writes its record to a file of its own, added to the
        # results once all have ended: appends from processes running at once can interleave
        # (two records on one line ended a run's report).
        FR_PIDS=() FR_FILES=()
        for n in direct haproxy nginx; do
            [[ " ${CONTENDERS[*]} " == *" $n "* ]] || continue
            FR_FILES+=("$WORK/fixed-rate-1-$n.jsonl")
            RES="${FR_FILES[-1]}" fixed_rate "$n" "$round" 1 15 1 &
            FR_PIDS+=($!)
        done
        PIDS+=("${FR_PIDS[@]}")
        fixed_rate keygate "$round" 1 15 1
        for p in "${FR_PIDS[@]}"; do wait "$p" || true; done
        for f in "${FR_FILES[@]}"; do
            [[ -f "$f" ]] && cat "$f" >>"$RES" && rm -f "$f"
        done
    fi

    log "round $round: SSE"
    for n in direct keygate; do
        taskset -c $LOAD_CPU timeout 60 "$PY" "$TOOLS" sse "${URL[$n]}" "$([[ $n == keygate ]] && echo "$KEY")" 8 "$WORK/sse.jsonl" \
            "{\"kind\":\"sse\",\"target\":\"$n\",\"round\":$round}" || true
    done

    log "round $round: reloads of the 100k-key file under load (one key added; every key replaced)"
    fb="$WORK/wrk-k100-base-r$round.txt"
    wrk_run "$fb" "$WORK/key100.lua" "$URL100"
    reload_window one_key "$round" "$fb"
    reload_window replace "$round" "$fb"
done
cat "$WORK/sse.jsonl" >>"$RES" 2>/dev/null || true

# ------------------------------------------------------------------ paired runs
# The targets that compare two contenders' throughput or CPU per request (and the 429's
# against a proxied request's, on the same instance). One run's ratio
# moves by ±15–25% on this VM from one run to the next, even between two back-to-back 2 s
# runs, so three or five rounds cannot tell 0.95× from 1.05×. Here each pair of contenders
# runs PAIRS times, back to back, PAIR_DUR seconds each, the order swapped every pair (A B,
# B A, ...) so a drift in the machine's speed does not favour either; the report takes the
# median of the per-pair ratios and an interval around it from order statistics (no
# assumption about the noise's shape), and calls a target met or missed only when the whole
# interval is on one side of its bound. Many short pairs rather than fewer long ones: in a
# scratch check a 1 s run's ratio scattered no more than a 2 s or 4 s run's (the noise is the
# machine's speed changing between runs, not a run too short to settle), and the interval
# narrows with the number of pairs: over two harness runs, 40 pairs of 1 s gave intervals
# 7–24% wide where 16 pairs of 2 s had given 14–33%, for about a quarter more time; 80 pairs
# (since 2026-12-03, after two runs left a target undecided by 0.002–0.003 with 40) gave
# intervals about half as wide again, for about 15 minutes more.
PAIRS=${PAIRS:-80}
PAIR_DUR=${PAIR_DUR:-1}
PAIRED=("keygate-prod keygate $CBASE" "keygate haproxy $CBASE" "keygate-prod nginx-log $CBASE"
    "keygate-429 keygate $CBASE")
[[ " ${CONNS_LIST[*]} " == *" 256 "* ]] && PAIRED+=("keygate haproxy 256" "keygate haproxy-wire 256")
for spec in "${PAIRED[@]}"; do
    read -r a b conns <<<"$spec"
    [[ -n "${PID_OF[$a]:-}" && -n "${PID_OF[$b]:-}" ]] || continue
    log "paired runs: $a and $b at -c$conns, $PAIRS pairs of ${PAIR_DUR} s"
    for i in $(seq "$PAIRS"); do
        if ((i % 2)); then first=$a second=$b; else first=$b second=$a; fi
        throughput "$first" "$i" "$conns" paired "$PAIR_DUR" "$a/$b"
        throughput "$second" "$i" "$conns" paired "$PAIR_DUR" "$a/$b"
    done
done

# ------------------------------------------------------------------ profile
# 1) syscalls per request (strace -c, attached for the length of a 3 s wrk run: strace slows
#    the process, but the count per request does not depend on speed);
# 2) perf sampling (cpu-clock, the only event this VM offers) of keygate and keygate-prod
#    under wrk; the report sets the two side by side (where the production config's extra CPU
#    goes).
PROFILE_FILE="$WORK/profile.txt"
: >"$PROFILE_FILE"
PROFILE_NOTE=""
if command -v strace >/dev/null; then
    log "profile: syscalls per request (strace -c)"
    {
        echo "Syscalls per request (\`strace -c -f\` on the proxy's processes during a 3 s \`wrk -c$CBASE\` run; counts ÷ requests):"
        echo
        echo "| contender / case | requests | syscalls per request | top calls per request |"
        echo "|---|---|---|---|"
    } >>"$PROFILE_FILE"
    for spec in keygate:key keygate:limited keygate:badkey keygate-prod:key haproxy:key nginx:key nginx-log:key; do
        n=${spec%%:*} s=${spec##*:}
        [[ -n "${PID_OF[$n]}" ]] || continue
        reset_logs
        pargs=()
        for p in $("$PY" -c 'import sys,importlib.util as u; s=u.spec_from_file_location("t",sys.argv[1]); t=u.module_from_spec(s); s.loader.exec_module(t); print(" ".join(map(str,t.tree(int(sys.argv[2])))))' "$TOOLS" "${PID_OF[$n]}"); do
            pargs+=(-p "$p")
        done
        if [[ $n == keygate* ]]; then
            # Start just after a usage-state rewrite (every 10 s) so none falls in the window.
            m0=$(state_mtime "$n")
            for _ in $(seq 120); do [[ $(state_mtime "$n") != "$m0" ]] && break; sleep 0.1; done
            sleep 0.5
        fi
        m0=$(state_mtime "$n")
        timeout -s INT 5 strace -c -f "${pargs[@]}" -o "$WORK/strace-$n-$s.txt" 2>/dev/null &
        SPID=$!
        PIDS+=("$SPID")
        sleep 0.7
        wrk_run "$WORK/wrk-strace-$n-$s.txt" "$WORK/$s.lua" "${URL[$n]}" 3
        wait "$SPID" 2>/dev/null || true
        flush=""
        [[ $n == keygate* && $m0 != "$(state_mtime "$n")" ]] && flush=" ¹"
        "$PY" - "$WORK/strace-$n-$s.txt" "$WORK/wrk-strace-$n-$s.txt" "$n ($s)$flush" "$TOOLS" "$RES" "$n" "$s" >>"$PROFILE_FILE" <<'EOF' || true
import sys,re,importlib.util as u
s=u.spec_from_file_location("t",sys.argv[4]); t=u.module_from_spec(s); s.loader.exec_module(t)
req=t.parse_wrk(open(sys.argv[2]).read())["requests"] or 0
calls={}
for line in open(sys.argv[1]):
    f=line.split()
    if len(f)>=5 and f[0][0].isdigit() and f[-1] not in ("total",):
        calls[f[-1]]=int(f[3])
tot=sum(calls.values())
top=sorted(calls.items(),key=lambda x:-x[1])[:4]
name=sys.argv[3].replace("(key)","(forwarded)").replace("(limited)","(429)").replace("(badkey)","(401 unknown key)")
print(f"| {name} | {req} | {tot/req:.2f} | " + ", ".join(f"{k} {v/req:.2f}" for k,v in top) + " |" if req else f"| {name} | 0 | – | – |")
if req:
    import json
    with open(sys.argv[5], "a") as f:
        f.write(json.dumps({"kind":"syscalls","target":sys.argv[6],"case":sys.argv[7],"requests":req,
                            "per_request":tot/req,"calls":{k:v/req for k,v in calls.items()}})+"\n")
EOF
    done
    {
        echo
        echo "¹ keygate rewrote its usage state file during this run (every 10 s): its \`read\`, \`write\` and \`statx\` calls are that rewrite and the key-file watchers it wakes, not the request path."
        echo
    } >>"$PROFILE_FILE"
fi
PERF_REPORTS=""
if command -v perf >/dev/null && perf record -e cpu-clock -o "$WORK/perf-probe.data" true >/dev/null 2>&1; then
    for n in keygate keygate-prod; do
        log "profile: perf record -e cpu-clock on $n under wrk"
        reset_logs
        data="$WORK/perf-$n.data"
        wrk_run "$WORK/wrk-profile-$n.txt" "$WORK/key.lua" "${URL[$n]}" 6 &
        WRK_BG=$!
        PIDS+=("$WRK_BG")
        sleep 1
        # The bound is generous: with DWARF call graphs perf writes ~100 MB for 3 s. Under a
        # 20 s bound, on a slow machine, one run's second recording came out as an empty
        # file with no summary line, as if killed mid-write.
        taskset -c $LOAD_CPU timeout 90 perf record -e cpu-clock -F 1999 -g --call-graph dwarf,16384 -p "${PID_OF[$n]}" \
            -o "$data" -- sleep 3 >"$WORK/perf-record-$n.log" 2>&1 || true
        wait "$WRK_BG" || true
        # Every symbol with its sample count, for the side-by-side in the report.
        taskset -c $LOAD_CPU perf report -i "$data" --stdio -g none -n --no-children --sort dso,symbol \
            >"$WORK/perf-$n.txt" 2>/dev/null || true
        taskset -c $LOAD_CPU perf report -i "$data" --stdio -g none -n --no-children --sort comm \
            >"$WORK/perf-$n-comm.txt" 2>/dev/null || true
        PERF_REPORTS+="${PERF_REPORTS:+ }$n=$WORK/perf-$n.txt $n-comm=$WORK/perf-$n-comm.txt"
    done
    rep() { taskset -c $LOAD_CPU perf report -i "$WORK/perf-keygate.data" --stdio -g none "$@" 2>/dev/null | grep -v '^#' | grep -v '^$' | sed 's/ *- *- *$//' | cut -c1-170; }
    {
        echo "perf (\`perf record -e cpu-clock -F 1999 --call-graph dwarf\`, 3 s of keygate under \`wrk -c$CBASE\`; full data in the work directory):"
        echo
        echo "Self time by shared object:"
        echo '```'
        rep --no-children --sort dso | head -8
        echo '```'
        echo "Self time by symbol, top 25:"
        echo '```'
        rep --no-children --sort dso,symbol | head -25
        echo '```'
        echo "Inclusive time of keygate's own functions and the main library layers:"
        echo '```'
        rep --children --sort symbol | grep -E '\] (keygate::|<keygate::|hyper::proto::h1::(role|io|conn|dispatch)::[A-Za-z<>,: ]*::(poll_write|poll_read_head|encode|parse|poll_flush)|hyper_util::client::legacy::client::Client|__GI___writev|__libc_recv|malloc$|_int_free|tracing|metrics::)' | head -30
        echo '```'
    } >>"$PROFILE_FILE" 2>/dev/null || true
else
    PROFILE_NOTE="perf could not sample here (perf record -e cpu-clock failed)."
fi

# 3) user-space instructions per request under callgrind: exact and repeatable where timings
#    drift by ±10% from run to run, so a change's effect shows even on a busy machine (it is
#    blind to the kernel and to SHA-NI, which valgrind does not emulate; its cache misses come
#    from a simulated cache of fixed size, not this CPU's). Each
#    contender is restarted under valgrind on a port of its own, after every timed measurement.
#    nginx is left out: its worker drops to `nobody` and does not answer callgrind_control.
if command -v valgrind >/dev/null && command -v callgrind_control >/dev/null && [[ "${INSTR:-1}" == 1 ]]; then
    log "profile: instructions per request (valgrind --tool=callgrind)"
    CG_CACHE="--cache-sim=yes --I1=32768,8,64 --D1=32768,8,64 --LL=1048576,16,64"
    read -r P_CG P_CG_M < <(T free-ports 2)
    declare -A CG_CMD=(
        [keygate]="$BIN serve --config $WORK/kg/gateway-cg.toml"
        [keygate-prod]="$BIN serve --config $WORK/kgp/gateway-cg.toml"
        [keygate-plain]="$PLAIN_BIN serve --config $WORK/kg/gateway-cg.toml"
        [keygate-pgo-only]="$PGO_ONLY_BIN serve --config $WORK/kg/gateway-cg.toml"
        [hyper-floor]="$FLOOR_BIN 127.0.0.1:$P_CG 127.0.0.1:$P_MOCK"
        [haproxy]="haproxy -db -f $WORK/haproxy-cg.cfg")
    sed "s/^listen = \"127.0.0.1:$P_KG\"/listen = \"127.0.0.1:$P_CG\"/" "$WORK/kg/gateway.toml" >"$WORK/kg/gateway-cg.toml"
    sed -e "s/^listen = \"127.0.0.1:$P_KGP\"/listen = \"127.0.0.1:$P_CG\"/" \
        -e "s/^listen = \"127.0.0.1:$P_KGP_M\"/listen = \"127.0.0.1:$P_CG_M\"/" \
        "$WORK/kgp/gateway.toml" >"$WORK/kgp/gateway-cg.toml"
    ((HAVE_HA)) && sed "s/bind 127.0.0.1:$P_HA/bind 127.0.0.1:$P_CG/" "$WORK/haproxy.cfg" >"$WORK/haproxy-cg.cfg"
    # Two loads: 8 connections (every contender; with PGO=1 also the plain release build of
    # the same sources, minimal configuration: the row that shows what the profile-guided
    # build changes), and 256 connections (HAProxy and keygate), where each request finds its
    # connection's state cold and the last-level misses are the difference.
    for CGC in 8 256; do
        if ((CGC == 8)); then
            CG_NAMES=(haproxy keygate keygate-prod)
            [[ "$PGO" == 1 && -x "$PLAIN_BIN" ]] && CG_NAMES+=(keygate-plain)
            [[ -n "$PGO_ONLY_BIN" ]] && CG_NAMES+=(keygate-pgo-only)
            [[ -x "$FLOOR_BIN" ]] && CG_NAMES+=(hyper-floor)
            CG_WARM=2 CG_SECS=5
        else
            CG_NAMES=(haproxy keygate)
            [[ -x "$FLOOR_BIN" ]] && CG_NAMES+=(hyper-floor)
            CG_WARM=6 CG_SECS=20
        fi
        {
            echo "User-space instructions and simulated cache misses per request at $CGC connections (\`valgrind --tool=callgrind $CG_CACHE\` on a restarted contender, counters zeroed after a $CG_WARM s \`wrk -c$CGC\` warm-up, then a $CG_SECS s \`wrk -c$CGC\` run; each count ÷ requests). The cache is simulated, with fixed sizes (32 KB L1s, 1 MB last level), so these columns are repeatable and comparable between machines; they say where a build misses, not how long a miss takes here. valgrind hides SHA-NI, so under it SHA-256 runs in software (keygate's \`sha2\` crate, HAProxy's libcrypto, which does nothing else in this set-up) where the real runs use the CPU's SHA instructions: the SHA-256 column is that software hash's own instructions, and the column after it the count without them, the fairer comparison:"
            echo
            echo "| contender | requests | instructions per request | vs HAProxy | SHA-256 in software | without SHA-256 | vs HAProxy | L1 instruction misses | L1 data misses | last-level misses | data writes |"
            echo "|---|---|---|---|---|---|---|---|---|---|---|"
        } >>"$PROFILE_FILE"
        HA_IR=0,0
        for n in "${CG_NAMES[@]}"; do
            [[ $n == haproxy && $HAVE_HA == 0 ]] && continue
            out="$WORK/callgrind-$n-c$CGC"
            rm -rf "$out"
            mkdir -p "$out"
            # shellcheck disable=SC2086 # the command line is split on purpose
            TOKIO_WORKER_THREADS=1 start "callgrind-$n-c$CGC" $PROXY_CPU valgrind --tool=callgrind --dump-instr=no $CG_CACHE \
                --callgrind-out-file="$out/cg.%p" ${CG_CMD[$n]}
            VG_PID=$LAST_PID
            url="http://127.0.0.1:$P_CG/v1/chat/completions"
            if ! wait_http "http://127.0.0.1:$P_CG/healthz" 180; then
                stop "$VG_PID"
                continue
            fi
            wrk_run "$WORK/wrk-cg-warm-$n-c$CGC.txt" "$WORK/key.lua" "$url" "$CG_WARM" "$CGC"
            timeout 60 callgrind_control -z "$VG_PID" >/dev/null 2>&1 || true
            wrk_run "$WORK/wrk-cg-$n-c$CGC.txt" "$WORK/key.lua" "$url" "$CG_SECS" "$CGC"
            timeout 60 callgrind_control -d "$VG_PID" >/dev/null 2>&1 || true
            stop "$VG_PID"
            "$PY" - "$out" "$WORK/wrk-cg-$n-c$CGC.txt" "$n" "$TOOLS" "$RES" "$HA_IR" "$CGC" >>"$PROFILE_FILE" <<'EOF' || true
import sys,glob,json,importlib.util as u
s=u.spec_from_file_location("t",sys.argv[4]); t=u.module_from_spec(s); s.loader.exec_module(t)
req=t.parse_wrk(open(sys.argv[2]).read())["requests"] or 0
tot={}
for f in glob.glob(sys.argv[1]+"/cg.*.1"):   # the dump taken after the zeroing
    events=[]
    for line in open(f):
        if line.startswith("events:"): events=line.split()[1:]
        if line.startswith("summary:"):
            for e,v in zip(events,line.split()[1:]): tot[e]=tot.get(e,0)+int(v)
name=sys.argv[3]; ha,ha_bare=(float(x) for x in sys.argv[6].split(",")); ir=tot.get("Ir",0); conns=int(sys.argv[7])
if req and ir:
    per=ir/req
    vs="1.00×" if name=="haproxy" else (f"{per/ha:.2f}×" if ha else "–")
    sha=sum(t.callgrind_self(f, fn_re=r"^sha2::", ob_re=r"libcrypto") for f in glob.glob(sys.argv[1]+"/cg.*.1"))/req
    bare=per-sha
    vs_bare="1.00×" if name=="haproxy" else (f"{bare/ha_bare:.2f}×" if ha_bare else "–")
    i1=tot.get("I1mr"); d1=(tot["D1mr"]+tot["D1mw"]) if "D1mr" in tot and "D1mw" in tot else None; dw=tot.get("Dw")
    ll=sum(tot[e] for e in ("ILmr","DLmr","DLmw")) if all(e in tot for e in ("ILmr","DLmr","DLmw")) else None
    cell=lambda v: "–" if v is None else f"{v/req:,.0f}"
    label=name+{"keygate-plain":" (plain release build)","keygate-pgo-only":" (profile-guided, before BOLT)",
                "hyper-floor":" (hyper's server and client alone, plain release build: no gateway work)"}.get(name,"")
    print(f"| {label} | {req} | {per:,.0f} | {vs} | {sha:,.0f} | {bare:,.0f} | {vs_bare} | {cell(i1)} | {cell(d1)} | {cell(ll)} | {cell(dw)} |")
    with open(sys.argv[5],"a") as f:
        f.write(json.dumps({"kind":"instructions","target":name,"conns":conns,"requests":req,"per_request":per,
            "sha256_software":sha,"without_sha256":bare,
            "i1_misses":None if i1 is None else i1/req,"d1_misses":None if d1 is None else d1/req,
            "ll_misses":None if ll is None else ll/req,"data_writes":None if dw is None else dw/req})+"\n")
    if name=="haproxy": open(sys.argv[1]+"/per_request","w").write(f"{per},{bare}")
else:
    print(f"| {name} | {req} | – (no callgrind dump) | – | – | – | – | – | – | – | – |")
EOF
            [[ $n == haproxy && -s "$out/per_request" ]] && HA_IR=$(cat "$out/per_request")
        done
        echo >>"$PROFILE_FILE"
    done
fi

# ------------------------------------------------------------------ micro-benchmarks
MICRO_JSON="$WORK/micro.json"
MICRO_SINCE=0
if [[ -n "$MICRO_EXE" && -x "$MICRO_EXE" ]]; then
    log "micro-benchmarks: $MICRO_EXE --bench (shortened: 0.5 s warm-up, 2 s measurement)"
    MICRO_SINCE=$(date +%s)
    taskset -c $PROXY_CPU timeout 600 "$MICRO_EXE" --bench --warm-up-time 0.5 --measurement-time 2 >"$WORK/micro.log" 2>&1 ||
        log "micro-benchmarks failed; see $WORK/micro.log"
fi
"$PY" - "$ROOT/target/criterion" "$MICRO_SINCE" >"$MICRO_JSON" <<'EOF'
import json,os,sys
root=sys.argv[1]; since=float(sys.argv[2]); out=[]
for d,_,files in os.walk(root):
    if d.endswith("/new") and "estimates.json" in files and "benchmark.json" in files:
        if os.path.getmtime(os.path.join(d,"estimates.json")) < since:
            continue  # from an earlier run
        b=json.load(open(os.path.join(d,"benchmark.json"))); e=json.load(open(os.path.join(d,"estimates.json")))
        out.append((b["full_id"], e["median"]["point_estimate"]))
order=["keycheck/full","keycheck/parts","keycheck/index_build","route","body_facts","usage_scanner"]
out=[x for x in out if any(x[0].startswith(p) for p in order)]
size=lambda n:{"1k":1,"100k":2,"1M":3}.get(n.rsplit("/",1)[-1],0)
out.sort(key=lambda x:(next((i for i,p in enumerate(order) if x[0].startswith(p)),9),x[0].rsplit("/",1)[0],size(x[0]),x[0]))
print(json.dumps(out))
EOF

# ------------------------------------------------------------------ report
ELAPSED=$(($(date +%s) - STARTED))
KGP_SAMPLE="$KGP_SAMPLE" PROD_TOML="$(cat "$WORK/kgp/gateway.toml")" \
    NGL_DIRECTIVE="$(sed -n '/log_format/,/access_log/p' "$WORK/nginx-log/nginx.conf")" \
    "$PY" - "$WORK/meta.json" <<EOF
import json,subprocess,sys,datetime,os
def sh(c):
    try: return subprocess.run(c,shell=True,capture_output=True,text=True,timeout=20).stdout.strip() or subprocess.run(c,shell=True,capture_output=True,text=True,timeout=20).stderr.strip()
    except Exception as e: return f"n/a ({e})"
cpu=[l.split(":",1)[1].strip() for l in sh("lscpu").splitlines() if l.startswith("Model name")]
profile=open("$PROFILE_FILE").read() if os.path.exists("$PROFILE_FILE") else ""
micro=json.load(open("$MICRO_JSON")) if os.path.exists("$MICRO_JSON") else []
env=os.environ
meta={"command":"benches/load/run.sh" + (" (ROUNDS=$ROUNDS DUR=$DUR CONNS='${CONNS_LIST[*]}' PAIRS=$PAIRS PAIR_DUR=$PAIR_DUR MICRO=$MICRO PGO=$PGO)"),
      "keygate build":"$BUILD_KIND",
      "date":datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
      "elapsed_s":$ELAPSED,"rounds":$ROUNDS,"keys_main":$KEYS_MAIN,
      "nproc":sh("nproc"),"cpu":cpu[0] if cpu else "n/a","kernel":sh("uname -r"),
      "rustc":sh("rustc -V"),"haproxy":sh("haproxy -v | head -1"),"nginx":sh("nginx -v 2>&1"),
      "wrk":sh("wrk -v 2>&1 | head -1"),"oha":sh("$OHA --version") if "$OHA" else "not installed",
      "python":sh("$PY -V"),
      "load average (1/5/15 min) at start":"$LOAD_START","load average at end":sh("cut -d' ' -f1-3 /proc/loadavg"),
      "fixed_rate_tool":"oha -q RATE -c CONNS --latency-correction" if "$OHA" else "",
      "fixed_rate_note":"""$FIXED_NOTE""",
      "profile":profile,"profile_note":"""$PROFILE_NOTE""",
      "micro":micro,"raw":"$RES","dur":$DUR,"pairs":$PAIRS,"pair_dur":$PAIR_DUR,"conns":[int(c) for c in "${CONNS_LIST[*]}".split()],
      "conns_note":"""$CONNS_NOTE""","ha_maxconn":$HA_MAXCONN,"ng_keepalive":$NG_KEEPALIVE,"ng_conns":$NG_CONNS,
      "prod_toml":env.get("PROD_TOML",""),"prod_sample":env.get("KGP_SAMPLE",""),
      "nginx_log_conf":env.get("NGL_DIRECTIVE",""),
      "perf_reports":dict(x.split("=",1) for x in "$PERF_REPORTS".split())}
json.dump(meta,open(sys.argv[1],"w"))
EOF
T report "$RES" "$WORK/meta.json" "$OUT"
log "wrote $OUT (work dir $WORK, ${ELAPSED}s)"
