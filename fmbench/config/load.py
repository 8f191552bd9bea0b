"""Loading a benchmark config: YAML text, files and URLs, ``--set`` overrides, one-line errors.

Errors are reported as one line: ``FILE: field.path: message``.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from fmbench.config.models import BenchmarkConfig
from fmbench.errors import ConfigError


def _format_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def format_validation_error(source: str, exc: ValidationError) -> str:
    """Turn a pydantic error into one line per problem: ``SOURCE: field.path: message``."""
    lines = []
    for err in exc.errors(include_url=False):
        # Discriminated unions put the tag name in the location; it is noise for a user.
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p in _UNION_TAGS))
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"{source}: {_format_loc(loc)}: {msg}")
    return "; ".join(lines)


_UNION_TAGS = {"synthetic", "longbench", "jsonl", "simulated", "openai", "sagemaker", "bedrock"}


def parse_override(item: str) -> tuple[list[str], Any]:
    """Parse ``key.path=value`` (value as YAML) into a path and a value."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key.path=value")
    key, raw = item.split("=", 1)
    if not key.strip():
        raise ConfigError(f"--set {item!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {item!r}: value is not valid YAML ({exc.__class__.__name__})") from exc
    return key.strip().split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``--set`` overrides to raw config data; list items are addressed by index or by name.

    A key under a section that is missing or null creates the section as a mapping.
    """
    data = copy.deepcopy(data)
    for item in overrides:
        path, value = parse_override(item)
        node: Any = data
        i = 0
        while i < len(path):
            part = path[i]
            if isinstance(node, list):
                # A name may hold dots (llama3.1): the longest run of parts that names an item.
                names = {elem.get("name") for elem in node if isinstance(elem, dict)}
                j = next((j for j in range(len(path), i + 1, -1) if ".".join(path[i:j]) in names), i + 1)
                part, i = ".".join(path[i:j]), j - 1
            last = i == len(path) - 1
            if isinstance(node, list):
                idx = _list_index(node, part, item)
                if last:
                    node[idx] = value
                else:
                    node = node[idx]
            elif isinstance(node, dict):
                if last:
                    node[part] = value
                else:
                    # A missing or null section (``evaluation:`` left empty, or stored as null in a run's
                    # config.yml) is unset: setting a key under it makes it a mapping.
                    if node.get(part) is None:
                        node[part] = {}
                    node = node[part]
            else:
                raise ConfigError(f"--set {item!r}: {'.'.join(path[:i])} is not a mapping or list")
            i += 1
    return data


def _list_index(node: list[Any], part: str, item: str) -> int:
    if part.lstrip("-").isdigit():
        idx = int(part)
        if not -len(node) <= idx < len(node):
            raise ConfigError(f"--set {item!r}: index {idx} out of range (list has {len(node)} items)")
        return idx
    for idx, elem in enumerate(node):
        if isinstance(elem, dict) and elem.get("name") == part:
            return idx
    raise ConfigError(f"--set {item!r}: no list item named {part!r}")


def parse_config(data: Any, source: str = "<config>", base_dir: str | Path | None = None) -> BenchmarkConfig:
    """Validate raw config data (a mapping) into a BenchmarkConfig.

    Raises:
        ConfigError: with one line naming ``source`` and each invalid field.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the config must be a YAML mapping, got {type(data).__name__}")
    if base_dir is not None and "base_dir" not in data:
        data = {**data, "base_dir": str(base_dir)}
    try:
        return BenchmarkConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(source, exc)) from exc


#: The most values (mappings, lists and scalars, an alias counted as often as it is used) a config may
#: hold: nested aliases can make a few lines stand for a billion (validating them took minutes).
MAX_VALUES = 1_000_000


class _ConfigLoader(yaml.SafeLoader):
    """YAML as ``yaml.safe_load`` reads it, but a key given twice in one mapping is an error: the last
    one silently won (merge keys, ``<<: *defaults``, still fill in what a mapping does not say)."""

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, Any] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node.start_mark)
                except TypeError:  # an unhashable key: the constructor says so below
                    continue
                if first is not key_node.start_mark:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping", node.start_mark,
                        f"key {key!r} given twice (first on line {first.line + 1})", key_node.start_mark)
        return super().construct_mapping(node, deep)  # type: ignore[arg-type]


