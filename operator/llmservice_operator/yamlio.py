"""YAML output for people: no anchors/aliases, multi-line strings as literal blocks."""

from __future__ import annotations

from typing import Any

import yaml


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    if "\n" in data:
        # Literal blocks cannot hold trailing spaces; those strings keep the quoted style.
        text = data if all(not ln.endswith(" ") for ln in data.splitlines()) else None
        if text is not None:
            return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="|")
    return dumper.represent_scalar("tag:yaml.org,2002:str", data)


_Dumper.add_representer(str, _str)


def dump(obj: Any) -> str:
    return yaml.dump(obj, Dumper=_Dumper, sort_keys=False, width=120)


def dump_all(objs: list[Any]) -> str:
    return yaml.dump_all(objs, Dumper=_Dumper, sort_keys=False, width=120)
