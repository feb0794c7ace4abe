"""Shared output of the benchmark scripts: the table is theirs, the JSON line and file are here."""

import json


def emit_json(result: dict, path: str | None) -> None:
  """Prints `result` as one JSON line and, if `path` is given, writes it there too."""
  print(json.dumps(result))
  if path:
    with open(path, "w") as f:
      json.dump(result, f, indent=2)
