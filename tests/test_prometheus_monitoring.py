"""The chart's monitoring against Prometheus itself.

- `promtool check rules` on the chart's PrometheusRule, and `promtool test rules`: each alert
  fires on series that should fire it and stays quiet on series that should not.
- A real Prometheus on loopback scrapes running services as the ServiceMonitors would (job =
  component, namespace and pod target labels): the detector, search and the gateway in this
  process and a real Triton. After a few calls through the gateway, PromQL returns the request
  counts and Triton's inference counts they made; the chart's rules load and evaluate, the
  dashboard's queries and prometheus-adapter's query all parse and return series (the GPU
  panels excepted: this Triton runs on the CPU), and the search-down alert reacts when search
  stops.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from facesearch.v1 import facesearch_pb2
from gateway.auth import ApiKeys, key_line
from gateway.server import build_server as build_gateway
from gateway.settings import GatewaySettings
from launcher.in_process import KEYS
from sdk import FaceSearchClient
from services.runtime.background import BackgroundServer
from services.runtime.ports import free_port
from services.search.server import build_server as build_search
from services.search.settings import SearchSettings
from tests.conftest import photo_bytes
from tests.deployment_tools import CHART, only, render, tool

NAMESPACE = "facesearch"
RELEASE = "fs"
MODEL = "facenet-casia"
PHOTOS = [("photoprism", "1.jpg"), ("photoprism", "2.jpg"), ("photoprism", "3.jpg"), ("compreface", "009_C.jpg")]
WARM_UP = ("compreface", "012_4.jpg")
SCRAPE_S = 1


def monitoring_manifests() -> list[dict]:
    return render(
        settings=["monitoring.prometheusRule.enabled=true", "monitoring.grafanaDashboard.enabled=true"],
        release=RELEASE,
        namespace=NAMESPACE,
    )


def rule_groups() -> list[dict]:
    return only(monitoring_manifests(), "PrometheusRule", f"{RELEASE}-facesearch")["spec"]["groups"]


def alert_names() -> list[str]:
    return [rule["alert"] for group in rule_groups() for rule in group["rules"] if "alert" in rule]


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(tool("promtool")), *map(str, args)], capture_output=True, text=True, timeout=120)


# --- the rules, with promtool ---------------------------------------------------------------

LABELS = f'namespace="{NAMESPACE}"'
GATEWAY_CALLS = f'{LABELS}, job="gateway"'
FIND_ME = "/facesearch.v1.FaceSearch/FindMe"
QDRANT_CLAIM = f'persistentvolumeclaim="data-{RELEASE}-facesearch-qdrant-0"'


def calls(code: str, values: str, method: str = FIND_ME) -> dict:
    return {
        "series": f'facesearch_grpc_requests_total{{{GATEWAY_CALLS}, method="{method}", code="{code}"}}',
        "values": values,
    }


def latency(buckets: dict[str, str], method: str = FIND_ME) -> list[dict]:
    name = "facesearch_grpc_request_duration_seconds_bucket"
    return [
        {"series": f'{name}{{{GATEWAY_CALLS}, method="{method}", le="{le}"}}', "values": values}
        for le, values in buckets.items()
    ]


def triton(queue_us_per_minute: int, requests_per_minute: int) -> list[dict]:
    labels = f'{LABELS}, job="embedder", pod="embedder-0", model="{MODEL}", version="1"'
    return [
        {"series": f"nv_inference_queue_duration_us{{{labels}}}", "values": f"0+{queue_us_per_minute}x30"},
        {"series": f"nv_inference_request_success{{{labels}}}", "values": f"0+{requests_per_minute}x30"},
    ]


def backfill(photos: str) -> list[dict]:
    job = f'{LABELS}, job="kube-state-metrics", job_name="{RELEASE}-facesearch-backfill"'
    return [
        {"series": f"kube_job_status_active{{{job}}}", "values": "1x40"},
        {"series": f'facesearch_gateway_photos_total{{{GATEWAY_CALLS}, status="stored"}}', "values": photos},
    ]


def volume(available: str, capacity: str = "100x400") -> list[dict]:
    return [
        {"series": f"kubelet_volume_stats_available_bytes{{{LABELS}, {QDRANT_CLAIM}}}", "values": available},
        {"series": f"kubelet_volume_stats_capacity_bytes{{{LABELS}, {QDRANT_CLAIM}}}", "values": capacity},
    ]


NS = {"namespace": NAMESPACE}
CLAIM = {**NS, "persistentvolumeclaim": f"data-{RELEASE}-facesearch-qdrant-0"}
# (alert, what the case is, input series, when to evaluate, the labels of the firing alert or None)
ALERT_CASES = [
    (
        "FacesearchGatewayErrorRatio",
        "10% of calls unavailable",
        [calls("OK", "0+90x30"), calls("UNAVAILABLE", "0+10x30")],
        "25m",
        {**NS, "severity": "critical"},
    ),
    (
        "FacesearchGatewayErrorRatio",
        "1% of calls unavailable",
        [calls("OK", "0+99x30"), calls("UNAVAILABLE", "0+1x30")],
        "25m",
        None,
    ),
    (
        "FacesearchGatewayErrorRatio",
        "caller errors and failing health checks only",
        [
            calls("OK", "0+50x30"),
            calls("INVALID_ARGUMENT", "0+50x30"),
            calls("UNAVAILABLE", "0+50x30", "/grpc.health.v1.Health/Check"),
        ],
        "25m",
        None,
    ),
    (
        "FacesearchGatewayLatencyP99",
        "every call between 2.5 and 5 s",
        latency({"0.1": "0x30", "2.5": "0x30", "5": "0+100x30", "+Inf": "0+100x30"}),
        "25m",
        {**NS, "severity": "warning"},
    ),
    (
        "FacesearchGatewayLatencyP99",
        "fast calls, slow index streams",
        [
            *latency({"0.1": "0+100x30", "2.5": "0+100x30", "5": "0+100x30", "+Inf": "0+100x30"}),
            *latency(
                {"0.1": "0x30", "2.5": "0x30", "5": "0x30", "+Inf": "0+100x30"}, "/facesearch.v1.FaceSearch/IndexPhotos"
            ),
        ],
        "25m",
        None,
    ),
    ("FacesearchTritonQueueTime", "200 ms per request", triton(12_000_000, 60), "25m", {**NS, "severity": "warning"}),
    ("FacesearchTritonQueueTime", "10 ms per request", triton(600_000, 60), "25m", None),
    (
        "FacesearchSearchDown",
        "the only replica down",
        [{"series": f'up{{{LABELS}, job="search", instance="a"}}', "values": "0x10"}],
        "5m",
        {**NS, "severity": "critical"},
    ),
    (
        "FacesearchSearchDown",
        "no replica scraped",
        [{"series": f'up{{{LABELS}, job="gateway", instance="a"}}', "values": "1x10"}],
        "5m",
        {**NS, "job": "search", "severity": "critical"},
    ),
    (
        "FacesearchSearchDown",
        "one of two replicas down",
        [
            {"series": f'up{{{LABELS}, job="search", instance="a"}}', "values": "0x10"},
            {"series": f'up{{{LABELS}, job="search", instance="b"}}', "values": "1x10"},
        ],
        "5m",
        None,
    ),
    (
        "FacesearchBackfillStalled",
        "job active, photo count flat",
        backfill("100x40"),
        "35m",
        {**NS, "job_name": f"{RELEASE}-facesearch-backfill", "severity": "warning"},
    ),
    ("FacesearchBackfillStalled", "job active, photos indexed", backfill("0+10x40"), "35m", None),
    ("FacesearchVectorStoreDiskFilling", "10% free", volume("10x400"), "30m", {**CLAIM, "severity": "warning"}),
    (
        "FacesearchVectorStoreDiskFilling",
        "half free, full within a day",
        volume("90-0.1x400"),
        "400m",
        {**CLAIM, "severity": "warning"},
    ),
    ("FacesearchVectorStoreDiskFilling", "60% free and steady", volume("60x400"), "400m", None),
]


@pytest.fixture(scope="module")
def rules_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The chart's rule groups, as Prometheus reads them."""
    path = tmp_path_factory.mktemp("rules") / "facesearch.rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule_groups()}, sort_keys=False))
    return path


