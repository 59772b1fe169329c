"""Running NVIDIA Triton Inference Server as a child process.

The ``tritonserver`` binary (Triton 2.51) and the libraries it needs come from the
``nvidia-pytriton`` wheel, which bundles them under ``pytriton/tritonserver`` and
``nvidia_pytriton.libs``. Only those files are used: pytriton itself is never imported
(its own dependencies, such as numpy<2, are not installed).

What starting it takes, beside the command line:

- a backend directory: the wheel's ``backends`` tree, with the python-backend stub for
  this interpreter's Python version (``python_backend_stubs/3.X``) placed in its
  ``python/`` folder, where the python backend looks for it;
- ``LD_LIBRARY_PATH`` with the running interpreter's own libpython folder first (else the
  stub may load the system's libpython3.11, a different patch release, and fail inside
  the threading module), and the wheel's ``nvidia_pytriton.libs``;
- this environment's ``bin`` folder first on ``PATH``. The stub embeds Python in
  *isolated* mode (pybind11's ``PyConfig_InitIsolatedConfig``), which ignores
  ``PYTHONPATH`` and ``PYTHONHOME``; its Python finds its prefix by looking up
  ``python3`` on ``PATH``. When that is this virtual environment's ``python3``, the
  stub reads its ``pyvenv.cfg`` and imports numpy, onnxruntime and the project from this
  environment's site-packages (``.pth`` files and editable installs included) rather
  than from the base interpreter's. ``PYTHONPATH`` is set as well, for stub builds that
  are not isolated.

Usage::

    with TritonServer("models/", work_dir="/tmp/triton") as triton:
        client = tritonclient.grpc.InferenceServerClient(triton.grpc_url)
"""

from __future__ import annotations

import importlib.util
import os
import sys
import sysconfig
from collections.abc import Sequence
from pathlib import Path

from services.runtime.ports import free_port
from services.runtime.processes import ChildProcess
from services.runtime.readiness import ExitedEarly, NotReady, triton_ready, wait_until_ready


class TritonError(RuntimeError):
    """Triton could not be found, did not start, or did not become ready."""


