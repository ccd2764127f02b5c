"""Reading the project's small YAML files (daemon config, fleet) with one set of rules and error messages.

Safe loading only (no arbitrary objects), a size limit, and a key given twice in one mapping is an error:
plain YAML loaders silently keep the last value, so two ``robot1:`` entries would lose a robot.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ..fileio import FileReadError, read_bounded
from .errors import ConfigError

# These files are a few KiB; anything bigger is a mistake (or an attack on whoever parses it).
MAX_YAML_FILE_SIZE = 1 << 20


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe loader that refuses a key given twice in one mapping."""


def _construct_unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            duplicate = key in seen
        except TypeError:  # an unhashable key: the ordinary constructor reports it
            break
        if duplicate:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


def read_yaml_file(path: Path, what: str, max_size: int = MAX_YAML_FILE_SIZE) -> Any:
    """The parsed content of ``path``; ConfigError naming ``what``, the file, the line and the problem."""
    try:
        raw = read_bounded(path, max_size, what)
    except FileReadError as exc:
        raise ConfigError(str(exc)) from None
    try:
        return yaml.load(raw, Loader=_UniqueKeyLoader)  # a SafeLoader subclass: no arbitrary objects
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None)
        detail = f": {problem}" if isinstance(problem, str) else ""
        raise ConfigError(f"{what} {path} is not valid YAML{where}{detail}") from None
    except RecursionError:
        raise ConfigError(f"{what} {path} is nested too deeply") from None
