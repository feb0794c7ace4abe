"""Command-line parsing of every job: bad input ends in one `error:` line, `--help` exits 0.

absl and ml_collections report a missing config file, a bad preset or a misspelt key with
tracebacks or doubly escaped text; `parse_flags` turns each into one line that says what to fix.
"""

from __future__ import annotations

import os
import re
import sys
import textwrap

from absl import app, flags

# absl's help flags → whether to show only the job's own flags (absl itself exits 1 after help).
_HELP_FLAGS = {"--help": True, "-h": True, "-?": True, "--helpshort": True, "--helpfull": False}


def shipped_configs_dir() -> str | None:
  """The repository's configs/ folder (a clone or an editable install), or None."""
  folder = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
  return folder if os.path.isdir(folder) else None


def usage_notes() -> str:
  """What --help adds to absl's flag list: config overrides and where the configs are."""
  notes = ["Config keys: set any key with --config.KEY=VALUE, e.g. --config.batch_size=64 "
           "--config.model.channels=256; every key and its meaning: tarflow_flax/config_lib.py. "
           "A preset follows a colon: --config=configs/imagenet64.py:likelihood."]
  folder = shipped_configs_dir()
  if folder:
    names = ", ".join(sorted(f for f in os.listdir(folder) if f.endswith(".py")))
    notes.append(f"Shipped configs in {folder}: {names}.")
  return "\n".join(textwrap.fill(note, 100) for note in notes)


def _argument(argv, name: str) -> str | None:
  """The value of `--name=VALUE` or `--name VALUE` in argv (the last one)."""
  value = None
  for i, arg in enumerate(argv[1:], 1):
    if arg.startswith(f"--{name}="):
      value = arg.split("=", 1)[1]
    elif arg == f"--{name}" and i + 1 < len(argv):
      value = argv[i + 1]
  return value


def config_file_problem(spec: str) -> str | None:
  """Why the config file of `--config=FILE[:preset]` cannot be loaded, or None if it can be read."""
  path = spec.split(":", 1)[0]
  if not path:
    return "--config is empty: give a config file, e.g. --config=configs/default.py"
  where = "" if os.path.isabs(path) else f" (relative to the current directory {os.getcwd()})"
  if not os.path.exists(path):
    folder = shipped_configs_dir()
    return f"config file {path} not found{where}" + (
        f"; the shipped configs are in {folder}" if folder else "")
  if not os.path.isfile(path) or not os.access(path, os.R_OK):
    return f"cannot read config file {path}{where}"
  return None


def _config_error(flag_values, argv) -> str | None:
  """The problem with the file of every job's config flag, `--config`, if it has one."""
  spec = _argument(argv, "config") if "config" in flag_values else None
  return config_file_problem(spec) if spec is not None else None


def _last_line(text: str) -> str:
  lines = [line.strip() for line in text.splitlines() if line.strip()]
  return lines[-1] if lines else text


def _flag_error(e: flags.Error) -> str:
  message = str(e)
  required = re.search(r"Flag --(\S+) must have a value other than None", message)
  if required:
    return f"missing required flag --{required.group(1)} (see --help)"
  parsing = re.match(r"flag --(\S+?)=(\S*): Error whilst parsing config file", message)
  if parsing:  # The config's get_config raised: a bad preset, most often.
    cause = _last_line(message)
    if re.search(r"get_config\(\) takes 0 positional arguments", cause):
      cause = "this config has no presets"
    else:
      cause = re.sub(r"^\w+(Error|Exception): ", "", cause)
    return f"--{parsing.group(1)}={parsing.group(2)}: {cause}"
  return message.splitlines()[0]


def _unknown_key(e: LookupError, argv) -> str:
  """ml_collections' KeyError (maybe inside an AttributeError), as one readable line."""
  while e.args and isinstance(e.args[0], LookupError):
    e = e.args[0]
  text = str(e.args[0]) if e.args else str(e)
  key = text.splitlines()[0].strip("'\"")
  given = [arg.split("=", 1)[0] for arg in argv[1:]
           if re.match(rf"--\w+\.(\S+\.)?{re.escape(key)}([.=]|$)", arg)]
  where = f" in {given[0]}" if given else ""
  suggestion = re.search(r'Did you mean "([^"]+)"', text)
  hint = f": did you mean '{suggestion.group(1)}'?" if suggestion else ""
  return f"unknown config key '{key}'{where}{hint}"


def parse_flags(argv: list[str], flag_values=flags.FLAGS) -> list[str]:
  """absl's flag parsing for `app.run(..., flags_parser=parse_flags)`: every failure exits 1 with
  one `error:` line, --help prints the usage with config notes and exits 0."""
  for arg in argv[1:]:
    if arg in _HELP_FLAGS:
      app.usage(shorthelp=_HELP_FLAGS[arg], writeto_stdout=True)
      print(f"\n{usage_notes()}")
      sys.exit(0)
  try:
    remaining = flag_values(argv)
  except (flags.Error, LookupError, AttributeError, OSError, SyntaxError, ValueError,
          TypeError) as e:
    # A config file that cannot be loaded also makes its overrides unknown flags: say so first.
    message = _config_error(flag_values, argv)
    if message is None:
      if isinstance(e, flags.Error):
        message = _flag_error(e)
      elif isinstance(e, (LookupError, AttributeError)):
        message = _unknown_key(e, argv)
      else:
        message = f"bad --config: {_last_line(str(e))}"
    sys.exit(f"error: {message}")
  message = _config_error(flag_values, argv)  # Without overrides, the file is loaded lazily.
  if message:
    sys.exit(f"error: {message}")
  return remaining
