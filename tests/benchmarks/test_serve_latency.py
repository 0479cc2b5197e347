"""The figures benchmarks/serve_latency.py derives from its rows (summary keys and ratios)."""

from __future__ import annotations

from benchmarks import serve_latency


def _row(protocol, clients, p50, rps):
    return {"config": "demo", "protocol": protocol, "clients": clients, "p50_ms": p50, "throughput_rps": rps}


def test_summary_gives_overheads_batching_speedups_and_the_compute_bound():
    rows = [
        _row("bare", 1, 10.0, 100.0), _row("bare", 4, 20.0, 200.0), _row("bare", 16, 80.0, 200.0),
        _row("inprocess", 1, 20.0, 50.0), _row("openpi", 1, 21.0, 47.0), _row("act", 1, 22.0, 45.0),
        _row("inprocess", 4, 40.0, 100.0), _row("inprocess", 16, 160.0, 100.0),
        _row("openpi", 16, 170.0, 94.0), _row("act", 16, 180.0, 90.0),
    ]  # fmt: skip
    s = serve_latency.summarize(rows)["demo"]
    assert s["protocol_overhead_p50_openpi"] == 0.05 and s["protocol_overhead_p50_act"] == 0.1
    assert "protocol_overhead_p50_bare" not in s
    assert s["compute_speedup_bound"] == 2.0  # batch 16 over batch 1, not the batch-4 row
    assert s["batching_speedup"] == s["batching_speedup_inprocess"] == 2.0
    assert s["batching_speedup_openpi"] == 2.0 and s["batching_speedup_act"] == 2.0
    assert s["batching_clients"] == 16
