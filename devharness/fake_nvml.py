"""The fake NVML library: build it, describe its devices, point pynvml at it.

`tests/fakes/fake_nvml.c` (the fake is a test fake; this module only builds and drives it)
is compiled with gcc into `devharness/build/libnvidia-ml.so.1` (git-ignored). It reads the
devices from the text file named by `$FAKE_NVML_STATE` on every call, so a test changes
free memory (even in the middle of a load) by rewriting that file with `FakeNvml.write()`.

Two ways to make the real nvidia-ml-py code path run against it:

- another process: start it with `subprocess_env(state)`, which puts the build folder first
  on `LD_LIBRARY_PATH`; pynvml's `CDLL("libnvidia-ml.so.1")` then finds the fake (the
  dynamic loader reads `LD_LIBRARY_PATH` once, at process start).
- this process: `in_process(library)` loads the fake by its absolute path and hands it to
  pynvml as its loaded library (`pynvml.nvmlLib`, with pynvml's function-pointer cache
  cleared), then puts back whatever was there. The fake has no DT_SONAME, so loading it does
  not shadow a real `libnvidia-ml.so.1` that a `gpu` test loads later in the same session.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SOURCE = HERE.parent / "tests" / "fakes" / "fake_nvml.c"
BUILD = HERE / "build"
LIBRARY = BUILD / "libnvidia-ml.so.1"
STATE_ENV = "FAKE_NVML_STATE"
GiB = 2**30

# NVML return codes a test may ask nvmlInit to fail with.
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_NO_PERMISSION = 4


def build() -> Path:
    """Compile the fake library unless an up-to-date build exists; return its path.

    Safe when several test processes build at once: each compiles into a temporary file and
    renames it into place.
    """
    if LIBRARY.exists() and LIBRARY.stat().st_mtime >= SOURCE.stat().st_mtime:
        return LIBRARY
    compiler = shutil.which(os.environ.get("CC", "gcc"))
    if compiler is None:
        raise RuntimeError("the fake NVML library needs a C compiler: install gcc (or set CC)")
    BUILD.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=BUILD, prefix=".libnvidia-ml.", suffix=".so")
    os.close(fd)
    try:
        subprocess.run(
            [compiler, "-shared", "-fPIC", "-O1", "-Wall", "-Wextra", "-Werror", "-o", tmp, SOURCE],
            check=True,
            capture_output=True,
            text=True,
        )
        os.replace(tmp, LIBRARY)
    except subprocess.CalledProcessError as exc:
        raise RuntimeError(f"building the fake NVML library failed:\n{exc.stderr}") from exc
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return LIBRARY


@dataclass
class FakeMig:
    slot: int
    uuid: str
    total_bytes: int
    free_bytes: int
    name: str = "NVIDIA A100-SXM4-40GB MIG 1g.5gb"


@dataclass
class FakeGpu:
    uuid: str
    total_bytes: int
    free_bytes: int
    name: str = "NVIDIA A100-SXM4-40GB"
    # -1: MIG not supported, 0: disabled, 1: enabled
    mig_mode: int = -1
    migs: list[FakeMig] = field(default_factory=list)
    # CUDA compute capability (major, minor) for nvmlDeviceGetCudaComputeCapability (also
    # served for its MIG instances); None: "Not Supported"
    compute_capability: tuple[int, int] | None = None


@dataclass
class FakeNvml:
    """The devices the fake library serves; `write()` publishes them."""

    path: Path
    gpus: list[FakeGpu] = field(default_factory=list)
    init_result: int = 0
    memory_v2: bool = True
    driver_version: str = "550.54.15-fake"

    def render(self) -> str:
        lines = [
            "# written by devharness/fake_nvml.py",
            f"init_result {self.init_result}",
            f"memory_v2 {int(self.memory_v2)}",
            f"driver_version {self.driver_version}",
        ]
        for gpu in self.gpus:
            lines.append(
                f"gpu {gpu.uuid} {gpu.total_bytes} {gpu.free_bytes} {gpu.mig_mode} {gpu.name}"
            )
        for position, gpu in enumerate(self.gpus):
            if gpu.compute_capability is not None:
                major, minor = gpu.compute_capability
                lines.append(f"cc {position} {major} {minor}")
            for mig in gpu.migs:
                lines.append(
                    f"mig {position} {mig.slot} {mig.uuid} {mig.total_bytes} {mig.free_bytes} "
                    f"{mig.name}"
                )
        return "\n".join(lines) + "\n"

    def write(self) -> None:
        """Replace the state file atomically (the library may read it at any moment)."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(self.render())
        os.replace(tmp, self.path)

    def gpu(self, uuid: str) -> FakeGpu:
        for gpu in self.gpus:
            if gpu.uuid == uuid:
                return gpu
        raise KeyError(uuid)

    def set_free(self, uuid: str, free_bytes: int) -> None:
        self.gpu(uuid).free_bytes = free_bytes
        self.write()

    def take(self, uuid: str, nbytes: int) -> None:
        """Simulate an allocation of `nbytes` on a device."""
        gpu = self.gpu(uuid)
        self.set_free(uuid, max(0, gpu.free_bytes - nbytes))