def test_promtool_checks_the_rules(rules_file: Path) -> None:
    result = promtool("check", "rules", rules_file)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {sum(len(g['rules']) for g in rule_groups())} rules found" in result.stdout


def test_every_alert_fires_and_stays_quiet_in_promtool_unit_tests(tmp_path: Path) -> None:
    alerts = alert_names()
    assert len(alerts) == 6
    for alert in alerts:
        outcomes = {labels is not None for name, _, _, _, labels in ALERT_CASES if name == alert}
        assert outcomes == {True, False}, f"{alert} needs a case that fires it and one that does not"

    # promtool compares annotations too: the unit tests read the rules without them
    # (`promtool check rules` above checks their templates).
    groups = rule_groups()
    for group in groups:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    tests = [
        {
            "name": f"{alert}: {case}",
            "interval": "1m",
            "input_series": series,
            "alert_rule_test": [
                {"eval_time": at, "alertname": alert, "exp_alerts": [] if labels is None else [{"exp_labels": labels}]}
            ],
        }
        for alert, case, series, at, labels in ALERT_CASES
    ]
    (tmp_path / "tests.yaml").write_text(
        yaml.safe_dump({"rule_files": ["rules.yaml"], "tests": tests}, sort_keys=False)
    )
    result = promtool("test", "rules", tmp_path / "tests.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


# --- a real Prometheus scraping the running services ----------------------------------------


class Prometheus:
    """A prometheus process on loopback and its HTTP API."""

    def __init__(self, config: dict, folder: Path) -> None:
        (folder / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log = folder / "prometheus.log"
        with self.log.open("w") as log:
            self.process = subprocess.Popen(
                [
                    str(tool("prometheus")),
                    f"--config.file={folder / 'prometheus.yml'}",
                    f"--storage.tsdb.path={folder / 'data'}",
                    f"--web.listen-address={self.url.removeprefix('http://')}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_until(lambda: self._ready(), 30, f"prometheus at {self.url} to be ready", self.log_tail)

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"prometheus exited with status {self.process.returncode}:\n{self.log_tail()}")
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as reply:
                return reply.status == 200
        except OSError:
            return False

    def log_tail(self) -> str:
        return "\n".join(self.log.read_text().splitlines()[-20:])

    def api(self, path: str, **params: str) -> dict | list:
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as reply:
                body = json.load(reply)
        except urllib.error.HTTPError as error:
            body = json.load(error)
        assert body["status"] == "success", f"{path} {params}: {body.get('error')}"
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", expr
        return data["result"]

    def value(self, expr: str) -> float:
        """The single value of ``expr``, 0 when it has no series."""
        result = self.query(expr)
        assert len(result) <= 1, f"{expr}: {result}"
        return float(result[0]["value"][1]) if result else 0.0

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str, details: Callable[[], str] = str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{details()}")
        time.sleep(0.2)


def scrape_job(job: str, port: int) -> dict:
    """A scrape job as the ServiceMonitor of ``job`` makes it: its target labels included."""
    labels = {"namespace": NAMESPACE, "pod": f"{job}-0", "service": f"{RELEASE}-facesearch-{job}-metrics"}
    return {"job_name": job, "static_configs": [{"targets": [f"127.0.0.1:{port}"], "labels": labels}]}


@pytest.fixture(scope="module")
def services(
    tmp_path_factory: pytest.TempPathFactory, detector_server, onnx_python_models, triton_server
) -> Iterator[dict[str, BackgroundServer]]:
    """Search and the gateway in this process with their /metrics, on the session's detector
    and Triton."""
    root = tmp_path_factory.mktemp("monitored")
    search = BackgroundServer(
        build_search(SearchSettings(host="127.0.0.1", port=0, metrics_port=0, log_format="text", path=root / "search"))
    )
    embedder = onnx_python_models.model_copy(update={"triton_url": triton_server.grpc_url, "request_timeout_s": 20})
    settings = GatewaySettings(
        host="127.0.0.1",
        port=0,
        metrics_port=0,
        log_format="text",
        detector_address=detector_server.address,
        search_address=search.address,
        thresholds_file=None,
    )
    gateway = BackgroundServer(
        build_gateway(settings, embedder, ApiKeys.parse([key_line("acme", KEYS["acme"])], "keys"))
    )
    yield {"gateway": gateway, "search": search, "detector": detector_server}
    gateway.stop()
    search.stop()


@pytest.fixture(scope="module")
def prometheus(
    services: dict[str, BackgroundServer], triton_server, rules_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Prometheus]:
    jobs = {name: server.server.metrics_port for name, server in services.items()}
    jobs["embedder"] = triton_server.metrics_port
    config = {
        "global": {"scrape_interval": f"{SCRAPE_S}s", "evaluation_interval": f"{SCRAPE_S}s"},
        "rule_files": [str(rules_file)],
        "scrape_configs": [scrape_job(job, port) for job, port in jobs.items()],
    }
    server = Prometheus(config, tmp_path_factory.mktemp("prometheus"))
    try:
        wait_until(
            lambda: server.value('count(up{namespace="facesearch"} == 1)') == len(jobs),
            30,
            "every target to be scraped",
            lambda: json.dumps(server.api("targets"), indent=1)[:4000],
        )
        yield server
    finally:
        server.stop()


def requests_counted(job: str, method: str) -> str:
    return f'sum(facesearch_grpc_requests_total{{job="{job}", method="{method}", code="OK"}})'


COUNTS = {
    "index streams": requests_counted("gateway", "/facesearch.v1.FaceSearch/IndexPhotos"),
    "find-me calls": requests_counted("gateway", FIND_ME),
    "photos": 'sum(facesearch_gateway_photos_total{job="gateway"})',
    "faces stored": 'sum(facesearch_gateway_faces_stored_total{job="gateway"})',
    "detect batches": requests_counted("detector", "/facesearch.v1.Detector/DetectBatch"),
    "upserts": requests_counted("search", "/facesearch.v1.Search/Upsert"),
    "faces embedded": f'sum(nv_inference_count{{job="embedder", model="{MODEL}"}})',
    "inference requests": f'sum(nv_inference_request_success{{job="embedder", model="{MODEL}"}})',
}


@pytest.fixture(scope="module")
def traffic(prometheus: Prometheus, services: dict[str, BackgroundServer]) -> dict[str, float]:
    """Calls through the gateway: one index stream of PHOTOS and one FindMe; returns how much
    each of COUNTS grew, as Prometheus saw it, and what the calls themselves reported.

    The same calls are made once before (on another photo), so that Prometheus has seen each
    series before the counted calls and their rates are not 0."""
    photos = [facesearch_pb2.Photo(id=f"{s}/{n}", content=photo_bytes(s, n)) for s, n in [*PHOTOS, WARM_UP]]
    with FaceSearchClient(services["gateway"].address, KEYS["acme"], timeout_s=120) as client:

        def calls(index: list[facesearch_pb2.Photo]) -> list[facesearch_pb2.PhotoResult]:
            before = prometheus.value(COUNTS["find-me calls"])
            results = list(client.index(index))
            client.find_me([photos[0]], limit=10)
            wait_until(lambda: prometheus.value(COUNTS["find-me calls"]) > before, 30, "the calls to be scraped")
            time.sleep(2 * SCRAPE_S + 0.5)  # every target scraped again since the calls, and the rules evaluated
            return results

        calls(photos[-1:])
        before = {name: prometheus.value(expr) for name, expr in COUNTS.items()}
        results = calls(photos[:-1])
    stored = sum(result.faces_stored for result in results)
    grown = {name: prometheus.value(expr) - before[name] for name, expr in COUNTS.items()}
    return {**grown, "reported faces stored": stored, "reported photos": len(results)}


def test_prometheus_counts_the_requests_made(traffic: dict[str, float]) -> None:
    assert traffic["reported photos"] == len(PHOTOS)
    assert traffic["reported faces stored"] >= len(PHOTOS)
    assert traffic["index streams"] == 1
    assert traffic["find-me calls"] == 1
    assert traffic["photos"] == len(PHOTOS)
    assert traffic["faces stored"] == traffic["reported faces stored"]
    assert traffic["detect batches"] >= 1  # the photos of the stream (8 a batch), and FindMe's reference
    assert traffic["upserts"] >= 1


def test_prometheus_counts_tritons_inferences(traffic: dict[str, float]) -> None:
    # Every stored face was embedded once; FindMe embedded its reference's face(s) too.
    assert traffic["faces embedded"] >= traffic["reported faces stored"] + 1
    assert 1 <= traffic["inference requests"] <= traffic["faces embedded"]


def test_the_charts_rules_load_and_evaluate(prometheus: Prometheus, traffic: dict[str, float]) -> None:
    groups = prometheus.api("rules")["groups"]
    loaded = {rule["name"]: rule for group in groups for rule in group["rules"]}
    expected = {rule.get("record") or rule["alert"] for group in rule_groups() for rule in group["rules"]}
    assert set(loaded) == expected
    for name, rule in loaded.items():
        assert rule["health"] == "ok", f"{name}: {rule.get('lastError')}"
    for record in (
        "facesearch:gateway_error_ratio:rate5m",
        "facesearch:gateway_latency_p99_seconds:rate5m",
        "facesearch:triton_queue_time_per_request_microseconds:rate5m",
    ):
        [series] = prometheus.query(f'{record}{{namespace="{NAMESPACE}"}}')
        assert float(series["value"][1]) >= 0, record  # not NaN
    assert prometheus.value('facesearch:gateway_error_ratio:rate5m{namespace="facesearch"}') == 0
    assert prometheus.value('facesearch:gateway_latency_p99_seconds:rate5m{namespace="facesearch"}') > 0
    assert prometheus.query("facesearch:vector_store_free_ratio") == []  # no kubelet here
    assert prometheus.api("alerts")["alerts"] == []


GPU_METRICS = ("nv_gpu_",)  # this Triton runs on the CPU: no GPU metrics


def test_dashboard_queries_parse_and_return_series(prometheus: Prometheus, traffic: dict[str, float]) -> None:
    config_map = only(monitoring_manifests(), "ConfigMap", "-dashboard")
    dashboard = json.loads(config_map["data"]["facesearch.json"])
    assert dashboard == json.loads((CHART / "files" / "dashboard.json").read_text())
    targets = [(panel["title"], target["expr"]) for panel in dashboard["panels"] for target in panel["targets"]]
    assert len(targets) >= 10
    empty = []
    for title, expr in targets:
        result = prometheus.query(expr.replace("$namespace", NAMESPACE))
        if not result and not any(metric in expr for metric in GPU_METRICS):
            empty.append(title)
    assert empty == [], f"panels without series: {empty}"
    [variable] = [v for v in dashboard["templating"]["list"] if v["name"] == "namespace"]
    query = variable["definition"].removeprefix("label_values(").rsplit(",", 1)[0]
    assert {series["metric"]["namespace"] for series in prometheus.query(query)} == {NAMESPACE}


def test_prometheus_adapter_rule_gives_the_queue_time_of_each_embedder_pod(
    prometheus: Prometheus, traffic: dict[str, float]
) -> None:
    config = yaml.safe_load(
        only(monitoring_manifests(), "ConfigMap", "-prometheus-adapter-rules")["data"]["config.yaml"]
    )
    [rule] = config["rules"]
    assert prometheus.query(rule["seriesQuery"]), rule["seriesQuery"]
    # What prometheus-adapter sends for the HPA's pods in the namespace.
    expr = rule["metricsQuery"].replace("<<.LabelMatchers>>", f'namespace="{NAMESPACE}",pod=~"embedder-0"')
    expr = expr.replace("<<.GroupBy>>", "pod")
    [series] = prometheus.query(expr)
    assert series["metric"] == {"pod": "embedder-0"}
    assert float(series["value"][1]) >= 0


def test_search_down_alert_goes_pending_when_search_stops(
    prometheus: Prometheus, services: dict[str, BackgroundServer]
) -> None:
    """Last in this module: it stops the search service."""
    assert prometheus.query('ALERTS{alertname="FacesearchSearchDown"}') == []
    services["search"].stop()

    def search_down_pending() -> bool:
        return [
            a["state"] for a in prometheus.api("alerts")["alerts"] if a["labels"]["alertname"] == "FacesearchSearchDown"
        ] == ["pending"]

    wait_until(
        search_down_pending, 15, "FacesearchSearchDown to go pending", lambda: json.dumps(prometheus.api("alerts"))
    )
