"""SLURM profiles: the resources a run's job asks for, per model and data set, from a profile file.

The file is the first of: ``$BENCH_SLURM_PROFILES``, ``~/.config/afd-bench/profiles.toml`` (under
``$XDG_CONFIG_HOME`` when set) when it exists, the repository's ``slurm/profiles.toml``; so a cluster's partitions
and accounts need no edit of the repository. ``bench run --partition/--account/--qos`` override the profile's.
"""
from __future__ import annotations

import fnmatch
import os
import re
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path

from bench.core.config import ConfigError

REPO = Path(__file__).resolve().parents[3]
PROFILES_FILE = REPO / "slurm" / "profiles.toml"
DEFAULT_PROFILE = "gpu"
OVERRIDABLE = ("partition", "account", "qos")  # what --partition, --account and --qos set for every job
# a SLURM partition, account or QOS name: no spaces, commas or shell characters (they end up in #SBATCH lines)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


class ProfileError(ConfigError):
    """An unknown profile name or an invalid entry in the profile file."""



@dataclass(frozen=True)
class Resources:
    """What one job asks SLURM for."""

    partition: str | None = None
    gpus: int = 0
    cpus: int = 1
    mem: str = "4G"
    time: str = "01:00:00"
    account: str | None = None
    qos: str | None = None
    array_parallelism: int = 256
    # One run on several processes (bench/core/distributed.py): ``tasks`` per node (0: one per GPU when gpus > 1,
    # else 1) on ``nodes`` nodes; the ranks come from SLURM's environment. cpus is per task.
    tasks: int = 0
    nodes: int = 1

    @property
    def tasks_per_node(self) -> int:
        return self.tasks or (self.gpus if self.gpus > 1 else 1)

    @property
    def world_size(self) -> int:
        return self.tasks_per_node * self.nodes

    @property
    def time_min(self) -> int:
        return parse_time(self.time)

    @property
    def mem_gb(self) -> float:
        return parse_mem_gb(self.mem)

    def describe(self) -> str:
        parts = [f"partition {self.partition or '(default)'}", f"gpus {self.gpus}", f"cpus {self.cpus}",
                 f"mem {self.mem}", f"time {self.time}"]
        if self.world_size > 1:
            parts.append(f"{self.world_size} processes per run ({self.nodes} node(s) x {self.tasks_per_node} tasks)")
        parts += [f"account {self.account}"] if self.account else []
        parts += [f"qos {self.qos}"] if self.qos else []
        return ", ".join(parts)


_RESOURCE_KEYS = {f for f in Resources.__dataclass_fields__}


def parse_time(text: str | int) -> int:
    """SLURM time ("MM", "HH:MM:SS", "D-HH:MM:SS", or minutes as an int) in whole minutes (rounded up)."""
    if isinstance(text, int):
        return text
    s = str(text).strip()
    try:
        days, _, rest = s.rpartition("-")
        parts = [int(p) for p in rest.split(":")]
        if len(parts) == 1:
            h, m, sec = 0, parts[0], 0
        elif len(parts) == 2:
            h, m, sec = parts[0], parts[1], 0
        elif len(parts) == 3:
            h, m, sec = parts
        else:
            raise ValueError
        minutes = (int(days) if days else 0) * 1440 + h * 60 + m + (1 if sec else 0)
    except ValueError:
        raise ProfileError(f"time '{text}' is not a SLURM time: write minutes, HH:MM:SS or D-HH:MM:SS") from None
    if minutes < 1:
        raise ProfileError(f"time '{text}' must be at least one minute")
    return minutes


def parse_mem_gb(text: str | int | float) -> float:
    if isinstance(text, (int, float)):
        return float(text)
    s = str(text).strip().upper().removesuffix("B")
    scale = {"K": 1 / 1024 ** 2, "M": 1 / 1024, "G": 1.0, "T": 1024.0}
    try:
        return float(s[:-1]) * scale[s[-1]] if s and s[-1] in scale else float(s) / 1024  # bare number: MB
    except ValueError:
        raise ProfileError(f"mem '{text}' is not a memory size: write e.g. 16G or 4000M") from None


def user_profiles_file() -> Path:
    """Where a user's own profile file is read from when it exists."""
    config = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(config) / "afd-bench" / "profiles.toml"


def profiles_file() -> Path:
    """The profile file in use: $BENCH_SLURM_PROFILES, else the user's (when present), else the repository's."""
    if os.environ.get("BENCH_SLURM_PROFILES"):
        return Path(os.environ["BENCH_SLURM_PROFILES"])
    user = user_profiles_file()
    return user if user.is_file() else PROFILES_FILE


