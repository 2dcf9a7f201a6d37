//! keygate: an API-key gateway for self-hosted, OpenAI-compatible inference servers.
//!
//! A request runs through the stages of `pipeline`, in this order: listener (`server`) →
//! probes (`ops::probes`) → route (`authorize`) → capacity (`limit`) → authenticate (`auth`) →
//! rate (`limit`) → scope (`authorize`) → quota and slot (`limit`) → model
//! (`authorize::model`) → upstream and forward (`proxy`) → answer (`error`, `limit::answer`) →
//! account (`account`, when the answer's body ends). Around them: the key set (`keys`), usage
//! over time (`usage`), the management API (`admin`), operations (`ops`), the command line
//! (`cli`), `config`, and the shared state (`gateway`).
//! docs/architecture.md explains the internals; this is its module map:
//!
//! | file | what it holds |
//! |---|---|
//! | `lib.rs` | the crate root, with this map |
//! | `main.rs` | the binary: parses the command line and runs `cli::run` |
//! | `pipeline.rs` | one request: every stage, in the order it runs |
//! | `gateway/mod.rs` | `Gateway` (what lives while the process serves) and `Live` (the one `ArcSwap` of reloadable state) |
//! | `gateway/reload.rs` | every way `Live` changes: key reloads, changes applied to the index, compaction, config reloads |
//! | `gateway/upstreams.rs` | upstreams built from the configuration, reusing unchanged pools |
//! | `error/mod.rs` | `GatewayError`: every refusal's status, type, code and message; `NotReady` |
//! | `error/body.rs` | a refusal's JSON body written by hand, byte for byte what `serde_json` writes: refusals are what an abusive client makes the gateway write |
//! | `error/convert.rs` | other errors as refusals (key store, bodies, JSON bodies); no answer repeats a key |
//! | `server/mod.rs` | stage 1: `run` — accept loop, shutdown and drain, hyper's settings (rebuilt when a reload changes them), a connection's task (`server_tests.rs`: its unit test) |
//! | `server/accept.rs` | accepting while out of descriptors, the per-address cap, raising the open-file limit |
//! | `server/connection.rs` | a connection's driver: header-read, idle and write deadlines, graceful close |
//! | `server/activity.rs` | `Activity`: what a connection's requests tell its driver (in progress, waiting on the client, cancelled before their answer, which of its futures woke it) |
//! | `server/nudge.rs` | a waker per future the driver polls beside hyper, each setting one bit, so it polls only what woke it |
//! | `server/detect.rs` | the first bytes of a connection bounded in time; a client that cancels what it asks is cut off at its next read |
//! | `server/peer.rs` | `Peer`: the peer, TLS or not, the client address behind trusted proxies |
//! | `server/request_id.rs` | request ids: the client's when it may be kept, else the gateway's |
//! | `server/tls.rs` | the listener's certificate (reloaded when its files change); trust roots for HTTPS upstreams |
//! | `auth/mod.rs` | stage 2: `authenticate`, `find_key`, `Caller` |
//! | `auth/credential.rs` | the one credential: Bearer, `x-api-key`, Basic |
//! | `auth/secrets.rs` | keys where they must not be: in a URL, in client text |
//! | `authorize/mod.rs` | stage 3: `route` (deny by default), `scope` |
//! | `authorize/routes.rs` | the route table (built-in and `[[route]]`), paths in normal form |
//! | `authorize/model.rs` | the model stage: the body read as far as its model, the model checked |
//! | `authorize/body.rs` | how a body is encoded, why one cannot be checked, a form's model |
//! | `authorize/json_body.rs` | the one JSON body reader: model and facts, read as every upstream would; the stream-usage rewrite (`json_body_tests.rs`: its unit tests) |
//! | `authorize/json_values.rs` | how that reader reads a value: `model` as any JSON value, counts as leniently as upstreams do, the prompts in `prompt` |
//! | `authorize/multipart.rs` | a multipart upload whose model is read while it streams |
//! | `authorize/envelope.rs` | nothing but whitespace before a multipart body's first boundary and after its last |
//! | `authorize/part_name.rs` | which multipart part is `model`, read strictly |
//! | `limit/mod.rs` | stage 4: `check_rate`, `acquire_slot`, `reserve_tokens`, local or on Redis with its failure policy; settling a token charge |
//! | `limit/answer.rs` | every limit header: `x-ratelimit-*`, `retry-after`, `retry-after-ms`, a quota refusal's `x-should-retry` |
//! | `limit/quota.rs` | quotas per UTC day and month: `QuotaState` (store total + unflushed + running requests' token estimates), the check, the token hold, the view (`quota_tests.rs`: its unit tests) |
//! | `limit/rate.rs` | `RateCell` (GCRA in 8 bytes), `RateClock`, `Quota`, `Verdict` |
//! | `limit/tokens.rs` | `TokenBucket` |
//! | `limit/inflight.rs` | `InFlight` (per key) and `Capacity` (gateway-wide) |
//! | `limit/failed_auth.rs` | `FailedAuthGuard`, per client address |
//! | `limit/redis/mod.rs` | `RedisBackend`: the checks, the lease keeper |
//! | `limit/redis/connection.rs` | the one connection: made in the background, made anew after a failed login or on a read-only replica, probed while the breaker is open |
//! | `limit/redis/breaker.rs` | the circuit breaker; failures logged once per change |
//! | `limit/redis/leases.rs` | in-flight slots held as leases, renewed while their request runs |
//! | `limit/redis/scripts.rs` | the Lua scripts (`rate.lua`, `slot.lua`, `tokens.lua` beside it), twins of the local limiters |
//! | `proxy/mod.rs` | stage 5: `choose`, `forward`, `send`, `list_models` |
//! | `proxy/upstream.rs` | `Upstream`: its pool, the upstream's request, the first-byte deadline on the wait for its head |
//! | `proxy/first_byte.rs` | that deadline, counted from the request body's last byte (an upload still arriving moves it on) |
//! | `proxy/pool/mod.rs` | `Pool`: an upstream's connections, leased to the request's own task |
//! | `proxy/pool/send.rs` | `PoolSend`: a request onto an idle or new connection, and the wait for its head |
//! | `proxy/pool/connect.rs` | a new connection: TCP, TLS, the HTTP/1.1 handshake, within the connect timeout |
//! | `proxy/pool/lease.rs` | `Lease`: a connection in use by one request; a healthy one closed by a cancel is replaced |
//! | `proxy/pool/conn.rs` | one connection, the idle stack, plain or TLS transport, `SendError` |
//! | `proxy/pool/wake.rs` | `DriveWaker`: the waker a connection is driven with, which drops the body channel's wake of the task taking a frame |
//! | `proxy/headers.rs` | header hygiene in both directions |
//! | `proxy/request_body.rs` | `UpBody`: the body sent upstream |
//! | `proxy/response_body.rs` | `Body`: the answer as it streams, carrying the request's record (`response_body_tests.rs`: its unit tests) |
//! | `proxy/whole.rs` | whole answers the gateway writes itself (`text`, `json`) and the bodiless HEAD answer |
//! | `proxy/idle.rs` | body frames bounded in time; how a client's body fails |
//! | `proxy/stream_usage.rs` | the usage-only SSE event hidden from a client that did not ask for it |
//! | `proxy/revoke.rs` | an answer ended when its key is revoked |
//! | `proxy/sending.rs` | `Sending`: the wait for the answer's head, raced against a revoke of the key |
//! | `proxy/health.rs` | an upstream's cached health-check result |
//! | `account/mod.rs` | stage 6: the settlement, when a `RequestRecord` drops |
//! | `account/record.rs` | `RequestRecord`, `TokenUsage` |
//! | `account/scanner.rs` | usage read from an answer as it streams; for the Responses API, only where upstreams report it (`scanner_tests.rs`: its unit tests) |
//! | `account/scanner/flat.rs` | the fast read of usage, for answers that echo no request structure |
//! | `account/relayed.rs` | relayed text counted for a stream cut short |
//! | `account/access_log.rs` | the access line (`access_log_tests.rs`: its unit tests) |
//! | `account/answer_model.rs` | the model an upstream's answer names (usage's model when the request's was not read) |
//! | `keys/token.rs` | the token format (prefix, secret, checksum), generation, hashing |
//! | `keys/scope.rs` | `Scope`, `Scopes` |
//! | `keys/models.rs` | model globs (allowlists; upstreams' `models` too) |
//! | `keys/record.rs` | `KeyRecord` (one key in the file), `NewKey`, the one record validator |
//! | `keys/ops.rs` | every change to a key (create, update, rotate, revoke, disable, enable) as functions on records, with what changed for the audit trail (`ops_tests.rs`: its unit tests) |
//! | `keys/patch.rs` | `KeyPatch`: an edit, field by field keep / remove / set (`Edit`) |
//! | `keys/annotations.rs` | description, metadata labels and quotas, with their checks |
//! | `keys/file.rs` | `KeyFile` (a whole file in memory), `Uniqueness` |
//! | `keys/reader.rs` | the one key-file reader: streaming, each record's text shown before it is parsed (`reader_tests.rs`: its unit tests) |
//! | `keys/syntax.rs` | where the reader's JSON errors are: the file's line and column, and a record's place and field (`keys[3].revoked_at`) |
//! | `keys/source.rs` | where the index reads a key file from: the file a line at a time, or text in memory |
//! | `keys/writer.rs` | the one key-file writer: one compact record per line |
//! | `keys/error.rs` | `StoreError`: what goes wrong reading a key file, in it, or changing it |
//! | `keys/store.rs` | `KeyStore`: the file on disk, locked atomic writes; one key's change streamed (`apply`) |
//! | `keys/backend.rs` | `Store`: the one write path, the key file or the Redis key store, for the CLI and the API |
//! | `keys/shared/mod.rs` | `RedisStore`: the shared key store in Redis, each write one Lua script (`write.lua`, `push.lua`, `restore.lua`) with optimistic concurrency |
//! | `keys/shared/read.rs` | what a replica reads to follow the store: epoch, version, change log, records |
//! | `keys/shared/sync.rs` | `KeySync`: a replica's follow state (applied position, staleness, diverged), read-your-writes wait |
//! | `keys/snapshot.rs` | a replica's snapshot: the key file plus an fsynced journal, folded in the background; `wins`, the monotonic merge |
//! | `keys/index/mod.rs` | `KeyIndex`: SHA-256 → key for a million keys, a base and an overlay of changes; `apply`, `compact` (`tests.rs`, `overlay_tests.rs`: its unit tests; `overlay_props.rs`: a property test) |
//! | `keys/index/base.rs` | the base: sorted arrays built in one streaming pass; record digests |
//! | `keys/index/overlay.rs` | the overlay: changed keys in persistent maps; `KeyChange` |
//! | `keys/index/compact.rs` | a base with its overlay folded in, by linear merges |
//! | `keys/index/reload.rs` | a key-file reload that applies only the records that changed |
//! | `keys/entry.rs` | `KeyEntry`: a key as the request path and the key list see it, compact |
//! | `keys/extra.rs` | `KeyExtra`: what only some keys have, packed in one allocation, equal ones shared |
//! | `keys/view.rs` | `KeyView`: a key's public JSON, from a record or an index entry |
//! | `keys/state.rs` | `KeyState`: a key's runtime state, `Revocation` |
//! | `keys/usage.rs` | `KeyUsage` counters (lifetime; per model, pending for the hourly buckets), `Counts`, `UsageSnapshot`, `Tokens` |
//! | `keys/list.rs` | key lists: the filters the API and the CLI share, a page in one pass with a bounded heap |
//! | `admin/mod.rs` | the management API (`/v1/api-keys`, `/v1/usage`) |
//! | `admin/list.rs` | `GET /v1/api-keys` (paged, filtered, sorted) and `GET /v1/api-keys/{id}`, from the index |
//! | `admin/edit.rs` | `PATCH /v1/api-keys/{id}`: its body as a `KeyPatch` |
//! | `admin/request.rs` | a management request's JSON body (read whole, unknown fields refused by name) and its query string (only the list takes one) |
//! | `usage/mod.rs` | usage over time: `Usage`, the store (memory or Redis) and its flush every second |
//! | `usage/batch.rs` | one flush: what every key has pending, taken off once stored |
//! | `usage/buckets.rs` | file mode's hourly buckets and quota counts, and their state-file form |
//! | `usage/redis.rs` | cluster mode's usage store: the Redis layout, its writes and reads |
//! | `usage/query.rs` | `GET /v1/usage` and `keygate usage`: range, filters, grouping, rows (`query_tests.rs`: its unit tests) |
//! | `usage/window.rs` | hours, UTC days and months and their names; the usage `Clock` |
//! | `admin/console.rs` | the web console's files, embedded |
//! | `ops/metrics/mod.rs` | `Metrics`: handles resolved once, nothing recorded without a listener; `RequestSample` (`tests.rs`: its unit tests) |
//! | `ops/metrics/histogram.rs` | the request path's three histograms: fixed buckets of atomics |
//! | `ops/metrics/names.rs` | series, labels, buckets and their `# HELP`; `UpstreamError` |
//! | `ops/metrics/scrape.rs` | state gauges set at a scrape, the histograms written after the exporter's families; the `/metrics` listener |
//! | `ops/logging.rs` | the log writer: a bounded queue, one thread, a reloadable level |
//! | `ops/audit.rs` | the audit trail of key changes |
//! | `ops/health.rs` | running the upstreams' health checks |
//! | `ops/key_sync.rs` | Redis key store: the follower thread (change log → journal → index; full resync and merge; divergence) and the snapshot writer |
//! | `ops/probes.rs` | `/healthz`, `/readyz`, the console's files |
//! | `ops/maintenance.rs` | the 10 s task: usage saved, expiry warnings, sweeps |
//! | `ops/notify/mod.rs` | webhook notifications (`[notify]`): `start`, the `Notifier` |
//! | `ops/notify/event.rs` | the events, found in the key set (`detect`), and what a notification says |
//! | `ops/notify/watcher.rs` | the task that looks at the key set (at each swap, every 10 s) and queues what is new |
//! | `ops/notify/deliverer.rs` | the task that posts the queue: retries, backoff, giving up |
//! | `ops/notify/webhook.rs` | one attempt: a `POST` over hyper and rustls, and what its answer means |
//! | `ops/notify/payload.rs` | the JSON and Slack bodies |
//! | `ops/notify/ledger.rs` | sent and waiting notifications, in `<state_file>.notify` |
//! | `ops/notify/claim.rs` | cluster mode: one replica sends each notification (claims in Redis, `claim.lua`, `settle.lua`) |
//! | `ops/notify/shared.rs` | what the two tasks share |
//! | `ops/usage_state.rs` | the usage state file (lifetime usage; in file mode buckets and quota counts) |
//! | `cli/mod.rs` | the command line (clap) and its dispatch |
//! | `cli/args.rs` | flags that need more than clap's derive |
//! | `cli/config.rs` | which configuration a command reads |
//! | `cli/error.rs` | `CliError` and the exit status |
//! | `cli/keys.rs` | `keys create/show/rotate/revoke` |
//! | `cli/list.rs` | `keys list`: filtered, printed as the file is read |
//! | `cli/edit.rs` | `keys update/disable/enable` |
//! | `cli/check.rs` | `check` |
//! | `cli/usage.rs` | `usage`, and what `keys show` adds (usage, quota) |
//! | `cli/serve.rs` | `serve`'s process wiring (watchers, metrics listener, maintenance, signals), `mock` |
//! | `cli/store.rs` | `keys push` / `keys pull` (Redis key store) |
//! | `cli/demo.rs` | `demo` |
//! | `cli/output.rs` | tables and JSON for a terminal |
//! | `config/mod.rs` | `Config` and its validated sections |
//! | `config/raw.rs` | `gateway.toml` as written: raw serde structs |
//! | `config/load.rs` | reading `gateway.toml` |
//! | `config/validate/mod.rs` | raw to validated, field by field |
//! | `config/validate/upstream.rs`, `config/validate/cluster.rs` | the `[[upstream]]` and `[cluster]` checks |
//! | `config/cluster.rs` | `[cluster]` and the Redis client it describes |
//! | `config/key_store.rs` | `[keys] store`, `redis_url`, `redis_prefix` |
//! | `config/notify.rs` | `[notify]`: the webhook, validated |
//! | `config/tests.rs` | unit tests of parsing and validation |
//! | `watch.rs` | noticing that a file changed (directory watch, fingerprints, settling) |
//! | `time.rs` | timestamps, human durations, OpenAI's reset form (`time_tests.rs`: its unit tests) |
//! | `text.rs` | control characters refused on input, escaped on output |
//! | `mock/mod.rs`, `mock/reply.rs`, `mock/last_reply.rs` | an OpenAI-compatible mock upstream (demo, tests, benchmarks); a repeated whole completion is the last one again |
#![forbid(unsafe_code)]

pub mod account;
pub mod admin;
pub mod auth;
pub mod authorize;
pub mod cli;
pub mod config;
pub mod error;
pub mod gateway;
pub mod keys;
pub mod limit;
pub mod mock;
pub mod ops;
pub mod pipeline;
pub mod proxy;
pub mod server;
pub mod text;
pub mod time;
pub mod usage;
pub mod watch;
