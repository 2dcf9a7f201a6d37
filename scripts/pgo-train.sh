#!/usr/bin/env bash
# The training run of keygate's profile-guided build (scripts/build-pgo.sh), and a check of
# it: BIN serves the requests a gateway serves most, from curl, and every answer must have
# the status it should. The test suite runs it against the debug binary.
#
#   scripts/pgo-train.sh BIN
#
# Two gateways, one after the other: the minimal configuration, and the production one (a
# metrics listener and a JSON access line per request, scraped once). Each gets chat
# completions (most of the traffic), streamed ones, the model list and refusals (no key, a
# wrong key), over HTTP/1.1 keep-alive and over HTTP/2 (h2c). Upstream: `BIN mock`. Loopback
# only, ports the kernel picks; each process is stopped with SIGTERM and waited for (an
# instrumented binary writes its profile when it exits). PGO_REQUESTS (6000) per gateway.
set -euo pipefail

BIN=$(realpath "$1")
N=${PGO_REQUESTS:-6000}
WORK=$(mktemp -d /tmp/keygate-pgo.XXXXXX)
PIDS=()
stop_all() {
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    PIDS=()
}
trap 'stop_all; rm -rf "$WORK"' EXIT

# url_from FILE WHAT: the http:// address FILE's "listening on" line names (10 s at most).
url_from() {
    for _ in $(seq 200); do
        local url
        url=$(grep -o 'listening on http://[0-9.:]*' "$1" 2>/dev/null | head -1 | cut -d' ' -f3) || true
        [[ -n "$url" ]] && { echo "$url"; return; }
        sleep 0.05
    done
    echo "pgo-train: $2 did not start; its output:" >&2
    cat "$1" "${1%.out}.err" >&2 || true
    exit 1
}

"$BIN" mock --listen 127.0.0.1:0 >"$WORK/mock.out" 2>"$WORK/mock.err" &
PIDS+=($!)
MOCK=$(url_from "$WORK/mock.out" "the mock upstream")

BODY='{"model":"llama-3.1-8b-instruct","messages":[{"role":"user","content":"Say hello in five words, please."}],"max_tokens":16}'
STREAM='{"model":"llama-3.1-8b-instruct","messages":[{"role":"user","content":"Say hello."}],"max_tokens":16,"stream":true}'

# requests FILE URL KEY HOW COUNT: a curl config of COUNT requests (separated by `next`), and
# the statuses they must get in FILE.want. The mix, per 20 requests: 14 chat, 3 streamed
# chat, 1 model list, 1 without a key, 1 with a wrong key.
requests() {
    local file=$1 url=$2 key=$3 how=$4 count=$5 i
    : >"$file"
    : >"$file.want"
    for ((i = 0; i < count; i++)); do
        {
            echo "$how"
            case $((i % 20)) in
            0 | 1 | 2)
                echo "url = \"$url/v1/chat/completions\""
                echo "header = \"Authorization: Bearer $key\""
                echo 'header = "Content-Type: application/json"'
                printf 'data = "%s"\n' "${STREAM//\"/\\\"}"
                ;;
            3)
                echo "url = \"$url/v1/models\""
                echo "header = \"Authorization: Bearer $key\""
                ;;
            4 | 5)
                local auth=""
                ((i % 20 == 5)) && auth="Bearer ${key}x"
                if [[ $how == http1.1 ]]; then
                    echo "url = \"$url/v1/chat/completions\""
                    echo 'header = "Content-Type: application/json"'
                    printf 'data = "%s"\n' "${BODY//\"/\\\"}"
                else
                    # Refused before its body is read, an HTTP/2 request ends with the
                    # answer and a stream reset, which curl 7.88 sometimes reports as an
                    # error: over HTTP/2 the refused requests have no body.
                    echo "url = \"$url/v1/models\""
                fi
                [[ -n $auth ]] && echo "header = \"Authorization: $auth\""
                ;;
            *)
                echo "url = \"$url/v1/chat/completions\""
                echo "header = \"Authorization: Bearer $key\""
                echo 'header = "Content-Type: application/json"'
                printf 'data = "%s"\n' "${BODY//\"/\\\"}"
                ;;
            esac
            echo 'output = "/dev/null"'
            echo 'write-out = "%{http_code}\n"'
            ((i + 1 < count)) && echo 'next'
        } >>"$file"
        case $((i % 20)) in
        4 | 5) echo 401 ;;
        *) echo 200 ;;
        esac >>"$file.want"
    done
}

