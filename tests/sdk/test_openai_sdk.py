"""End-to-end tests of keygate with the official `openai` Python SDK.

A session fixture starts the built-in mock upstream (`keygate mock`) and a gateway
(`keygate serve`) in front of it as subprocesses, with a handful of keys created through
the CLI beforehand. Every test talks to the gateway only through the SDK, the way a user's
application would.

Binary: $KEYGATE_BIN, default target/debug/keygate relative to the repository root.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import openai
import pytest
from openai import OpenAI

REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0

MOCK_MODELS = {"llama-3.1-8b-instruct", "qwen2.5-7b-instruct", "bge-small-en"}
LLAMA = "llama-3.1-8b-instruct"
QWEN = "qwen2.5-7b-instruct"
BGE = "bge-small-en"


def mock_reply(user_text: str) -> str:
    return f"Hello from the keygate mock. You said: {user_text}"


BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def well_formed_key(secret: str, prefix: str = "sk_kg") -> str:
    """A token with a correct checksum (reference: Keys: 6 base62 digits of CRC32 over everything
    before it, most significant first, zero-padded) that the gateway never issued."""
    body = f"{prefix}_{secret}"
    crc = zlib.crc32(body.encode())
    check = ""
    for _ in range(6):
        check = BASE62[crc % 62] + check
        crc //= 62
    return body + check


def keygate_bin() -> Path:
    raw = os.environ.get("KEYGATE_BIN", "target/debug/keygate")
    p = Path(raw)
    if not p.is_absolute():
        p = REPO_ROOT / p
    if not p.exists():
        pytest.exit(f"keygate binary not found at {p}; run `cargo build` first", returncode=2)
    return p


# ---------------------------------------------------------------------------
# Subprocess handling
# ---------------------------------------------------------------------------


class Proc:
    """A child process whose stdout is read line by line on a thread (never blocks the
    child) and whose stderr goes to a log file, shown when something goes wrong."""

    def __init__(self, name: str, argv: list[str], workdir: Path) -> None:
        self.name = name
        self.stderr_path = workdir / f"{name}.stderr.log"
        self._stderr = open(self.stderr_path, "wb")
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.popen = subprocess.Popen(
            argv,
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            bufsize=1,
            start_new_session=True,
        )
        threading.Thread(target=self._pump, name=f"{name}-stdout", daemon=True).start()

    def _pump(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)  # EOF

    def stderr_tail(self, n: int = 40) -> str:
        try:
            self._stderr.flush()
            text = self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-n:])

    def wait_for_line(self, marker: str, timeout: float = START_TIMEOUT_S) -> str:
        """Return the first stdout line containing `marker`, or fail with the child's
        stderr if it exits or the timeout passes first."""
        deadline = time.monotonic() + timeout
        seen: list[str] = []
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                self.stop()
                raise RuntimeError(
                    f"{self.name}: no line with {marker!r} within {timeout}s; "
                    f"stdout={seen!r}\nstderr:\n{self.stderr_tail()}"
                )
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                rc = self.popen.wait(timeout=STOP_TIMEOUT_S)
                raise RuntimeError(
                    f"{self.name} exited with {rc} before printing {marker!r}; "
                    f"stdout={seen!r}\nstderr:\n{self.stderr_tail()}"
                )
            seen.append(line)
            if marker in line:
                return line

    def stop(self) -> int | None:
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.popen.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.popen.wait(timeout=STOP_TIMEOUT_S)
        self._stderr.close()
        return self.popen.returncode


def address_from(line: str) -> str:
    # "... listening on http://127.0.0.1:PORT"
    url = line.rsplit("listening on", 1)[1].strip()
    assert url.startswith("http://"), line
    return url


# ---------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------


@dataclass
class Gateway:
    url: str  # http://127.0.0.1:PORT
    bin: Path
    config: Path
    proc: Proc
    keys: dict[str, dict] = field(default_factory=dict)

    def cli(self, *args: str) -> str:
        res = subprocess.run(
            [str(self.bin), *args],
            cwd=self.config.parent,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert res.returncode == 0, f"keygate {' '.join(args)} failed: {res.stderr}"
        return res.stdout

    def create_key(self, name: str, *extra: str) -> dict:
        out = self.cli("keys", "create", "--config", str(self.config), "--name", name, "--json", *extra)
        info = json.loads(out)
        assert info["key"].startswith("sk_kg_"), info
        assert info["id"].startswith("key_"), info
        return info

    def revoke(self, key_id: str) -> None:
        self.cli("keys", "revoke", "--config", str(self.config), key_id)

    def client(self, key: str | dict, **kw) -> OpenAI:
        if isinstance(key, dict):
            key = key["key"]
        return OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, timeout=15.0, **kw)


@pytest.fixture(scope="session")
def gateway():
    # The gateway is on loopback: never send the SDK's requests through a configured proxy.
    for var in ("NO_PROXY", "no_proxy"):
        os.environ[var] = ",".join(filter(None, ["127.0.0.1,localhost", os.environ.get(var)]))
    binary = keygate_bin()
    workdir = Path(tempfile.mkdtemp(prefix="keygate-sdk-"))
    procs: list[Proc] = []
    try:
        mock = Proc("mock", [str(binary), "mock", "--listen", "127.0.0.1:0"], workdir)
        procs.append(mock)
        mock_url = address_from(mock.wait_for_line("listening on"))

        config = workdir / "gateway.toml"
        config.write_text(
            "[server]\n"
            'listen = "127.0.0.1:0"\n'
            'drain_timeout = "2s"\n'
            "[keys]\n"
            'file = "keys.json"\n'
            'poll_interval = "200ms"\n'
            "[[upstream]]\n"
            'name = "mock"\n'
            f'url = "{mock_url}"\n'
        )
        gw = Gateway(url="", bin=binary, config=config, proc=None)  # type: ignore[arg-type]
        # Keys must exist before `serve` starts (it needs the key file).
        gw.keys["full"] = gw.create_key("sdk-full")
        gw.keys["llama"] = gw.create_key("sdk-llama-only", "--models", "llama-*")
        gw.keys["emb"] = gw.create_key("sdk-embeddings-only", "--scopes", "embeddings")
        gw.keys["rpm2"] = gw.create_key("sdk-rpm2", "--rpm", "2")
        gw.keys["revoked"] = gw.create_key("sdk-revoked")
        gw.revoke(gw.keys["revoked"]["id"])
        gw.keys["live_revoke"] = gw.create_key("sdk-live-revoke")

        proc = Proc("gateway", [str(binary), "serve", "--config", str(config)], workdir)
        procs.append(proc)
        gw.url = address_from(proc.wait_for_line("listening on"))
        gw.proc = proc
        yield gw
    finally:
        for p in reversed(procs):
            p.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def full(gateway: Gateway) -> OpenAI:
    return gateway.client(gateway.keys["full"])


def assert_refusal(err: openai.APIStatusError, status: int, type_: str, code: str, secret: str | None = None):
    """An OpenAI-shaped refusal (reference: Errors) with a request id, never echoing the key."""
    resp = err.response
    assert resp.status_code == status, resp.text
    assert err.code == code, resp.text
    assert err.type == type_, resp.text
    assert resp.headers.get("content-type", "").startswith("application/json")
    body = resp.json()
    assert set(body) == {"error"}, body
    assert {"message", "type", "param", "code"} <= set(body["error"]), body
    assert body["error"]["param"] is None
    assert resp.headers.get("x-request-id"), dict(resp.headers)
    if secret is not None:
        assert secret not in resp.text
        assert all(secret not in v for v in resp.headers.values())


# ---------------------------------------------------------------------------
# Inference through the SDK
# ---------------------------------------------------------------------------


def test_chat_completion(full: OpenAI):
    r = full.chat.completions.create(
        model=LLAMA,
        messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi there"}],
    )
    assert r.object == "chat.completion"
    assert r.model == LLAMA
    assert len(r.choices) == 1
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == mock_reply("hi there")
    assert r.choices[0].finish_reason == "stop"
    assert r.usage is not None
    # mock counts whitespace-separated words: prompt "be brief" + "hi there" = 4,
    # reply "Hello from the keygate mock. You said: hi there" = 9
    assert r.usage.prompt_tokens == 4
    assert r.usage.completion_tokens == 9
    assert r.usage.total_tokens == 13


def test_chat_completion_raw_response_headers(gateway: Gateway, full: OpenAI):
    raw = full.chat.completions.with_raw_response.create(
        model=LLAMA, messages=[{"role": "user", "content": "hi"}]
    )
    assert raw.status_code == 200
    assert raw.headers.get("x-request-id")
    assert raw.headers.get("x-ratelimit-limit-requests")
    assert raw.headers.get("x-ratelimit-remaining-requests")
    assert raw.headers.get("x-ratelimit-reset-requests")
    r = raw.parse()
    assert r.choices[0].message.content == mock_reply("hi")


def test_streamed_chat(full: OpenAI):
    stream = full.chat.completions.create(
        model=LLAMA, messages=[{"role": "user", "content": "stream please"}], stream=True
    )
    chunks = list(stream)
    assert len(chunks) > 2
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == mock_reply("stream please")
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks)


def test_streamed_chat_include_usage(full: OpenAI):
    stream = full.chat.completions.create(
        model=QWEN,
        messages=[{"role": "user", "content": "count me"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == mock_reply("count me")
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    # the mock counts whitespace-separated words
    assert last.usage.prompt_tokens == 2
    assert last.usage.completion_tokens == len(mock_reply("count me").split())
    assert last.usage.total_tokens == 2 + len(mock_reply("count me").split())
    assert all(c.usage is None for c in chunks[:-1])


def test_stream_events_arrive_as_sent(full: OpenAI):
    """reference: Forwarding: each SSE event reaches the client as the upstream sends it (no buffering)."""
    interval_ms = 100
    t0 = time.monotonic()
    arrivals = []
    with full.chat.completions.create(
        model=LLAMA,
        messages=[{"role": "user", "content": "slow"}],
        stream=True,
        extra_headers={"x-mock-interval-ms": str(interval_ms)},
    ) as stream:
        for chunk in stream:
            arrivals.append(time.monotonic() - t0)
    assert len(arrivals) >= 5
    total = arrivals[-1]
    # Events spaced 100 ms apart upstream must be spread out at the client too: the first
    # arrives long before the last, and no single gap swallows most of the stream.
    assert total >= (len(arrivals) - 2) * interval_ms / 1000 * 0.8, arrivals
    assert arrivals[0] < total / 2, arrivals
    assert arrivals[len(arrivals) // 2] < total * 0.8, arrivals


def test_completions(full: OpenAI):
    r = full.completions.create(model=LLAMA, prompt="complete this")
    assert r.choices[0].text == mock_reply("complete this")
    assert r.usage is not None and r.usage.prompt_tokens == 2


def test_embeddings(full: OpenAI):
    r = full.embeddings.create(model=BGE, input=["first text", "second text"])
    assert r.model == BGE
    assert len(r.data) == 2
    assert [d.index for d in r.data] == [0, 1]
    for d in r.data:
        assert isinstance(d.embedding, list) and len(d.embedding) > 0
        assert all(isinstance(x, float) for x in d.embedding)
    assert r.data[0].embedding != r.data[1].embedding
    assert r.usage.prompt_tokens == 4


def test_embeddings_float_format(full: OpenAI):
    r = full.embeddings.create(model=BGE, input="one", encoding_format="float")
    assert len(r.data) == 1 and len(r.data[0].embedding) > 0


def test_models_list(full: OpenAI):
    ids = {m.id for m in full.models.list()}
    assert ids == MOCK_MODELS


def test_models_retrieve(full: OpenAI):
    m = full.models.retrieve(LLAMA)
    assert m.id == LLAMA


# ---------------------------------------------------------------------------
# Model allowlist
# ---------------------------------------------------------------------------


def test_model_allowlist_filters_models_list(gateway: Gateway):
    c = gateway.client(gateway.keys["llama"])
    ids = [m.id for m in c.models.list()]
    assert ids == [LLAMA]


def test_model_allowlist_allows_matching_model(gateway: Gateway):
    c = gateway.client(gateway.keys["llama"])
    r = c.chat.completions.create(model=LLAMA, messages=[{"role": "user", "content": "ok"}])
    assert r.choices[0].message.content == mock_reply("ok")


def test_model_allowlist_refuses_other_model(gateway: Gateway):
    key = gateway.keys["llama"]["key"]
    c = gateway.client(key)
    with pytest.raises(openai.PermissionDeniedError) as ei:
        c.chat.completions.create(model=QWEN, messages=[{"role": "user", "content": "no"}])
    assert_refusal(ei.value, 403, "permission_error", "model_not_allowed", secret=key)


def test_model_allowlist_refuses_other_model_streaming(gateway: Gateway):
    c = gateway.client(gateway.keys["llama"])
    with pytest.raises(openai.PermissionDeniedError) as ei:
        c.chat.completions.create(model=QWEN, messages=[{"role": "user", "content": "no"}], stream=True)
    assert ei.value.code == "model_not_allowed"


def test_model_allowlist_refuses_embeddings_model(gateway: Gateway):
    c = gateway.client(gateway.keys["llama"])
    with pytest.raises(openai.PermissionDeniedError) as ei:
        c.embeddings.create(model=BGE, input="x")
    assert ei.value.code == "model_not_allowed"


# ---------------------------------------------------------------------------
# Authentication
# ---------------------------------------------------------------------------


def test_wrong_key(gateway: Gateway):
    real = gateway.keys["full"]["key"]
    # Malformed (another vendor's shape), and well-formed with a good checksum but never issued.
    unknown = well_formed_key("A" * 32)
    for key in ("sk-not-a-keygate-key", unknown):
        c = gateway.client(key)
        with pytest.raises(openai.AuthenticationError) as ei:
            c.chat.completions.create(model=LLAMA, messages=[{"role": "user", "content": "hi"}])
        assert_refusal(ei.value, 401, "authentication_error", "invalid_api_key", secret=key)
        assert ei.value.response.headers.get("www-authenticate", "").startswith("Bearer")
        assert real not in ei.value.response.text


def test_bad_checksum_key(gateway: Gateway):
    real = gateway.keys["full"]["key"]
    # Flip one character of the secret part: the checksum no longer matches.
    i = len("sk_kg_") + 3
    flipped = real[:i] + ("a" if real[i] != "a" else "b") + real[i + 1 :]
    c = gateway.client(flipped)
    with pytest.raises(openai.AuthenticationError) as ei:
        c.models.list()
    assert_refusal(ei.value, 401, "authentication_error", "invalid_api_key", secret=flipped)


def test_revoked_key(gateway: Gateway):
    key = gateway.keys["revoked"]["key"]
    c = gateway.client(key)
    with pytest.raises(openai.AuthenticationError) as ei:
        c.chat.completions.create(model=LLAMA, messages=[{"role": "user", "content": "hi"}])
    assert_refusal(ei.value, 401, "authentication_error", "revoked_api_key", secret=key)
    assert ei.value.response.headers.get("www-authenticate", "").startswith("Bearer")


def test_key_revoked_while_running(gateway: Gateway):
    """The key file is reloaded without a restart: a CLI revoke takes effect promptly."""
    info = gateway.keys["live_revoke"]
    c = gateway.client(info)
    assert {m.id for m in c.models.list()} == MOCK_MODELS
    gateway.revoke(info["id"])
    deadline = time.monotonic() + 10
    while True:
        try:
            c.models.list()
        except openai.AuthenticationError as e:
            assert e.code == "revoked_api_key", e.response.text
            break
        assert time.monotonic() < deadline, "revoked key still accepted 10s after `keys revoke`"
        time.sleep(0.1)


# ---------------------------------------------------------------------------
# Scopes
# ---------------------------------------------------------------------------


def test_scope_allows_embeddings(gateway: Gateway):
    c = gateway.client(gateway.keys["emb"])
    r = c.embeddings.create(model=BGE, input="hello")
    assert len(r.data) == 1


def test_scope_refuses_chat(gateway: Gateway):
    key = gateway.keys["emb"]["key"]
    c = gateway.client(key)
    with pytest.raises(openai.PermissionDeniedError) as ei:
        c.chat.completions.create(model=LLAMA, messages=[{"role": "user", "content": "hi"}])
    assert_refusal(ei.value, 403, "permission_error", "insufficient_permissions", secret=key)
    assert "chat" in ei.value.response.json()["error"]["message"]


def test_scope_refuses_models_list(gateway: Gateway):
    c = gateway.client(gateway.keys["emb"])
    with pytest.raises(openai.PermissionDeniedError) as ei:
        c.models.list()
    assert ei.value.code == "insufficient_permissions"
    assert "models" in ei.value.response.json()["error"]["message"]


# ---------------------------------------------------------------------------
# Rate limits
# ---------------------------------------------------------------------------


def test_rate_limit(gateway: Gateway):
    key = gateway.keys["rpm2"]["key"]
    c = gateway.client(key)
    remaining = []
    for _ in range(2):
        raw = c.models.with_raw_response.list()
        assert raw.status_code == 200
        assert raw.headers.get("x-ratelimit-limit-requests") == "2"
        remaining.append(int(raw.headers["x-ratelimit-remaining-requests"]))
        assert raw.headers.get("x-ratelimit-reset-requests")
    assert remaining == [1, 0]
    with pytest.raises(openai.RateLimitError) as ei:
        c.chat.completions.create(model=LLAMA, messages=[{"role": "user", "content": "hi"}])
    err = ei.value
    assert_refusal(err, 429, "rate_limit_error", "rate_limit_exceeded", secret=key)
    h = err.response.headers
    assert h.get("x-ratelimit-limit-requests") == "2"
    assert h.get("x-ratelimit-remaining-requests") == "0"
    assert h.get("retry-after") is not None and int(h["retry-after"]) >= 1, dict(h)
    assert h.get("retry-after-ms") is not None and int(h["retry-after-ms"]) > 0, dict(h)


# ---------------------------------------------------------------------------
# Request ids, upstream errors
# ---------------------------------------------------------------------------


def test_every_answer_has_request_id(gateway: Gateway, full: OpenAI):
    seen = set()
    raws = [
        full.chat.completions.with_raw_response.create(model=LLAMA, messages=[{"role": "user", "content": "a"}]),
        full.completions.with_raw_response.create(model=LLAMA, prompt="b"),
        full.embeddings.with_raw_response.create(model=BGE, input="c"),
        full.models.with_raw_response.list(),
        full.models.with_raw_response.retrieve(LLAMA),
    ]
    for raw in raws:
        rid = raw.headers.get("x-request-id")
        assert rid, (raw.http_request.url, dict(raw.headers))
        seen.add(rid)
    with full.chat.completions.with_streaming_response.create(
        model=LLAMA, messages=[{"role": "user", "content": "s"}], stream=True
    ) as resp:
        rid = resp.headers.get("x-request-id")
        assert rid
        seen.add(rid)
        assert sum(1 for _ in resp.iter_lines()) > 0
    assert len(seen) == 6, "request ids must be distinct"
    # Refusals carry one too.
    with pytest.raises(openai.AuthenticationError) as ei:
        gateway.client("sk-wrong").models.list()
    assert ei.value.response.headers.get("x-request-id")


def test_client_request_id_is_kept(full: OpenAI):
    raw = full.chat.completions.with_raw_response.create(
        model=LLAMA,
        messages=[{"role": "user", "content": "id"}],
        extra_headers={"x-request-id": "sdk-test-req-42"},
    )
    assert raw.headers.get("x-request-id") == "sdk-test-req-42"


def test_upstream_error_reaches_sdk(full: OpenAI):
    with pytest.raises(openai.InternalServerError) as ei:
        full.chat.completions.create(
            model=LLAMA,
            messages=[{"role": "user", "content": "fail"}],
            extra_headers={"x-mock-status": "500"},
        )
    assert ei.value.response.headers.get("x-request-id")
    assert ei.value.response.headers.get("content-type", "").startswith("application/json")
