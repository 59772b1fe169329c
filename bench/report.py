"""What every benchmark records beside its figures, and how it writes them.

- ``machine_facts``: the machine and the versions that ran the benchmark.
- ``LoadMeter``: the machine's load while the benchmark runs, measured: load average,
  and the CPU time of the whole machine (/proc/stat) split into this benchmark's own
  processes (this one and everything it started, from /proc/<pid>/stat), other
  processes, idle and steal.
- ``settings_of``: a settings object as it was used, for the results.
- ``triton_model_config``: a model's configuration as a running Triton reports it.
- ``write_results``: ``<name>.json`` and ``<name>.md``, the markdown rendered from the
  JSON's own data, so the two always agree.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
DEFAULT_DATA = Path(os.environ.get("FACESEARCH_TEST_DATA", REPO.parent / "shared" / "data"))

# Settings fields that name credentials: left out of results files.
SECRET_FIELDS = frozenset({"api_keys", "api_keys_file"})


# --- the machine ---------------------------------------------------------------------------------


def machine_facts(packages: Iterable[str] = (), versions: dict[str, str] | None = None) -> dict:
    """CPU, memory, GPU (when torch is loaded), Python, platform, date, the installed version
    of each distribution in ``packages``, and ``versions`` of other things (e.g. a server's)."""
    processor = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                processor = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        memory_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (OSError, ValueError):
        memory_gib = None
    torch = sys.modules.get("torch")
    gpu = None
    if torch is not None and torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(0)
    installed = {}
    for name in packages:
        try:
            installed[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            installed[name] = None
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "processor": processor,
        "memory_gib": memory_gib,
        "gpu": gpu,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": installed,
        "versions": dict(versions or {}),
    }


def machine_line(machine: dict) -> str:
    """One sentence: date, CPUs, memory, GPU, versions."""
    packages = ", ".join(f"{name} {version}" for name, version in machine.get("packages", {}).items() if version)
    extras = "".join(f", {key} {value}" for key, value in machine.get("versions", {}).items())
    return (
        f"{machine['date']}; {machine['cpu_count']} CPUs ({machine['processor']})"
        + (f", {machine['memory_gib']} GiB" if machine.get("memory_gib") else "")
        + (f", GPU {machine['gpu']}" if machine.get("gpu") else ", no GPU")
        + f"; Python {machine['python']}, {machine['platform']}"
        + (f"; {packages}" if packages else "")
        + extras
        + "."
    )


# --- load ------------------------------------------------------------------------------------------


def _machine_ticks() -> list[int]:
    """/proc/stat's first line: user, nice, system, idle, iowait, irq, softirq, steal (clock ticks)."""
    try:
        return [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    except (OSError, ValueError, IndexError):
        return []


def _own_ticks() -> int:
    """CPU time (user + system ticks) of this process and every process below it: each living
    one's own time and that of its children that it has waited for (so the time of a process
    that has ended counts once its parent has reaped it, as Popen.wait and pools do)."""
    children: dict[int, list[int]] = {}
    ticks: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            text = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        # The command name is in parentheses and may hold spaces: the fields follow the last ')'.
        fields = text[text.rfind(")") + 2 :].split()
        try:
            parent, times = int(fields[1]), sum(int(v) for v in fields[11:15])  # utime stime cutime cstime
        except (IndexError, ValueError):
            continue
        pid = int(entry.name)
        children.setdefault(parent, []).append(pid)
        ticks[pid] = times
    total, queue = 0, [os.getpid()]
    while queue:
        pid = queue.pop()
        total += ticks.get(pid, 0)
        queue += children.get(pid, [])
    return total


@dataclass(frozen=True)
class Reading:
    """One moment: wall clock, the machine's CPU ticks, this benchmark's ticks, load average."""

    at: float
    machine: tuple[int, ...]
    own: int
    load_average: tuple[float, float, float]


class LoadMeter:
    """Measures the machine's load while a benchmark runs.

    ``reading()`` takes one moment: /proc/stat, the CPU time of this process and of every
    process it started (see ``_own_ticks``), the load average; ``usage(a, b)`` tells how the
    machine's CPU time between two readings was spent. While started, a background thread
    samples the 1-minute load average every ``interval_s``. ``settle()``, called before a
    timed part, waits (at most ``quiet_timeout_s``) until other processes use at most
    ``quiet_percent`` of the CPU time; with ``quiet_percent`` None it does not wait.
    """

    def __init__(
        self, interval_s: float = 1.0, quiet_percent: float | None = None, quiet_timeout_s: float = 20.0
    ) -> None:
        self.interval_s = interval_s
        self.attempts = 1  # tries of a timed part (least_disturbed)
        self.quiet_percent = quiet_percent
        self.quiet_timeout_s = quiet_timeout_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._load_samples: list[float] = []
        self.start_reading: Reading | None = None

    def __enter__(self) -> LoadMeter:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> Reading:
        self.start_reading = self.reading()
        self._thread = threading.Thread(target=self._run, name="load-meter", daemon=True)
        self._thread.start()
        return self.start_reading

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self._load_samples.append(os.getloadavg()[0])
            except OSError:
                pass

    @staticmethod
    def reading() -> Reading:
        try:
            load = tuple(round(v, 2) for v in os.getloadavg())
        except OSError:
            load = (0.0, 0.0, 0.0)
        return Reading(time.time(), tuple(_machine_ticks()), _own_ticks(), load)

    @staticmethod
    def usage(a: Reading, b: Reading) -> dict:
        """How the machine's CPU time between two readings was spent, in percent of all of it
        (every CPU's time added up): busy (at normal and lowered priority), of that this
        benchmark's processes and other processes, idle (with I/O wait), stolen by the hypervisor."""
        result: dict[str, Any] = {
            "seconds": round(b.at - a.at, 1),
            "load_average_start": list(a.load_average),
            "load_average_end": list(b.load_average),
        }
        if len(a.machine) < 8 or len(b.machine) < 8:
            return result
        user, nice, system, idle, iowait, irq, softirq, steal = (y - x for x, y in zip(a.machine, b.machine))
        total = max(user + nice + system + idle + iowait + irq + softirq + steal, 1)
        busy = user + nice + system + irq + softirq
        own = min(max(b.own - a.own, 0), busy)

        def percent(ticks: int) -> float:
            return round(100 * ticks / total, 1)

        result["cpu_percent"] = {
            "busy": percent(busy),
            "this_benchmark": percent(own),
            "other_processes": percent(busy - own),
            "niced": percent(nice),
            "idle": percent(idle + iowait),
            "steal": percent(steal),
        }
        return result

    def wait_until_quiet(self, others_percent: float | None, window_s: float = 2.0, timeout_s: float = 30.0) -> dict:
        """Waits until other processes used at most ``others_percent`` of the machine's CPU time
        over the last ``window_s``, or ``timeout_s`` has passed (None: does not wait). Returns
        how long it waited and the share it last measured, for the results."""
        if others_percent is None:
            return {}
        began = time.monotonic()
        while True:
            first = self.reading()
            time.sleep(window_s)
            measured = self.usage(first, self.reading()).get("cpu_percent", {}).get("other_processes", 0.0)
            waited = time.monotonic() - began
            if measured <= others_percent or waited >= timeout_s:
                return {
                    "waited_s": round(waited, 1),
                    "others_percent_before": measured,
                    "quiet": measured <= others_percent,
                }

    def settle(self) -> dict:
        """``wait_until_quiet`` with this meter's policy."""
        return self.wait_until_quiet(self.quiet_percent, timeout_s=self.quiet_timeout_s)

    def summary(self) -> dict:
        """From the start to now, with the range of the 1-minute load average over the samples."""
        if self.start_reading is None:
            raise RuntimeError("the load meter was not started")
        result = self.usage(self.start_reading, self.reading())
        samples = list(self._load_samples)
        if samples:
            result["load_average_1min_sampled"] = {
                "min": round(min(samples), 2),
                "mean": round(sum(samples) / len(samples), 2),
                "max": round(max(samples), 2),
                "samples": len(samples),
            }
        return result


def add_quiet_options(parser: argparse.ArgumentParser, wait_s: float, attempts: int = 2) -> None:
    """``--quiet-percent``, ``--quiet-wait-s`` and ``--attempts``: the waits for a quiet
    machine and the repeats of a timed part that other processes disturbed (``meter_for``,
    ``least_disturbed``)."""
    parser.add_argument(
        "--quiet-percent",
        type=float,
        default=20.0,
        help="before each timed part, wait until other processes use at most this share of the CPU (-1: never wait)",
    )
    parser.add_argument("--quiet-wait-s", type=float, default=wait_s, help="longest such wait")
    parser.add_argument(
        "--attempts",
        type=int,
        default=attempts,
        help="tries of a timed part while other processes used more than --quiet-percent during it; "
        "the least disturbed counts",
    )


def meter_for(args: argparse.Namespace) -> LoadMeter:
    """A started ``LoadMeter`` with the options of ``add_quiet_options``."""
    meter = LoadMeter(
        quiet_percent=None if args.quiet_percent < 0 else args.quiet_percent, quiet_timeout_s=args.quiet_wait_s
    )
    meter.attempts = max(1, args.attempts)
    meter.start()
    return meter


def others_percent(measured: dict) -> float:
    """The share of CPU time other processes used during a timed part (0 when not measured)."""
    return measured.get("load", {}).get("cpu_percent", {}).get("other_processes", 0.0)


ATTEMPT_KEYS = ("seconds", "faces_per_s", "photos_per_s", "p50_ms")


def least_disturbed(meter: LoadMeter, measure: Callable[[], dict]) -> dict:
    """Runs a timed part (``measure`` records its own ``load``) up to ``meter.attempts`` times,
    again only while other processes used more than ``meter.quiet_percent`` of the CPU during
    it; returns the least disturbed try, with every try's figures and share under ``attempts``."""
    tries: list[dict] = []
    for _ in range(meter.attempts):
        tries.append(measure())
        if meter.quiet_percent is None or others_percent(tries[-1]) <= meter.quiet_percent:
            break
    best = min(tries, key=others_percent)
    summary = [
        {
            **{k: round(t[k], 3) if isinstance(t[k], float) else t[k] for k in ATTEMPT_KEYS if k in t},
            "others_percent": others_percent(t),
            "kept": t is best,
        }
        for t in tries
    ]
    return {**best, "attempts": summary}


def quiet_remark(measurements: list[dict], threshold: float | None) -> str:
    """How the waits for a quiet machine and the repeats went, from the measurements' ``quiet``
    and ``attempts`` records."""
    waits = [m["quiet"] for m in measurements if m.get("quiet")]
    if threshold is None or not waits:
        return "Measurements did not wait for a quiet machine."
    quiet = sum(w["quiet"] for w in waits)
    text = (
        f"Before each of {len(waits)} timed parts the benchmark waited until other processes used at most "
        f"{threshold:g}% of the CPU time over 2 s: quiet enough before {quiet} of them, the wait ran out before "
        f"{len(waits) - quiet}; {sum(w['waited_s'] for w in waits):.0f} s waited in all."
    )
    tried = [m["attempts"] for m in measurements if m.get("attempts")]
    if tried:
        repeated = sum(len(t) > 1 for t in tried)
        disturbed = sum(k["others_percent"] > threshold for t in tried for k in t if k["kept"])
        text += (
            f" Measured again when other processes used more than {threshold:g}% during the part (the least "
            f"disturbed try counts): {repeated} of {len(tried)} parts; {disturbed} of the tries that count are "
            f"still above {threshold:g}%."
        )
    return text


def load_remark(usage: dict) -> str:
    """The measurement in words: who used the CPU time."""
    cpu = usage.get("cpu_percent")
    if not cpu:
        return "CPU time not measured (no /proc/stat)"
    return (
        f"of the machine's CPU time, this benchmark's processes used {cpu['this_benchmark']}%, other "
        f"processes {cpu['other_processes']}%, the hypervisor took {cpu['steal']}% (steal), "
        f"{cpu['idle']}% was idle"
    )


def load_line(usage: dict, what: str = "Load during the run") -> str:
    """One sentence: load averages and the CPU time split."""
    text = (
        f"{what} ({usage['seconds']} s): load average {usage['load_average_start']} at the start, "
        f"{usage['load_average_end']} at the end"
    )
    sampled = usage.get("load_average_1min_sampled")
    if sampled:
        text += f" (1-minute figure sampled {sampled['min']}-{sampled['max']}, mean {sampled['mean']})"
    return text + "; " + load_remark(usage) + "."


def heading(title: str, result: dict) -> list[str]:
    """A results page's first lines: its title, the machine and the load during the run."""
    return [f"# {title}", "", machine_line(result["machine"]), "", load_line(result["load"]), ""]


def phase_line(name: str, usage: dict) -> str:
    """One line for a part of a run: its length and who used the CPU time."""
    return (
        f"{name} ({usage['seconds']} s): {load_remark(usage)}; load average {usage['load_average_start']} "
        f"at the start, {usage['load_average_end']} at the end"
    )


# --- settings --------------------------------------------------------------------------------------


def settings_of(settings: Any, exclude: Iterable[str] = ()) -> dict:
    """A pydantic settings object as JSON data, credentials left out."""
    return settings.model_dump(mode="json", exclude=set(SECRET_FIELDS) | set(exclude))


def triton_model_config(url: str, model: str, version: str = "") -> dict:
    """The model's configuration as the Triton at ``url`` reports it (``get_model_config``):
    the fields that shape serving, parameters as plain strings."""
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(url) as client:
        config = client.get_model_config(model, version, as_json=True)["config"]
    keep = (
        "name",
        "platform",
        "backend",
        "max_batch_size",
        "dynamic_batching",
        "instance_group",
        "parameters",
        "optimization",
    )
    result = {key: config[key] for key in keep if key in config}
    if "parameters" in result:
        result["parameters"] = {k: v.get("string_value", v) for k, v in result["parameters"].items()}
    return result


def describe_triton_config(config: dict) -> str:
    """Triton's model config in a few words: max batch, dynamic batching, instances, threads."""
    batching = config.get("dynamic_batching", {})
    groups = config.get("instance_group", [])
    instances = ", ".join(f"{g.get('count', 1)} x {g.get('kind', '?')}" for g in groups) or "?"
    parameters = config.get("parameters", {})
    threads = parameters.get("intra_op_num_threads")
    return (
        f"max_batch_size {config.get('max_batch_size')}, dynamic batching preferred sizes "
        f"{batching.get('preferred_batch_size', [])}, max_queue_delay_microseconds "
        f"{batching.get('max_queue_delay_microseconds', 0)}, instances {instances}"
        + (f", intra_op_num_threads {threads}" if threads is not None else "")
    )


# --- writing ---------------------------------------------------------------------------------------


def write_results(out: Path, name: str, result: dict, render: Callable[[dict], str]) -> tuple[Path, Path]:
    """Writes ``<out>/<name>.json`` and ``<out>/<name>.md``; the markdown is rendered from the
    data as read back from the JSON text, so it shows nothing the JSON does not hold."""
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result, indent=2) + "\n"
    json_path, md_path = out / f"{name}.json", out / f"{name}.md"
    json_path.write_text(text)
    md_path.write_text(render(json.loads(text)))
    return json_path, md_path


def measured(
    name: str, measure: Callable[[], dict], packages: Iterable[str], out: Path, render: Callable[[dict], str]
) -> Path:
    """Runs ``measure`` under a ``LoadMeter``, adds the load, the command line (``python -m
    bench.NAME ...``) and the machine to its result, writes ``<out>/<name>.{json,md}``, prints
    the markdown and returns its path."""
    meter = LoadMeter()
    meter.start()
    try:
        result = measure()
        result["load"] = meter.summary()
    finally:
        meter.stop()
    result["command"] = " ".join([f"python -m bench.{name}", *sys.argv[1:]])
    result["machine"] = machine_facts(packages)
    _, md_path = write_results(out, name, result, render)
    print(md_path.read_text())
    return md_path


def render_again(json_path: Path, render: Callable[[dict], str]) -> Path:
    """Rewrites the markdown beside a results JSON file from it (after a change of layout)."""
    md_path = json_path.with_suffix(".md")
    md_path.write_text(render(json.loads(json_path.read_text())))
    return md_path