# check PATH WHAT: the statuses PATH.got (in any order: parallel transfers finish out of
# order) are those PATH.curl.want says.
check() {
    if ! diff <(sort "$1.curl.want" | uniq -c) <(sort "$1.got" | uniq -c) >"$1.diff"; then
        echo "pgo-train: $2: statuses differ (want < > got):" >&2
        head -20 "$1.diff" "$1.err" >&2
        exit 1
    fi
}

for profile in minimal production; do
    dir=$WORK/$profile
    mkdir -p "$dir"
    {
        printf '[server]\nlisten = "127.0.0.1:0"\n[keys]\nfile = "keys.json"\n'
        # Limits out of the way: the refusals trained are the ones of a missing or wrong key.
        printf '[limits]\nrequests_per_minute = 100000000\nfailed_auth_per_minute = 100000000\n'
        printf '[[upstream]]\nname = "mock"\nurl = "%s"\nmodels = ["*"]\n' "$MOCK"
        if [[ $profile == production ]]; then
            printf '[metrics]\nlisten = "127.0.0.1:0"\n[log]\nformat = "json"\nlevel = "info"\n'
        else
            printf '[log]\nlevel = "warn"\n'
        fi
    } >"$dir/gateway.toml"
    key=$("$BIN" keys create --config "$dir/gateway.toml" --name pgo 2>/dev/null |
        grep -o 'sk_kg_[A-Za-z0-9]*' | head -1) || true
    [[ -n "$key" ]] || {
        echo "pgo-train: keys create printed no key" >&2
        exit 1
    }
    (cd "$dir" && exec "$BIN" serve --config gateway.toml >serve.out 2>serve.err) &
    gw=$!
    PIDS+=("$gw")
    url=$(url_from "$dir/serve.out" "the $profile gateway")
    # HTTP/1.1: N requests over 16 keep-alive connections.
    requests "$dir/h1.curl" "$url" "$key" http1.1 "$N"
    curl --no-progress-meter --parallel --parallel-max 16 --config "$dir/h1.curl" \
        >"$dir/h1.got" 2>"$dir/h1.err" || true
    check "$dir/h1" "the $profile gateway over HTTP/1.1"
    # HTTP/2 (h2c): a connection per request, 8 at a time. curl 7.88 (Debian 12's) fails a
    # request on a reused HTTP/2 cleartext connection with any server ("Error in the HTTP2
    # framing layer"), so each curl makes one request.
    requests "$dir/h2.curl" "$url" "$key" http2-prior-knowledge "$((N / 10))"
    awk 'BEGIN { RS = "next\n" } { f = sprintf("%s/h2.%05d", dir, NR); printf "%s", $0 > f; close(f) }' \
        dir="$dir" "$dir/h2.curl"
    find "$dir" -name 'h2.[0-9]*' -print0 |
        xargs -0 -P 8 -n 1 curl --no-progress-meter --config >"$dir/h2.got" 2>"$dir/h2.err" || true
    check "$dir/h2" "the $profile gateway over HTTP/2"
    if [[ $profile == production ]]; then
        maddr=$(grep -o '"addr":"[0-9.:]*"' "$dir/serve.err" | head -1 | cut -d'"' -f4) || true
        curl --silent --fail "http://$maddr/metrics" >"$dir/metrics" || true
        grep -q '^keygate_requests_total' "$dir/metrics" || {
            echo "pgo-train: no metrics from the production gateway" >&2
            exit 1
        }
    fi
    kill -TERM "$gw"
    wait "$gw" || {
        echo "pgo-train: the $profile gateway did not exit cleanly" >&2
        exit 1
    }
done
stop_all
echo "pgo-train: $((2 * (N + N / 10))) requests, every status as it should be"
