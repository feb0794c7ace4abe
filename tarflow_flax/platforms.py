"""Which JAX platforms a job may start, decided once before JAX reads its settings.

With libtpu installed (the `tpu` and `test` extras), JAX tries to start a TPU backend on every
host; on a host without TPUs libtpu then prints a screen of errors (worker hostnames, "No
jellyfish device found", host bounds) and writes a `tpu_logs` folder into the temp directory.
So when the user has not set JAX_PLATFORMS, a host that shows no TPU gets the platforms it does
have: CPU, plus CUDA where an NVIDIA device and JAX's CUDA plugin are both there. A TPU VM, a
user's JAX_PLATFORMS, or a plugin this does not know is left to JAX. Compiling for a TPU topology
(compile_check) still works through libtpu: it needs no TPU backend.

JAX imports the CUDA plugin's linalg, PRNG and solver kernels when it is imported, and the plugin
itself when it starts its first backend, wanted or not; with the plugin installed (the `test`
extra has it, for compiling for GPUs) each of those loads logs "Could not find cuda drivers" on a
host without a driver. So where the platforms exclude CUDA, JAX finds neither: the kernels stay
unloaded (they are custom calls a compile-only GPU target does without), and
`load_cuda_plugin()` (compile_check for GPU topologies) registers the plugin when it is needed.
"""

from __future__ import annotations

import glob
import importlib
import os
import pkgutil
import sys
import types

_GOOGLE_PCI_VENDOR_ID = "0x1ae0"  # What JAX's own TPU discovery looks for on the PCI bus.
# Device files libtpu opens: /dev/accel* (v2–v5p), /dev/vfio/<group> (v5e and newer).
_TPU_DEVICE_FILES = ("/dev/accel*", "/dev/vfio/[0-9]*")
# What JAX checks before it starts its CUDA backend.
_NVIDIA_DEVICE_FILES = ("/dev/nvidia0", "/dev/nvidiactl", "/dev/dxg")


def tpu_visible() -> bool:
  """True where a TPU chip shows on the PCI bus or as a device file."""
  for vendor_file in glob.glob("/sys/bus/pci/devices/*/vendor"):
    try:
      with open(vendor_file) as f:
        if f.read().strip() == _GOOGLE_PCI_VENDOR_ID:
          return True
    except OSError:
      continue
  return any(glob.glob(pattern) for pattern in _TPU_DEVICE_FILES)


def nvidia_visible() -> bool:
  return any(os.path.exists(path) for path in _NVIDIA_DEVICE_FILES)


def installed_plugins() -> tuple[str, ...]:
  """Platforms of the JAX plugins installed under `jax_plugins` (xla_cuda12 → 'cuda')."""
  try:
    import jax_plugins  # pylint: disable=g-import-not-at-top
  except ImportError:
    return ()
  names = (module.name for module in pkgutil.iter_modules(jax_plugins.__path__))
  return tuple(sorted({name.removeprefix("xla_").rstrip("0123456789") for name in names}))


def choose(*, user_setting: str | None, tpu: bool, nvidia: bool,
           plugins: tuple[str, ...]) -> str | None:
  """The JAX_PLATFORMS value to set, or None to leave JAX to decide.

  user_setting: JAX_PLATFORMS as the user set it (None: unset). tpu / nvidia: whether such
  devices are visible. plugins: platforms of installed JAX plugins (e.g. ('cuda',)).
  """
  if user_setting is not None or tpu or set(plugins) - {"cuda"}:
    return None  # The user's choice, a TPU VM, or plugins (ROCm, ...) this does not know.
  if nvidia:
    # Without the plugin, JAX's own warning says that it is missing.
    return "cuda,cpu" if "cuda" in plugins else None
  return "cpu"


CUDA_PLUGIN = "jax_plugins.xla_cuda12"  # The PJRT plugin JAX registers as 'cuda'.
# The plugin's kernel modules jaxlib imports with JAX whose libraries log the driver check.
_LOGGING_CUDA_KERNELS = ("jax_cuda12_plugin._linalg", "jax_cuda12_plugin._prng",
                         "jax_cuda12_plugin._solver")


def _excludes_cuda(platforms: str | None) -> bool:
  names = {name.strip() for name in (platforms or "").split(",")}
  return bool(platforms) and not names & {"cuda", "gpu"}


def apply() -> None:
  """Sets JAX_PLATFORMS per `choose()` for this process and the processes it starts, and defers
  the CUDA plugin where the platforms exclude CUDA."""
  plugins = installed_plugins()
  value = choose(user_setting=os.environ.get("JAX_PLATFORMS"), tpu=tpu_visible(),
                 nvidia=nvidia_visible(), plugins=plugins)
  if value is not None:
    os.environ["JAX_PLATFORMS"] = value
  if "cuda" in plugins and _excludes_cuda(os.environ.get("JAX_PLATFORMS")):
    for kernels in _LOGGING_CUDA_KERNELS:
      sys.modules.setdefault(kernels, None)  # An import of it now fails as "not installed".
    placeholder = types.ModuleType(CUDA_PLUGIN, "The CUDA plugin, deferred by platforms.py.")
    placeholder.initialize = lambda: None  # What JAX calls on each plugin it finds.
    placeholder.deferred = True
    sys.modules.setdefault(CUDA_PLUGIN, placeholder)


def cuda_plugin_deferred() -> bool:
  return getattr(sys.modules.get(CUDA_PLUGIN), "deferred", False)


def load_cuda_plugin() -> None:
  """Registers the deferred CUDA plugin with JAX (its abstract GPUs are compile targets; no CUDA
  backend starts), as JAX's own plugin discovery would have."""
  if not cuda_plugin_deferred():
    return
  # pylint: disable=g-import-not-at-top,protected-access
  from jax._src import xla_bridge
  xla_bridge._discover_and_register_pjrt_plugins()  # Once per process: with the placeholder.
  del sys.modules[CUDA_PLUGIN]
  importlib.import_module(CUDA_PLUGIN).initialize()
  # What discovery does next for each plugin: the callbacks that register custom partitioning
  # and FFI targets with it.
  c_api = xla_bridge._backend_factories["cuda"].c_api
  with xla_bridge._plugin_callback_lock:
    for callback in xla_bridge._plugin_callbacks:
      callback(c_api=c_api)
