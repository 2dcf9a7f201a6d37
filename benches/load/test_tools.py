"""Tests of the load harness's statistics: the paired runs' interval and verdicts.

Run by scripts/test.sh with pytest; standard library otherwise.
"""

import json
import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tools  # noqa: E402


def test_the_interval_is_order_statistics_with_their_binomial_coverage():
    m, lo, hi, cov = tools.median_interval(list(range(16)))
    assert m == 7.5
    # 16 values: the 5th smallest and the 5th largest, 1 - 2 * P(Bin(16, 1/2) <= 4).
    assert (lo, hi) == (4, 11)
    assert abs(cov - (1 - 2 * 2517 / 65536)) < 1e-12
    # Too few values for a 90% interval: none, and no verdict from it.
    assert tools.median_interval([1.0, 2.0, 3.0, 4.0])[1:] == (None, None, None)
    assert tools.median_interval([])[0] is None


def _noise(rng):
    """A per-pair ratio on this VM: log-normal, plus a bad second now and then on one side."""
    return rng.lognormvariate(0, 0.15) * (1.6 if rng.random() < 0.1 else 1.0)


def test_the_interval_holds_the_median_at_least_as_often_as_it_says_under_skewed_noise():
    rng = random.Random(11)
    population = sorted(_noise(rng) for _ in range(200_000))
    true_median = population[len(population) // 2]
    trials, held, cov = 3000, 0, None
    for _ in range(trials):
        _, lo, hi, cov = tools.median_interval([_noise(rng) for _ in range(16)])
        held += lo <= true_median <= hi
    assert held / trials >= cov - 0.02, (held / trials, cov)


def test_a_target_is_decided_only_when_the_whole_interval_is_on_one_side():
    assert tools.decide(0.90, 0.98, 1.0, higher_is_better=False) is True
    assert tools.decide(0.95, 1.05, 1.0, higher_is_better=False) == tools.UNDECIDED
    assert tools.decide(1.01, 1.20, 1.0, higher_is_better=False) is False
    assert tools.decide(1.01, 1.20, 1.0, higher_is_better=True) is True
    assert tools.decide(0.85, 0.99, 1.0, higher_is_better=True) is False
    assert tools.decide(None, None, 1.0, higher_is_better=True) is None


def _records(ratio_of_pairs, rounds_ratio):
    """keygate and haproxy at -c32: three rounds with keygate at rounds_ratio of HAProxy's CPU
    per request, and one paired run per value of ratio_of_pairs."""
    rows = []
    base = {"p50_ms": 1.0, "p99_ms": 2.0, "requests": 100_000, "cpu_s": 3.0, "conns": 32}
    for rd in (1, 2, 3):
        for name, cpu in (("keygate", 30.0 * rounds_ratio), ("haproxy", 30.0)):
            rows.append(dict(base, kind="throughput", target=name, round=rd, rps=20_000.0, cpu_ms_per_1k=cpu))
    for i, x in enumerate(ratio_of_pairs, 1):
        for name, cpu in (("keygate", 30.0 * x), ("haproxy", 30.0)):
            rows.append(dict(base, kind="paired", set="keygate/haproxy", target=name, round=i, rps=20_000.0,
                             cpu_ms_per_1k=cpu))
    return rows


def _report(tmp_path, rows):
    res, meta, out = tmp_path / "r.jsonl", tmp_path / "meta.json", tmp_path / "out.md"
    res.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    meta.write_text(json.dumps({"command": "test", "date": "today", "elapsed_s": 1, "rounds": 3, "keys_main": 10,
                                "dur": 5, "pair_dur": 2}))
    tools.report(str(res), str(meta), str(out))
    return out.read_text()


def _rounds_at_256(contenders):
    """Three throughput rounds at 256 connections: (name, rps, p99, load core busy) each."""
    base = {"p50_ms": 5.0, "requests": 200_000, "cpu_s": 4.5, "conns": 256, "kind": "throughput",
            "cpu_ms_per_1k": 22.0}
    return [dict(base, target=name, round=rd, rps=rps, p99_ms=p99, load_core_busy=busy)
            for rd in (1, 2, 3) for name, rps, p99, busy in contenders]


def _row(text, start):
    return next(line for line in text.splitlines() if line.startswith("| " + start))


def test_the_report_decides_the_cpu_target_on_the_paired_runs_not_the_rounds(tmp_path):
    # The rounds alone say 0.95× (met); the pairs spread over 0.80–1.20: undecided.
    spread = [0.80 + 0.4 * i / 15 for i in range(16)]
    text = _report(tmp_path, _records(spread, 0.95))
    row = _row(text, "Minimal config CPU per request ≤ 1.0× HAProxy's")
    assert "**undecided**" in row, row
    assert "16 pairs" in row and "rounds 0.95×" in row, row
    assert "## Paired runs" in text
    # Tight pairs below the bound: met; tight pairs above it: missed, whatever the rounds say.
    assert "**met**" in _row(_report(tmp_path, _records([0.9 + 0.001 * i for i in range(16)], 1.1)),
                             "Minimal config CPU per request ≤ 1.0×")
    assert "**missed**" in _row(_report(tmp_path, _records([1.05 + 0.001 * i for i in range(16)], 0.9)),
                                "Minimal config CPU per request ≤ 1.0×")


def test_without_paired_runs_the_rounds_median_decides_and_says_so(tmp_path):
    text = _report(tmp_path, _records([], 0.95))
    row = _row(text, "Minimal config CPU per request ≤ 1.0× HAProxy's")
    assert "**met**" in row and "no paired runs" in row, row


def test_the_429_target_is_decided_on_its_paired_runs_against_proxied_requests(tmp_path):
    rows = _records([1.0] * 16, 1.0)
    # The rounds' 429 runs say 1.5× (missed); the pairs say 2.2–2.4× (met).
    for rd in (1, 2, 3):
        rows.append({"kind": "reject", "case": "rate_limited", "target": "keygate", "round": rd, "conns": 32,
                     "rps": 30_000.0, "requests": 150_000, "non2xx": 150_000, "cpu_s": 3.0, "cpu_ms_per_1k": 20.0,
                     "p50_ms": 1.0, "p99_ms": 2.0})
    for i in range(1, 17):
        for name, rps in (("keygate-429", 20_000.0 * (2.2 + 0.01 * i)), ("keygate", 20_000.0)):
            rows.append({"kind": "paired", "set": "keygate-429/keygate", "target": name, "round": i, "conns": 32,
                         "rps": rps, "requests": int(rps * 2), "cpu_s": 2.0, "cpu_ms_per_1k": 2.0e6 / (rps * 2),
                         "p50_ms": 1.0, "p99_ms": 2.0})
    text = _report(tmp_path, rows)
    row = _row(text, "rate_limited answered at ≥ 2× proxied throughput")
    assert "**met**" in row and "16 pairs" in row and "rounds 1.50×" in row, row
    assert "**met**" in _row(text, "(same, by CPU per request) rate_limited"), text


def test_callgrind_self_counts_a_functions_own_cost_by_name_or_object(tmp_path):
    # A compressed dump: names given once with their id, then by id alone; a call's line
    # (after `calls=`) is the callee's inclusive cost and belongs to neither side.
    dump = tmp_path / "cg.1.1"
    dump.write_text(
        "events: Ir Dr\n"
        "ob=(1) /usr/bin/proxy\n"
        "fl=(1) main.rs\n"
        "fn=(1) proxy::handle\n"
        "10 100 5\n"
        "cob=(2) /usr/lib/libcrypto.so.3\n"
        "cfn=(2) sha256_block\n"
        "calls=2 0\n"
        "11 900 7\n"
        "12 50\n"
        "fn=(3) sha2::sha256::soft::compress\n"
        "+1 400\n"
        "ob=(2)\n"
        "fn=(2)\n"
        "0 700 3\n"
        "ob=(1)\n"
        "fn=(1)\n"
        "13 25\n"
        "summary: 1275\n")
    assert tools.callgrind_self(dump, fn_re=r"sha2::") == 400
    assert tools.callgrind_self(dump, ob_re=r"libcrypto") == 700
    assert tools.callgrind_self(dump, fn_re=r"sha2::", ob_re=r"libcrypto") == 1100
    assert tools.callgrind_self(dump, fn_re=r"^proxy::handle$") == 175
    assert tools.callgrind_self(tmp_path / "missing") == 0


def test_the_load_generators_core_is_read_from_two_tick_counts_and_reported_beside_the_p99(tmp_path):
    assert tools.core_busy("100,1000", "190,1100") == 0.9
    assert tools.core_busy("100,1000", "100,1000") is None  # no tick passed
    assert tools.core_busy("", "190,1100") is None  # a reading that failed
    rows = _rounds_at_256((("direct", 48_000.0, 7.4, 1.0), ("keygate", 45_000.0, 9.5, 0.995),
                           ("haproxy", 42_000.0, 8.0, 0.92)))
    text = _report(tmp_path, rows)
    assert "load generator's core busy, %" in text
    assert _row(text, "256 | haproxy |").endswith("| 92.0 (92.0–92.0) |")
    # The missed p99 target's explanation names how busy the load generator was for each.
    assert "the load generator's core was 99.5% busy with keygate, 92.0% with HAProxy and 100% going direct, " \
           "whose p99 is 7.40 ms (keygate 9.50, HAProxy 8.00)" in text, text


def test_the_256_targets_are_also_decided_against_haproxy_with_keygates_headers(tmp_path):
    # haproxy-wire: HAProxy putting keygate's headers on the wire. Its rows are in the table,
    # and the 256-connection targets get a same-wire verdict beside the plain-HAProxy one.
    rows = _rounds_at_256((("direct", 48_000.0, 7.4, 1.0), ("keygate", 45_000.0, 9.5, 0.995),
                           ("haproxy", 42_000.0, 8.0, 0.92), ("haproxy-wire", 40_000.0, 10.5, 0.99)))
    base = {"p50_ms": 5.0, "requests": 200_000, "cpu_s": 4.5, "conns": 256}
    for i in range(1, 17):
        for name, p99 in (("keygate", 9.5 + 0.01 * i), ("haproxy-wire", 10.5)):
            rows.append(dict(base, kind="paired", set="keygate/haproxy-wire", target=name, round=i, rps=45_000.0,
                             p99_ms=p99, cpu_ms_per_1k=22.0))
    text = _report(tmp_path, rows)
    assert _row(text, "256 | haproxy-wire |").endswith("| 99.0 (99.0–99.0) |")
    assert "**missed**" in _row(text, "-c256: keygate p99 ≤ HAProxy's")
    same = _row(text, "(same wire) -c256: keygate p99 ≤ haproxy-wire's")
    assert "**met**" in same and "16 pairs" in same, same
    assert "with keygate's headers on the wire HAProxy (haproxy-wire) has the load generator's core 99.0% busy " \
           "and a p99 of 10.50 ms" in text, text


def test_the_load_generators_cpu_per_request_is_its_busy_share_over_the_rate(tmp_path):
    # keygate's p99 above HAProxy's: a missed target, which the note explains.
    rows = _rounds_at_256((("direct", 50_000.0, 9.0, 1.0), ("keygate", 40_000.0, 10.0, 0.96),
                           ("haproxy", 40_000.0, 9.0, 0.84), ("haproxy-wire", 30_000.0, 11.0, 0.9)))
    text = _report(tmp_path, rows)
    assert "load generator's CPU µs per request" in text
    assert _row(text, "256 | keygate |").endswith("| 24.0 (24.0–24.0) | 96.0 (96.0–96.0) |")
    assert "the load generator spent 24.0 µs of CPU per request behind keygate, 21.0 behind HAProxy, " \
           "30.0 behind haproxy-wire" in text, text


def test_the_paired_table_sets_the_load_generators_cpu_per_request_side_by_side(tmp_path):
    rows = []
    base = {"p50_ms": 5.0, "p99_ms": 9.0, "requests": 40_000, "cpu_s": 1.0, "conns": 256, "kind": "paired",
            "set": "keygate/haproxy", "cpu_ms_per_1k": 22.0}
    for i in range(1, 17):
        # Behind keygate each request costs the load generator 1.1× what it does behind HAProxy.
        rows.append(dict(base, target="keygate", round=i, rps=40_000.0, load_core_busy=0.88))
        rows.append(dict(base, target="haproxy", round=i, rps=40_000.0, load_core_busy=0.80))
    text = _report(tmp_path, rows)
    assert "load generator's CPU per request ratio" in text
    assert _row(text, "keygate / haproxy | 256 |").endswith("| 1.10× (1.10–1.10) |")


def _fixed_rate(rate, added):
    """Open-loop records at one rate: direct at 0.2 ms p99, each contender that much more."""
    rows = []
    for rd in (1, 2, 3):
        rows.append({"kind": "fixed_rate", "target": "direct", "round": rd, "rate": rate, "p50_ms": 0.1,
                     "p99_ms": 0.2, "max_ms": 0.3, "n": 15, "ok": 15})
        for name, us in added.items():
            rows.append({"kind": "fixed_rate", "target": name, "round": rd, "rate": rate, "p50_ms": 0.1 + us / 2e3,
                         "p99_ms": 0.2 + us / 1e3, "max_ms": 0.3 + us / 1e3, "n": 15, "ok": 15})
    return rows


def test_the_open_loop_target_names_the_other_proxies_added_p99_from_the_same_runs(tmp_path):
    rows = _records([1.0] * 16, 1.0) + _fixed_rate(1, {"keygate": 300, "haproxy": 480, "nginx": 350})
    row = _row(_report(tmp_path, rows), "added p99 vs direct at 1 req/s ≤ 100 µs")
    assert "**missed**" in row and "300 µs" in row, row
    assert "HAProxy 480 µs, nginx 350 µs" in row and "every proxy over the bound" in row, row
    # One proxy under the bound: the row does not say every proxy missed it.
    rows = _records([1.0] * 16, 1.0) + _fixed_rate(1, {"keygate": 300, "haproxy": 80, "nginx": 350})
    row = _row(_report(tmp_path, rows), "added p99 vs direct at 1 req/s ≤ 100 µs")
    assert "HAProxy 80 µs" in row and "every proxy" not in row, row
    # keygate under the bound, the others over it: met, and not "every proxy".
    rows = _records([1.0] * 16, 1.0) + _fixed_rate(1, {"keygate": 90, "haproxy": 480, "nginx": 350})
    row = _row(_report(tmp_path, rows), "added p99 vs direct at 1 req/s ≤ 100 µs")
    assert "**met**" in row and "every proxy" not in row, row
    # keygate alone (no other proxy installed): the row has keygate's figure only.
    rows = _records([1.0] * 16, 1.0) + _fixed_rate(1000, {"keygate": 90})
    row = _row(_report(tmp_path, rows), "added p99 vs direct at 1000 req/s ≤ 150 µs")
    assert "**met**" in row and "in the same runs" not in row, row