def load_profiles(path: Path | None = None) -> dict[str, dict]:
    path = Path(path or profiles_file())
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ProfileError(f"SLURM profile file {path} not found: create it (see slurm/profiles.toml) "
                           "or set BENCH_SLURM_PROFILES") from None
    except tomllib.TOMLDecodeError as e:
        raise ProfileError(f"SLURM profile file {path} is not valid TOML: {e}") from None
    return data


def get_profile(name: str | None, path: Path | None = None) -> tuple[str, dict]:
    profiles = load_profiles(path)
    name = name or os.environ.get("BENCH_SLURM_PROFILE") or DEFAULT_PROFILE
    if name not in profiles or not isinstance(profiles[name], dict):
        raise ProfileError(f"unknown SLURM profile '{name}'; known: {', '.join(sorted(profiles))} "
                           f"(in {path or profiles_file()})")
    return name, profiles[name]


def check_name(key: str, value: object, where: str) -> None:
    """A partition, account or QOS name, or a one-line ProfileError."""
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise ProfileError(f"{where}: {key} {value!r} is not a SLURM {key} name (letters, digits, '_', '.', '-')")


def with_overrides(profile: dict, overrides: dict[str, str | None]) -> dict:
    """The profile with ``overrides`` (partition, account, qos; None: keep the profile's) set for every job: at the
    top and in place of the same keys of its ``[NAME.resources]`` patterns."""
    given = {k: v for k, v in overrides.items() if v is not None}
    for key, value in given.items():
        if key not in OVERRIDABLE:
            raise ProfileError(f"--{key} cannot override a profile; these can: {', '.join(OVERRIDABLE)}")
        check_name(key, value, f"--{key}")
    if not given:
        return profile
    patterns = {pattern: {k: v for k, v in entries.items() if k not in given}
                for pattern, entries in (profile.get("resources") or {}).items()}
    return {**profile, **given, **({"resources": patterns} if "resources" in profile else {})}


def _resources_from(entries: dict, base: Resources, where: str) -> Resources:
    unknown = set(entries) - _RESOURCE_KEYS - {"resources"}
    if unknown:
        raise ProfileError(f"profile {where}: unknown key(s) {', '.join(sorted(unknown))}; "
                           f"known: {', '.join(sorted(_RESOURCE_KEYS))}")
    values = {k: v for k, v in entries.items() if k in _RESOURCE_KEYS}
    res = replace(base, **values)
    for key in OVERRIDABLE:
        if key in values and values[key] is not None:
            check_name(key, values[key], f"profile {where}")
    if not isinstance(res.gpus, int) or res.gpus < 0:
        raise ProfileError(f"profile {where}: gpus must be an integer >= 0 (got {res.gpus!r})")
    if not isinstance(res.cpus, int) or res.cpus < 1:
        raise ProfileError(f"profile {where}: cpus must be an integer >= 1 (got {res.cpus!r})")
    if not isinstance(res.tasks, int) or res.tasks < 0:
        raise ProfileError(f"profile {where}: tasks must be an integer >= 0 (0: one per GPU) (got {res.tasks!r})")
    if not isinstance(res.nodes, int) or res.nodes < 1:
        raise ProfileError(f"profile {where}: nodes must be an integer >= 1 (got {res.nodes!r})")
    if not isinstance(res.array_parallelism, int) or isinstance(res.array_parallelism, bool) \
            or res.array_parallelism < 1:
        raise ProfileError(f"profile {where}: array_parallelism must be an integer >= 1 (got "
                           f"{res.array_parallelism!r})")
    if not isinstance(entries.get("resources", {}), dict) or not all(
            isinstance(v, dict) for v in entries.get("resources", {}).values()):
        raise ProfileError(f"profile {where}: resources must be a table of \"model/dataset\" patterns, each a table "
                           "of the keys above (see slurm/profiles.toml)")
    if res.gpus > 1 and res.tasks not in (0, res.gpus):
        raise ProfileError(f"profile {where}: {res.gpus} GPUs per node need one task each (tasks = {res.gpus} or 0)")
    res.time_min, res.mem_gb  # noqa: B018 - validate now, not at submission
    return res


def resources_for(profile_name: str, profile: dict, model: str, dataset: str) -> Resources:
    """The profile's defaults, then every ``[NAME.resources]`` pattern matching "model/dataset", in file order."""
    res = _resources_from(profile, Resources(), profile_name)
    key = f"{model}/{dataset}"
    for pattern, entries in (profile.get("resources") or {}).items():
        if fnmatch.fnmatchcase(key, pattern):
            res = _resources_from(entries, res, f"{profile_name}.resources.\"{pattern}\"")
    return res