def two_gpus(path: Path) -> FakeNvml:
    """The usual test machine: two 80 GiB devices, one with 30 GiB in use."""
    state = FakeNvml(
        path,
        gpus=[
            FakeGpu("GPU-11111111-aaaa", 80 * GiB, 80 * GiB, name="NVIDIA H100 80GB HBM3"),
            FakeGpu("GPU-22222222-bbbb", 80 * GiB, 50 * GiB, name="NVIDIA H100 80GB HBM3"),
        ],
    )
    state.write()
    return state


def subprocess_env(state: FakeNvml, base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for a child process whose pynvml should load the fake library."""
    env = dict(os.environ if base is None else base)
    folder = str(build().parent)
    previous = env.get("LD_LIBRARY_PATH", "")
    env["LD_LIBRARY_PATH"] = f"{folder}{os.pathsep}{previous}" if previous else folder
    env[STATE_ENV] = str(state.path)
    return env


@contextmanager
def in_process(library: Path) -> Iterator[None]:
    """Make this process's pynvml use `library` (the fake) until the block ends."""
    import pynvml

    saved: dict[str, Any] = {
        "nvmlLib": pynvml.nvmlLib,
        "cache": dict(pynvml._nvmlGetFunctionPointer_cache),
        "refcount": pynvml._nvmlLib_refcount,
    }
    with pynvml.libLoadLock:
        pynvml.nvmlLib = ctypes.CDLL(str(library))
        pynvml._nvmlGetFunctionPointer_cache.clear()
    try:
        yield
    finally:
        with pynvml.libLoadLock:
            pynvml.nvmlLib = saved["nvmlLib"]
            pynvml._nvmlGetFunctionPointer_cache.clear()
            pynvml._nvmlGetFunctionPointer_cache.update(saved["cache"])
            pynvml._nvmlLib_refcount = saved["refcount"]


@contextmanager
def library_missing() -> Iterator[None]:
    """Make pynvml fail to find any libnvidia-ml.so.1, as on a machine without a driver."""
    import pynvml

    def refuse(name: str, *args: Any, **kwargs: Any) -> Any:
        raise OSError(f"{name}: cannot open shared object file: No such file or directory")

    saved_lib, saved_cdll = pynvml.nvmlLib, pynvml.CDLL
    saved_cache = dict(pynvml._nvmlGetFunctionPointer_cache)
    with pynvml.libLoadLock:
        pynvml.nvmlLib = None
        pynvml._nvmlGetFunctionPointer_cache.clear()
        pynvml.CDLL = refuse
    try:
        yield
    finally:
        with pynvml.libLoadLock:
            pynvml.CDLL = saved_cdll
            pynvml.nvmlLib = saved_lib
            pynvml._nvmlGetFunctionPointer_cache.clear()
            pynvml._nvmlGetFunctionPointer_cache.update(saved_cache)