def _values(data: Any) -> int:
    """How many values ``data`` holds with every alias expanded (shared objects counted once per use)."""
    sizes: dict[int, int] = {}

    def size(x: Any) -> int:
        if not isinstance(x, (dict, list)):
            return 1
        if id(x) not in sizes:
            sizes[id(x)] = 1 + sum(size(v) for v in (x.values() if isinstance(x, dict) else x))
        return sizes[id(x)]

    return size(data)


def load_config(path: str | Path, overrides: list[str] | None = None) -> BenchmarkConfig:
    """Read, override and validate a YAML config file.

    Raises:
        ConfigError: the file is missing, not YAML, or invalid; the message names file and field.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text") from exc
    return load_config_text(text, source=str(path), base_dir=p.resolve().parent, overrides=overrides)


def load_config_text(
    text: str, source: str = "<config>", base_dir: str | Path | None = None, overrides: list[str] | None = None
) -> BenchmarkConfig:
    """Validate a config given as YAML text (used for inline configs from Prefect parameters)."""
    try:
        data = yaml.load(text, Loader=_ConfigLoader)  # (a SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or exc.__class__.__name__
        raise ConfigError(f"{source}:{where}: invalid YAML: {problem}") from exc
    if data is None:
        raise ConfigError(f"{source}: the config is empty")
    if _values(data) > MAX_VALUES:
        raise ConfigError(f"{source}: the config holds more than {MAX_VALUES:,} values once its YAML aliases are "
                          "expanded (aliases nested in aliases?)")
    if overrides:
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: the config must be a YAML mapping")
        data = apply_overrides(data, overrides)
    return parse_config(data, source=source, base_dir=base_dir)


def load_config_source(source: str, overrides: list[str] | None = None) -> BenchmarkConfig:
    """Load a config given as a file path, an s3:// (or other fsspec) URL, or inline YAML text."""
    from fmbench import storage

    text = source.strip()
    if "\n" in text or text.startswith("{") or re.match(r"^name\s*:", text):
        return load_config_text(source, source="<inline config>", overrides=overrides)
    if storage.is_remote(source):
        try:
            body = storage.read_text(source)
        except Exception as exc:
            raise ConfigError(f"{source}: cannot read config ({exc})") from exc
        return load_config_text(body, source=source, overrides=overrides)
    return load_config(source, overrides=overrides)


def narrow_config(cfg: BenchmarkConfig, experiments: list[str] | None = None,
                  concurrency_levels: list[int] | None = None,
                  requests_per_level: int | None = None) -> BenchmarkConfig:
    """Apply the common run-time overrides (the Prefect form's fields) and re-validate.

    Raises:
        ConfigError: an unknown experiment name or an invalid value, naming the parameter.
    """
    data = cfg.model_dump(mode="python")
    if experiments:
        known = [e["name"] for e in data["experiments"]]
        unknown = [e for e in experiments if e not in known]
        if unknown:
            raise ConfigError(f"experiments: unknown experiment(s) {unknown} (known: {known})")
        data["experiments"] = [e for e in data["experiments"] if e["name"] in experiments]
    for e in data["experiments"]:
        if concurrency_levels:
            e["concurrency_levels"] = list(concurrency_levels)
        if requests_per_level is not None:
            e["requests_per_level"] = requests_per_level
    return parse_config(data, source="parameters")


def resolve_path(cfg: BenchmarkConfig, path: str) -> Path:
    """Resolve a dataset path: absolute, else relative to the config's directory, else to the cwd."""
    p = Path(path).expanduser()
    if p.is_absolute():
        return p
    if cfg.base_dir:
        candidate = Path(cfg.base_dir) / p
        if candidate.exists() or not p.exists():
            return candidate
    return p.resolve()


def dump_config(cfg: BenchmarkConfig) -> str:
    """The resolved config as YAML (what a run stores as config.yml)."""
    data = cfg.model_dump(mode="json", exclude={"base_dir"})
    return yaml.safe_dump(data, sort_keys=False)