def pytriton_root() -> Path:
    """The ``pytriton`` package folder of the installed nvidia-pytriton wheel (not imported)."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise TritonError("the nvidia-pytriton package (which bundles tritonserver) is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def tritonserver_binary() -> Path:
    binary = pytriton_root() / "tritonserver" / "bin" / "tritonserver"
    if not os.access(binary, os.X_OK):
        raise TritonError(f"no executable tritonserver at {binary}")
    return binary


def bundled_libraries() -> Path:
    """``site-packages/nvidia_pytriton.libs``: the shared libraries the wheel bundles."""
    return pytriton_root().parent / "nvidia_pytriton.libs"


def prepare_backends(target: str | Path) -> Path:
    """Builds a backend directory at ``target`` (symlinks into the wheel) and returns it.

    ``target/python/`` gets the wheel's python backend plus the stub executable that
    matches this interpreter.
    """
    tritonserver = pytriton_root() / "tritonserver"
    python_version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = tritonserver / "python_backend_stubs" / python_version / "triton_python_backend_stub"
    if not stub.is_file():
        raise TritonError(f"the wheel has no python-backend stub for Python {python_version} ({stub})")

    target = Path(target)
    for backend in (tritonserver / "backends").iterdir():
        if not backend.is_dir() or backend.name.startswith("__"):
            continue
        (target / backend.name).mkdir(parents=True, exist_ok=True)
        for item in backend.iterdir():
            if item.name != "__pycache__":
                _symlink(item, target / backend.name / item.name)
    _symlink(stub, target / "python" / stub.name)
    return target


def triton_environment() -> dict[str, str]:
    """This process's environment plus what tritonserver and its python-backend stubs need
    (see the module docstring)."""
    env = dict(os.environ)
    libdir = sysconfig.get_config_var("LIBDIR")
    libpython = sysconfig.get_config_var("INSTSONAME") or sysconfig.get_config_var("LDLIBRARY")
    if not (libdir and libpython and (Path(libdir) / libpython).exists()):
        raise TritonError(
            f"this Python ({sys.executable}) has no shared libpython ({libdir}/{libpython}); "
            "the python-backend stub needs one (build Python with --enable-shared)"
        )
    env["LD_LIBRARY_PATH"] = _path_list(libdir, bundled_libraries(), env.get("LD_LIBRARY_PATH"))
    bin_dir = Path(sys.executable).parent
    if not (bin_dir / "python3").exists():
        raise TritonError(f"no python3 beside {sys.executable}: the python-backend stub finds its environment by it")
    env["PATH"] = _path_list(bin_dir, env.get("PATH"))
    paths = sysconfig.get_paths()
    env["PYTHONPATH"] = _path_list(*dict.fromkeys([paths["purelib"], paths["platlib"]]), env.get("PYTHONPATH"))
    return env


class TritonServer:
    """A ``tritonserver`` child process serving ``model_repository``.

    Ports of 0 are replaced by free ones at ``start``; a ``metrics_port`` of None turns
    Triton's metrics off. Everything Triton writes (its log and the stubs' output) goes to
    ``<work_dir>/triton.log``; the backend directory is built in ``<work_dir>/backends``.
    The process is a ``services.runtime.processes.ChildProcess`` (``process``, once started):
    its own process group, stopped with SIGTERM then SIGKILL, also when this object is
    collected or Python exits without ``stop``.
    """

    def __init__(
        self,
        model_repository: str | Path,
        work_dir: str | Path,
        *,
        host: str = "127.0.0.1",
        grpc_port: int = 0,
        http_port: int = 0,
        metrics_port: int | None = 0,
        startup_timeout_s: float = 60.0,
        stop_timeout_s: float = 15.0,
        log_verbose: int = 0,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.model_repository = Path(model_repository).resolve()
        self.work_dir = Path(work_dir).resolve()
        self.host = host
        self.grpc_port, self.http_port, self.metrics_port = grpc_port, http_port, metrics_port
        self.startup_timeout_s = startup_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.log_verbose = log_verbose
        self.extra_args = list(extra_args)
        self.log_path = self.work_dir / "triton.log"
        self.process: ChildProcess | None = None

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    def command(self) -> list[str]:
        if self.metrics_port is None:
            metrics = ["--allow-metrics=false"]
        else:
            metrics = [
                "--allow-metrics=true",
                "--allow-gpu-metrics=false",
                f"--metrics-address={self.host}",
                f"--metrics-port={self.metrics_port}",
            ]
        return [
            str(tritonserver_binary()),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={self.work_dir / 'backends'}",
            "--model-control-mode=none",
            "--strict-readiness=true",
            "--exit-on-error=true",
            f"--grpc-address={self.host}",
            f"--grpc-port={self.grpc_port}",
            f"--http-address={self.host}",
            f"--http-port={self.http_port}",
            *metrics,
            f"--log-verbose={self.log_verbose}",
            f"--exit-timeout-secs={max(1, int(self.stop_timeout_s) - 1)}",  # before our SIGKILL
            *self.extra_args,
        ]

    def start(self) -> TritonServer:
        """Starts tritonserver and waits until it and every model are ready."""
        if self.process is not None:
            raise TritonError("this TritonServer was already started")
        if not self.model_repository.is_dir():
            raise TritonError(f"no model repository at {self.model_repository}")
        self.work_dir.mkdir(parents=True, exist_ok=True)
        prepare_backends(self.work_dir / "backends")
        self.grpc_port = self.grpc_port or free_port(self.host)
        self.http_port = self.http_port or free_port(self.host)
        if self.metrics_port is not None:
            self.metrics_port = self.metrics_port or free_port(self.host)
            while len({self.grpc_port, self.http_port, self.metrics_port}) < 3:
                self.metrics_port = free_port(self.host)

        self.process = ChildProcess(
            "tritonserver",
            self.command(),
            env=triton_environment(),
            log_path=self.log_path,
            stop_timeout_s=self.stop_timeout_s,
        ).start()
        try:
            wait_until_ready(
                triton_ready(self.grpc_url),
                self.startup_timeout_s,
                what=f"tritonserver at {self.grpc_url}",
                process=self.process,
                details=self.log_tail,
            )
        except (ExitedEarly, NotReady) as error:
            self.stop()
            raise TritonError(str(error)) from None
        except BaseException:
            self.stop()
            raise
        return self

    def restart(self) -> TritonServer:
        """Stops it if it runs, then starts it again on the same ports."""
        self.stop()
        self.process = None
        return self.start()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL to its process group after ``stop_timeout_s``."""
        if self.process is not None:
            self.process.stop()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.running

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of Triton's log, for error messages."""
        if self.process is None:
            return f"(tritonserver not started; its log would be {self.log_path})"
        return self.process.log_tail(lines)

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _symlink(source: Path, link: Path) -> None:
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(source)


def _path_list(*parts: str | Path | None) -> str:
    return os.pathsep.join(str(part) for part in parts if part)
