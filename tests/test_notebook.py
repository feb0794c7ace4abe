"""notebooks/quickstart.ipynb runs top to bottom on a tiny checkpoint."""

import os
import re

import nbformat
from flax import nnx
from nbclient import NotebookClient

from conftest import REPO, tiny_config
from tarflow_flax import checkpoint, models


def test_quickstart_notebook_executes_on_a_tiny_checkpoint(tmp_path, monkeypatch):
  config = tiny_config(**{"sample.guidance": 0.0})
  root = tmp_path / "checkpoints"
  checkpoint.save_model_checkpoint(root, models.build_model(config, rngs=nnx.Rngs(0)), config)
  monkeypatch.setenv("TARFLOW_CHECKPOINT", str(root))
  monkeypatch.setenv("TARFLOW_WORKDIR", "")
  notebook = nbformat.read(os.path.join(REPO, "notebooks", "quickstart.ipynb"), as_version=4)
  NotebookClient(notebook, timeout=600, kernel_name="python3",
                 resources={"metadata": {"path": str(tmp_path)}}).execute()

  outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
  assert not [o for o in outputs if o.output_type == "error"]
  assert sum("image/png" in o.get("data", {}) for o in outputs) == 2  # The grid and the trace.
  text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
  assert f"{root}: step 0" in text
  bpd = re.search(r"bits/dim (\d+\.\d+) ± \d+\.\d+ \((\d+) test images\)", text)
  assert bpd and float(bpd.group(1)) > 0 and int(bpd.group(2)) > 0, text
