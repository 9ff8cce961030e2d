"""Keep the benchmark harness from rotting: a quick run, and its verifier's own checks."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # benchmarks/ is not installed; plain `pytest` needs this
    sys.path.insert(0, str(REPO))

from nats_server import nats_server_binary  # noqa: E402
from tools import require_tool, tools_required  # noqa: E402

from benchmarks import brokers, latency_floor  # noqa: E402
from benchmarks.brokers import MOSQUITTO_PATH, BrokerKind, mosquitto_config  # noqa: E402
from benchmarks.cluster_report import (  # noqa: E402
    evaluate_cluster_targets,
    summarize_cluster,
)
from benchmarks.loadgen import PublisherTask, publish_chunks  # noqa: E402
from benchmarks.nats_ceiling import cluster_message, delivered_size  # noqa: E402
from benchmarks.profiling import summarize_folded  # noqa: E402
from benchmarks.report import (  # noqa: E402
    RunRecord,
    markdown_table,
    records_from_json,
    summarize,
)
from benchmarks.scenarios import RunOutcome, end_to_end_latencies  # noqa: E402
from benchmarks.wire import (  # noqa: E402
    DeliveryParser,
    WsDeframer,
    connect_packet,
    make_payload,
    proxy_v1_header,
    proxy_v2_header,
    publish_packet,
    subscribe_packet,
    ws_frame,
    ws_mask,
)

TOPICS = {0: b"bench/p0", 1: b"bench/p1"}


def run_module(module: str, *args: str, timeout: float) -> str:
    """``python -m module *args`` from the repository: it must succeed; its stdout."""
    completed = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    return completed.stdout


def run_quick(tmp_path: Path, *args: str, timeout: float) -> dict[str, Any]:
    """``python -m benchmarks --quick *args``: it must succeed; its quick.json."""
    run_module(
        "benchmarks", "--quick", *args, "--output-dir", str(tmp_path), "--no-chart",
        timeout=timeout,
    )  # fmt: skip
    document: dict[str, Any] = json.loads((tmp_path / "quick.json").read_text())
    return document


def test_quick_fanin_against_trio_mqtt_is_verified(tmp_path: Path) -> None:
    document = run_quick(tmp_path, "--broker", "trio-mqtt", "--scenario", "fanin", timeout=60)
    (run,) = document["runs"]
    assert run["scenario"] == "fanin"
    assert run["broker"] == "trio-mqtt"
    assert run["verified"] is True
    # 4 publishers x 1,000 messages, every one delivered once and checked.
    assert run["expected"] == 4_000
    assert run["received"] == 4_000
    assert run["error_count"] == 0
    assert run["metrics"]["throughput"] > 0
    rows = {row["metric"]: row for row in document["summary"]}
    row = rows["throughput"]
    assert row["trio-mqtt"] == run["metrics"]["throughput"]
    assert row["mosquitto"] is None
    assert row["mosquitto-tuned"] is None
    # the end-to-end latency and RSS of the throughput run are in the summary too
    assert rows["p99_ms"]["trio-mqtt"] >= rows["p50_ms"]["trio-mqtt"] > 0
    assert rows["peak_rss_mib"]["trio-mqtt"] > 0
    # --replot rebuilds the same summary from the JSON alone.
    rebuilt = summarize(records_from_json(document))
    assert [rebuilt_row.to_json() for rebuilt_row in rebuilt] == document["summary"]


# --- issue 17: every new scenario, quick, against trio-mqtt and mosquitto's defaults --

#: messages (or handshakes) each new scenario must verify at --quick size
QUICK_NEW_EXPECTED = {
    "fanin_16b": 4 * 1_000,
    "fanin_64b": 4 * 1_000,
    "fanin_1kib": 4 * 500,
    "fanin_64kib": 4 * 50,
    "fanin_tls": 4 * 1_000,
    "fanin_ws": 4 * 1_000,
    "fanin_ws_frames": 4 * 1_000,
    "qos1_latency_split": 200,
    "qos1_latency_tls": 200,
    "qos1_latency_loaded": 200 + 4 * 1_000,  # round trips + the fan-in's messages
    "qos1_latency_crowd": 200 + 100 * 220,  # + 100 subscribers x (20 warm-up + 200)
    "connect_rate": 300,
    "connect_rate_proxy_v1": 300,
    "connect_rate_proxy_v2": 300,
    "connections_paced": 500,  # PINGRESPs of the connections held
}


def test_quick_new_scenarios_against_both_brokers_are_verified(tmp_path: Path) -> None:
    scenarios = [arg for name in QUICK_NEW_EXPECTED for arg in ("--scenario", name)]
    brokers = ("--broker", "trio-mqtt", "--broker", "mosquitto")
    document = run_quick(tmp_path, *brokers, *scenarios, timeout=400)
    runs = {(run["scenario"], run["broker"]): run for run in document["runs"]}
    assert set(runs) == {
        (name, broker) for name in QUICK_NEW_EXPECTED for broker in ("trio-mqtt", "mosquitto")
    }
    for (name, broker), run in runs.items():
        assert run["verified"] is True, (name, broker, run["errors"])
        assert run["received"] == run["expected"] == QUICK_NEW_EXPECTED[name], (name, broker)
    # what each family measures
    trio = {name: runs[name, "trio-mqtt"] for name in QUICK_NEW_EXPECTED}
    assert trio["fanin_tls"]["details"]["transport"] == "tls"
    assert trio["fanin_ws"]["details"]["transport"] == "ws"
    assert trio["fanin_ws_frames"]["details"]["frame_each_packet"] is True
    for name in ("fanin_16b", "fanin_64kib", "fanin_tls"):
        metrics = trio[name]["metrics"]
        assert metrics["p99_ms"] >= metrics["p50_ms"] > 0  # end-to-end, during throughput
        assert metrics["peak_rss_mib"] > 0
        assert len(trio[name]["details"]["rss_timeline"]) >= 1
    for name in ("qos1_latency_split", "qos1_latency_loaded", "qos1_latency_crowd"):
        metrics = trio[name]["metrics"]
        assert 0 < metrics["puback_p50_us"] <= metrics["puback_p99_us"]
        assert 0 < metrics["p50_us"] <= metrics["p99_us"]
    assert trio["qos1_latency_loaded"]["metrics"]["fanin_throughput"] > 0
    assert runs["connect_rate_proxy_v1", "trio-mqtt"]["details"]["proxy_header"] == "v1"
    assert runs["connect_rate_proxy_v2", "trio-mqtt"]["details"]["proxy_header"] == "v2"
    assert runs["connect_rate_proxy_v2", "mosquitto"]["details"]["proxy_header"] == ""
    # the broker's CPU for the handshakes (300 of trio-mqtt's: tens of milliseconds)
    for name in ("connect_rate", "connect_rate_proxy_v1", "connect_rate_proxy_v2"):
        assert runs[name, "trio-mqtt"]["details"]["broker_cpu_s"] > 0, name
        assert runs[name, "mosquitto"]["details"]["broker_cpu_s"] >= 0, name
    # the report: mosquitto's defaults as a column, ratios with their spreads
    rows = {(row["scenario"], row["metric"]): row for row in document["summary"]}
    row = rows["fanin_16b", "throughput"]
    assert row["mosquitto"] > 0 and row["mosquitto-tuned"] is None
    assert row["ratio"] == row["trio-mqtt"] / row["mosquitto"]
    low, high = row["ratio_spread"]
    assert low <= row["ratio"] <= high
    assert row["spread"]["mosquitto"][0] <= row["mosquitto"] <= row["spread"]["mosquitto"][1]
    markdown = (tmp_path / "quick.md").read_text()
    header = markdown.splitlines()[0]
    assert "mosquitto (its defaults)" in header
    assert "trio-mqtt / mosquitto (defaults)" in header
    assert "mosquitto-tuned" in header
    assert f"{row['ratio']:.2f}x ({low:.2f}-{high:.2f}) higher is better" in markdown
    assert "median (min-max over the repetitions)" in markdown


def test_a_broker_whose_port_was_taken_starts_again_on_others(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # free_port's ports come from the ephemeral range: another process's outgoing
    # connection may take one before the broker listens (seen in CI)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        handed_out = iter([port])  # the first port given to the broker is in use
        real_free_port = brokers.free_port
        monkeypatch.setattr(brokers, "free_port", lambda: next(handed_out, 0) or real_free_port())
        process = brokers.start_broker(BrokerKind.TRIO_MQTT)
        try:
            assert process.broker.port != port
            with socket.create_connection(("127.0.0.1", process.broker.port), timeout=5):
                pass
        finally:
            process.stop()


def test_summary_spreads_and_both_mosquitto_columns() -> None:
    def run(broker: str, value: float, verified: bool = True) -> RunRecord:
        return _record("fanin", broker, verified, throughput=value)

    records = [
        run("trio-mqtt", 90.0),
        run("trio-mqtt", 100.0),
        run("trio-mqtt", 120.0),
        run("mosquitto", 180.0),
        run("mosquitto", 200.0),
        run("mosquitto", 10_000.0, verified=False),  # left out of median and spread
        run("mosquitto-tuned", 250.0),
    ]
    rows = {row.metric.key: row for row in summarize(records)}
    row = rows["throughput"]
    assert (row.trio, row.mosquitto, row.mosquitto_tuned) == (100.0, 190.0, 250.0)
    assert row.ratio == pytest.approx(100 / 190)
    assert row.ratio_spread("mosquitto") == pytest.approx((90 / 200, 120 / 180))
    assert row.ratio_tuned == pytest.approx(100 / 250)
    assert row.all_verified is False
    data = row.to_json()
    assert data["spread"] == {"trio-mqtt": [90.0, 120.0], "mosquitto": [180.0, 200.0],
                              "mosquitto-tuned": [250.0, 250.0]}  # fmt: skip
    assert data["runs"] == {"trio-mqtt": 3, "mosquitto": 2, "mosquitto-tuned": 1}
    table = markdown_table(list(rows.values()))
    assert "| 100 msg/s (90.0-120) | 190 msg/s (180-200) | 250 msg/s |" in table
    assert "0.53x (0.45-0.67) higher is better" in table
    assert "mosquitto-tuned (TCP_NODELAY, 100 in flight)" in table.splitlines()[0]


def test_websocket_note_only_when_mosquitto_ran_plain_tcp() -> None:
    """fanin_ws's mosquitto column is marked as plain TCP only for runs that were: a
    mosquitto built with WebSocket support (TRIO_MQTT_BENCH_MOSQUITTO) is compared as is."""

    def run(broker: str, transport: str) -> RunRecord:
        outcome = RunOutcome(
            metrics={"throughput": 100.0},
            verified=True,
            expected=1,
            received=1,
            details={"transport": transport},
        )
        return RunRecord("fanin_ws", broker, 0, outcome, 1.0, 0.0)

    def note(*records: RunRecord) -> str:
        (row, *_) = summarize(records)
        table = markdown_table([row])
        assert (" *" in table) == bool(row.note)
        return row.note

    assert "plain-TCP" in note(run("trio-mqtt", "ws"), run("mosquitto", "tcp"))
    assert note(run("trio-mqtt", "ws"), run("mosquitto", "ws")) == ""
    assert note(run("trio-mqtt", "ws"), run("mosquitto", "ws"), run("mosquitto", "tcp")) != ""


def test_mosquitto_configs_defaults_and_tuned() -> None:
    defaults = mosquitto_config(1883, tuned=False)
    tuned = mosquitto_config(1883, tuned=True)
    assert "set_tcp_nodelay" not in defaults and "max_inflight_messages" not in defaults
    assert "set_tcp_nodelay true" in tuned and "max_inflight_messages 100" in tuned
    for config in (defaults, tuned):  # both: queues that drop nothing, same listener
        assert "max_queued_messages 2000000" in config and "max_queued_bytes 0" in config
        assert "listener 1883 127.0.0.1" in config


def test_publisher_frames_many_packets_or_each_packet() -> None:
    def stream(**options: Any) -> bytes:
        task = PublisherTask(1883, "p", "bench/p0", 0, 3_000, 1.0, **options)
        return b"".join(chunk for _first, chunk in publish_chunks(task))

    def unframe(data: bytes) -> tuple[int, bytes]:
        """Play the server: the number of (masked) frames and the MQTT bytes they carry."""
        frames, mqtt = 0, b""
        while data:
            length, start = data[1] & 0x7F, 2
            if length >= 126:
                start += 2 if length == 126 else 8
                length = int.from_bytes(data[2:start], "big")
            key = data[start : start + 4]
            mqtt += ws_mask(data[start + 4 : start + 4 + length], key)
            data = data[start + 4 + length :]
            frames += 1
        return frames, mqtt

    plain = stream()
    chunked_frames, chunked = unframe(stream(transport="ws"))
    each_frames, each = unframe(stream(transport="ws", frame_each_packet=True))
    assert chunked == each == plain
    assert each_frames == 3_000  # one per PUBLISH, as paho-mqtt and MQTT.js send them
    assert 1 < chunked_frames < 10  # about 64 KiB each


def test_websocket_frames_round_trip_and_proxy_v1_header() -> None:
    frame = ws_frame(b"hello mqtt" * 20)
    assert frame[0] == 0x82 and frame[1] == 0x80 | 126  # masked, 16-bit length
    # the broker's frames are not masked: strip our mask bit and key to play the server
    unmasked = bytes([0x82, 126]) + frame[2:4] + ws_mask(frame[8:], frame[4:8])
    deframer = WsDeframer()
    assert deframer.feed(unmasked[:5]) == b""
    assert deframer.feed(unmasked[5:] + b"\x82\x02ok") == b"hello mqtt" * 20 + b"ok"
    assert proxy_v1_header(("127.0.0.1", 50000), ("127.0.0.1", 1883)) == (
        b"PROXY TCP4 127.0.0.1 127.0.0.1 50000 1883\r\n"
    )


# --- the cluster scenarios: one node vs. two nodes through a real nats-server -------

#: messages each subscriber connection must get at --quick size
QUICK_CLUSTER_EXPECTED = {
    "cluster_fanin": 4 * 1_000,  # 4 publishers x 1,000 -> 1 subscriber
    "cluster_fanout": 50 * 100,  # 1 publisher x 100 -> 50 subscribers
    "cluster_qos1_fanin": 4 * 1_000,  # QoS 1, through the JetStream stream across nodes
    "cluster_qos1_latency": 200,  # measured round trips (after 20 warm-up)
}


def test_quick_cluster_scenarios_are_verified(tmp_path: Path) -> None:
    binary = nats_server_binary()  # skips (or fails under TRIO_MQTT_REQUIRE_TOOLS=1)
    document = run_quick(tmp_path, "--cluster", "--nats-server", binary, timeout=120)
    runs = {(run["scenario"], run["broker"]): run for run in document["runs"]}
    assert set(runs) == {
        (scenario, setup)
        for scenario in QUICK_CLUSTER_EXPECTED
        for setup in ("one-node", "cross-node")
    }
    for (scenario, setup), run in runs.items():
        assert run["verified"] is True, (scenario, setup, run["errors"])
        assert run["received"] == run["expected"] == QUICK_CLUSTER_EXPECTED[scenario]
        assert run["error_count"] == 0
    # cross-node: the subscribers' node and nats-server did the work, and were measured
    fanin = runs["cluster_fanin", "cross-node"]
    assert fanin["details"]["receiver_cpu_s"] > 0
    assert "nats_cpu_s" in fanin["details"]
    assert fanin["metrics"]["receiver_us_per_msg"] > 0
    assert runs["cluster_qos1_latency", "cross-node"]["metrics"]["p50_us"] > 0
    # the summary has both setups and their ratio; the four targets are evaluated
    rows = {(row["scenario"], row["metric"]): row for row in document["cluster_summary"]}
    fanin_row = rows["cluster_fanin", "throughput"]
    assert fanin_row["ratio"] == fanin_row["cross-node"] / fanin_row["one-node"]
    assert [target["met"] is not None for target in document["cluster_targets"]] == [True] * 4
    assert document["summary"] == []  # no mosquitto comparison in a --cluster run
    assert "| cluster_fanin | throughput |" in (tmp_path / "quick.md").read_text()
    # --replot rebuilds the same cluster summary from the JSON alone
    rebuilt = summarize_cluster(records_from_json(document))
    assert [row.to_json() for row in rebuilt] == document["cluster_summary"]


def test_nats_ceiling_quick_run_delivers_everything(tmp_path: Path) -> None:
    binary = nats_server_binary()
    output = tmp_path / "nats.json"
    run_module(
        "benchmarks.nats_ceiling", "--quick", "--nats-server", binary, "--output", str(output),
        timeout=120,
    )  # fmt: skip
    document = json.loads(output.read_text())
    assert [run["pattern"] for run in document["core_runs"]] == ["1 -> 1", "4 -> 1", "1 -> 4"]
    assert all(run["verified"] for run in document["core_runs"])
    assert document["core_runs"][2]["delivered"] == 4 * 20_000  # 1 -> 4 subscribers
    assert document["jetstream"]["one_at_a_time"]["p50_us"] > 0
    assert document["jetstream"]["window_20"]["count"] == 1_000


def test_connect_cost_counts_the_connections_alone(tmp_path: Path) -> None:
    """50 connections with a PROXY v1 header under callgrind (the start of Python under
    valgrind is most of the test's 40 s)."""
    require_tool("valgrind")
    output = tmp_path / "connect-cost.json"
    run_module(
        "benchmarks.connect_cost", "--kind", "v1", "--count", "50", "--warmup", "50",
        "--output", str(output),
        timeout=300,
    )  # fmt: skip
    counted = json.loads(output.read_text())["instructions_per_connection"]
    assert list(counted) == ["v1"]
    # a connection is some hundreds of thousands of instructions: the stretch counted
    # is the connections', without Python's start and the imports (billions, which
    # would show even divided by 50)
    assert 100_000 < counted["v1"] < 1_500_000


def test_latency_floor_measures_every_server(tmp_path: Path) -> None:
    """50 round trips against each server, one round; mosquitto only where installed."""
    servers = list(latency_floor.SERVERS)
    has_mosquitto = Path(MOSQUITTO_PATH).exists()
    if not has_mosquitto:
        if tools_required():
            pytest.fail(f"{MOSQUITTO_PATH} missing (apt-get install mosquitto)", pytrace=False)
        servers.remove("mosquitto")
    output = tmp_path / "latency-floor.json"
    server_args = [arg for name in servers for arg in ("--server", name)]
    run_module(
        "benchmarks.latency_floor", "--count", "50", "--warmup", "10", "--repeat", "1",
        *server_args, "--output", str(output),
        timeout=60,
    )  # fmt: skip
    document = json.loads(output.read_text())
    assert list(document["summary"]) == servers
    for name in servers:
        (run,) = document["runs"][name]
        assert 0 < run["puback_p50_us"] <= run["puback_p99_us"], name
        assert 0 < run["p50_us"] <= run["p99_us"], name
        # (mosquitto's CPU may be 0 where only /proc/<pid>/stat's 10 ms ticks are kept)
        assert run["cpu_us_per_round_trip"] >= (0 if name == "mosquitto" else 1e-3), name
    if not has_mosquitto:
        pytest.skip(
            f"mosquitto not installed ({MOSQUITTO_PATH}; Debian package mosquitto): the "
            "Python servers passed, mosquitto was not measured"
        )


def test_latency_floor_gap_idles_the_server_outside_the_timed_span(tmp_path: Path) -> None:
    """--gap-us: each round trip waits that long before its PUBLISH, and the wait is in
    the client's period per round trip, not in the latencies."""
    output = tmp_path / "latency-floor.json"
    run_module(
        "benchmarks.latency_floor", "--count", "40", "--warmup", "10", "--repeat", "1",
        "--server", "bare selectors", "--gap-us", "3000", "--output", str(output),
        timeout=60,
    )  # fmt: skip
    document = json.loads(output.read_text())
    assert document["gap_us"] == 3000
    (run,) = document["runs"]["bare selectors"]
    assert run["period_us"] >= 3000
    assert run["p50_us"] < 3000 and run["puback_p50_us"] < 3000


def test_round_trip_trace_cuts_the_bytecodes_at_the_socket_calls(tmp_path: Path) -> None:
    """50 traced round trips: the stretches add up to the count, and the stretch from a
    read to a write (a PUBLISH handled up to its delivery) is there once a round trip,
    running the core's handle_publish."""
    output = tmp_path / "round-trip-trace.json"
    run_module(
        "benchmarks.round_trip_trace", "--count", "50", "--output", str(output),
        timeout=60,
    )  # fmt: skip
    report = json.loads(output.read_text())
    assert report["round_trips"] == 50
    assert 1_000 < report["bytecodes"] < 20_000
    stretches = report["stretches"]
    # everything after the first cut is in some stretch (before it: a few setup calls)
    in_stretches = sum(stretch["bytecodes"] for stretch in stretches.values())
    assert 0.95 * report["bytecodes"] <= in_stretches <= report["bytecodes"]
    handled = stretches["read -> write"]
    assert 0.9 <= handled["per_round_trip"] <= 1.2
    assert handled["bytecodes"] > 500
    first = report["wake_to_first_write"]
    assert 0.9 <= first["wakes_per_round_trip"] <= 1.2
    assert first["median"] > handled["bytecodes"] / handled["per_round_trip"] / 2
    assert any(name.startswith("BrokerCore.handle_publish ") for name in first["functions"])


def test_nats_message_shape_is_the_clusters() -> None:
    hpub = cluster_message()
    line, _, rest = hpub.partition(b"\r\n")
    op, subject, header_size, total = line.split()
    assert (op, subject) == (b"HPUB", b"m.bench.p0")
    assert len(rest) == int(total) + 2  # headers + payload + CRLF
    headers = rest[: int(header_size)]
    assert headers.startswith(b"NATS/1.0\r\n") and b"\r\nc: cfanin-pub0\r\n" in headers
    # the server's HMSG adds the subscription id: "HMSG m.bench.p0 1 ..." is 2 bytes more
    assert delivered_size(hpub) == len(hpub) + 2


def _record(scenario: str, setup: str, verified: bool = True, **metrics: float) -> RunRecord:
    outcome = RunOutcome(metrics=metrics, verified=verified, expected=1, received=1)
    return RunRecord(scenario, setup, 0, outcome, 1.0, 0.0)


def test_cluster_summary_ratios_and_targets() -> None:
    records = [
        _record("cluster_fanin", "one-node", throughput=100.0, receiver_us_per_msg=6.0),
        _record("cluster_fanin", "one-node", throughput=120.0, receiver_us_per_msg=7.0),
        _record("cluster_fanin", "cross-node", throughput=40.0, receiver_us_per_msg=16.0),
        _record("cluster_fanin", "cross-node", verified=False, throughput=900.0),
        _record("cluster_qos1_latency", "one-node", p50_us=90.0, p99_us=130.0),
        _record("cluster_qos1_latency", "cross-node", p50_us=330.0, p99_us=900.0),
    ]
    rows = {(row.scenario.name, row.metric.key): row for row in summarize_cluster(records)}
    fanin = rows["cluster_fanin", "throughput"]
    assert (fanin.one, fanin.cross) == (110.0, 40.0)  # the unverified run is left out...
    assert fanin.ratio == pytest.approx(40 / 110)
    assert fanin.all_verified is False  # ...but marks the row
    latency = rows["cluster_qos1_latency", "p50_us"]
    assert latency.difference == 240.0
    results = {r.target.description: r for r in evaluate_cluster_targets(list(rows.values()))}
    assert results["cross-node QoS 1 p50 <= one node + 0.4 ms"].met is True
    assert results["cross-node QoS 0 fan-out >= 0.5x one node"].met is None  # not run
    # a row with a failed run is reported, never counted as met or missed
    assert results["cross-node QoS 0 fan-in >= 0.5x one node"].met is None
    assert results["cross-node QoS 0 fan-in >= 0.5x one node"].value == pytest.approx(40 / 110)


# --- the packets the load generator sends (hand-computed from the MQTT 3.1.1 spec) ---


def test_connect_packet_bytes() -> None:
    # 0x10, remaining length 14: "MQTT", level 4, flags 0x02 (clean), keep alive 600,
    # client id "ab".
    assert connect_packet("ab") == bytes.fromhex("100e00044d5154540402025800026162")


def test_subscribe_packet_bytes() -> None:
    assert subscribe_packet(1, "a/#", 1) == bytes.fromhex("820800010003612f2301")


def test_publish_packet_bytes() -> None:
    assert publish_packet("t", b"x") == bytes.fromhex("3004000174" + "78")
    assert publish_packet("t", b"x", qos=1, packet_id=7, retain=True) == bytes.fromhex(
        "3306000174000778"
    )


def test_proxy_v2_header_bytes() -> None:
    header = proxy_v2_header(("127.0.0.1", 50000), ("127.0.0.1", 1883))
    assert header == bytes.fromhex("0d0a0d0a000d0a515549540a2111000c7f0000017f000001c350075b")


# --- the verifier catches what it must ---------------------------------------------


def _stream(messages: list[tuple[int, int]], *, qos: int = 0) -> bytes:
    return b"".join(
        publish_packet(
            TOPICS[source], make_payload(source, seq), qos=qos, packet_id=index + 1 if qos else None
        )
        for index, (source, seq) in enumerate(messages)
    )


def _parser(qos: int = 0) -> DeliveryParser:
    return DeliveryParser(8, qos, source_topics=TOPICS)


def test_parser_accepts_interleaved_sources_split_anywhere() -> None:
    data = _stream([(0, 0), (1, 0), (0, 1), (1, 1), (1, 2)])
    parser = _parser()
    for index in range(0, len(data), 7):  # cuts through headers and payloads
        parser.feed(data[index : index + 7])
    assert parser.received == 5
    assert parser.error_count == 0
    assert parser.next_seq == {0: 2, 1: 3}


def test_parser_collects_pubacks_for_qos1() -> None:
    parser = _parser(qos=1)
    parser.feed(_stream([(0, 0), (0, 1)], qos=1))
    assert parser.received == 2
    assert bytes(parser.pending_acks) == bytes.fromhex("4002000140020002")


def test_parser_flags_a_corrupted_payload() -> None:
    data = bytearray(_stream([(0, 0), (0, 1)]))
    data[-5] ^= 0x01  # inside the filler of the second message
    parser = _parser()
    parser.feed(bytes(data))
    assert parser.received == 2
    assert parser.error_count == 1
    assert "bad payload check" in parser.errors[0]


def test_parser_flags_a_gap_and_a_wrong_topic() -> None:
    gap = _parser()
    gap.feed(_stream([(0, 0), (0, 2)]))
    assert gap.error_count == 1
    assert "expected 1" in gap.errors[0]

    wrong_topic = _parser()
    wrong_topic.feed(publish_packet(b"bench/p1", make_payload(0, 0)))
    assert wrong_topic.error_count == 1
    assert "arrived on topic" in wrong_topic.errors[0]


def test_parser_sets_aside_other_packets_and_odd_sized_publishes() -> None:
    parser = _parser()
    suback = bytes.fromhex("9003000100")
    odd = publish_packet(b"bench/p0/x", make_payload(0, 1))  # longer topic: slow path
    parser.feed(suback + _stream([(0, 0)]) + odd + b"\xd0\x00")
    assert parser.received == 2
    assert [packet.first_byte for packet in parser.other_packets] == [0x90, 0xD0]
    assert parser.error_count == 1  # the odd one arrived on the wrong topic


def test_unordered_mode_flags_duplicates() -> None:
    parser = DeliveryParser(8, 0, topic_of_seq=lambda seq: b"r/%06d" % seq)
    retained = [
        publish_packet(b"r/%06d" % seq, make_payload(0, seq), retain=True) for seq in (5, 3, 5)
    ]
    parser.feed(b"".join(retained))
    assert parser.received == 3
    assert parser.seen == {(0, 5), (0, 3)}
    assert parser.error_count == 1
    assert "twice" in parser.errors[0]


def test_parser_verifies_large_payloads_with_a_longer_remaining_length() -> None:
    size = 1000  # a two-byte Remaining Length: the fast path must still take them
    data = b"".join(
        publish_packet(TOPICS[0], make_payload(0, seq, size), qos=1, packet_id=seq + 1)
        for seq in range(50)
    )
    parser = DeliveryParser(8, 1, source_topics=TOPICS, payload_size=size)
    for index in range(0, len(data), 4096):
        parser.feed(data[index : index + 4096])
    assert (parser.received, parser.error_count) == (50, 0)
    assert len(parser.pending_acks) == 50 * 4

    corrupted = bytearray(data)
    corrupted[24 * (len(data) // 50) + 500] ^= 0x01  # in the filler of the 25th message
    parser = DeliveryParser(8, 1, source_topics=TOPICS, payload_size=size)
    parser.feed(bytes(corrupted))
    assert parser.received == 50
    assert "bad payload check for source 0 seq 24" in parser.errors[0]


def test_end_to_end_latency_of_every_message() -> None:
    sends = [[(0, 10.0), (2, 11.0)], [(0, 10.5)]]  # publisher 0 wrote 0-1, then 2; 1 wrote 0
    progress = [(10.25, {0: 1}), (11.5, {0: 3, 1: 1})]
    latencies = end_to_end_latencies(sends, progress)
    # 0/0 at 10.25 (sent 10.0), 0/1 and 0/2 at 11.5 (sent 10.0, 11.0), 1/0 at 11.5 (10.5)
    assert latencies == [int(0.25e9), int(0.5e9), int(1.0e9), int(1.5e9)]


def test_parser_needs_exactly_one_mode() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        DeliveryParser(8, 0)


def test_profile_summary_counts_own_lines_and_inclusive_time() -> None:
    folded = [
        "main (/repo/a.py:1);work (/repo/b.py:10);parse (/repo/c.py:5) 6",
        "main (/repo/a.py:1);work (/repo/b.py:12) 3",
        "main (/repo/a.py:2) 2",
        "not a stack line",
    ]
    report = summarize_folded(folded, root="/repo/", top=5)
    assert report.startswith("11 samples")
    own, lines, inclusive = report.split("\n\n")[1:4]
    assert own.splitlines()[2:] == [
        "  54.5%        6  parse (c.py)",
        "  27.3%        3  work (b.py)",
        "  18.2%        2  main (a.py)",
    ]
    assert "  27.3%        3  work (b.py:12)" in lines.splitlines()
    # main is on every stack (>= 90%), so it is left out of the inclusive table.
    assert inclusive.splitlines()[2:] == [
        "  81.8%        9  work (b.py)",
        "  54.5%        6  parse (c.py)",
    ]


def test_auth_flood_measures_round_trips_during_wrong_passwords() -> None:
    stdout = run_module(
        "benchmarks.auth_flood", "--connects", "4", "--concurrency", "2", timeout=120
    )
    assert "QoS 1 round trip, during the flood:" in stdout
    assert "4 wrong passwords, 2 at a time" in stdout
    assert "BAD_USER_NAME_OR_PASSWORD: 134>: 4}" in stdout
