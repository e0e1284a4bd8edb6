"""KEY=VALUE overrides of a dataclass config, parsed once for every flag that takes them.

The training `Config` (`--set KEY=VALUE`, `--config FILE.json`) and the test-time
`TestConfig` (`--test-set KEY=VALUE`) share this one parser: each value is read as its
field's declared type (`int`, `float`, `str`, `bool`, `tuple`; tuples as JSON lists such
as `[[0, 4], [10, 2]]`), and a value of the wrong type is refused with one line naming the
flag and the field. Ranges are checked afterwards by the config's own `validate()` (a
NaN, a negative size or an empty schedule), both at parse time and when a model file is
loaded (see config.py).

    kinds = field_kinds(Config)                  # {"code_res": "int", ...}
    over = parse_pairs(["code_res=16"], kinds, "--set")   # {"code_res": 16}
"""
from __future__ import annotations

from dataclasses import asdict, fields
import json
import os

MAX_CONFIG_BYTES = 1 << 20          # a config file is a few hundred bytes; refuse absurd ones
KINDS = ("int", "float", "str", "bool", "tuple")


def field_kinds(cls) -> dict:
    """{field name: its declared type's name} of a dataclass (annotations are strings)."""
    return {f.name: f.type if isinstance(f.type, str) else f.type.__name__ for f in fields(cls)}


def as_tuple(value):
    """A JSON list (of lists) as the nested tuples a frozen config stores."""
    return tuple(as_tuple(x) if isinstance(x, list) else x for x in value)


def coerce(kind: str, key: str, value, where: str):
    """`value` (a string from the command line, or a JSON value) as a field of type `kind`;
    ValueError naming `where` and `key` otherwise."""
    try:
        if kind == "str":
            if not isinstance(value, str):
                raise ValueError
            return value
        if isinstance(value, str) and kind in ("tuple", "bool"):
            value = json.loads(value)
        if kind == "bool":
            if value in (0, 1) and not isinstance(value, float):
                return bool(value)
            raise ValueError
        if isinstance(value, bool):
            raise ValueError
        if kind == "int":
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value, 10) if isinstance(value, str) else int(value)
        if kind == "float":
            return float(value)
        if kind == "tuple" and isinstance(value, (list, tuple)):
            return as_tuple(list(value))
        raise ValueError
    except (ValueError, TypeError, OverflowError):
        raise ValueError(f"{where}: {value!r} is not a valid {kind} for field {key}") from None


def parse_pair(text: str, kinds: dict, flag: str) -> tuple[str, object]:
    """'key=value' -> (key, typed value); '-' in the key reads as '_'."""
    key, sep, raw = text.partition("=")
    key = key.strip().replace("-", "_")
    if not sep:
        raise ValueError(f"{flag} {text!r}: expected KEY=VALUE")
    if key not in kinds:
        raise ValueError(f"{flag} {key}: unknown key; valid keys: {', '.join(kinds)}")
    return key, coerce(kinds[key], key, raw.strip(), f"{flag} {key}")


def parse_pairs(pairs, kinds: dict, flag: str) -> dict:
    """{key: typed value} of KEY=VALUE strings (later ones win)."""
    return dict(parse_pair(p, kinds, flag) for p in pairs or ())


def typed_dict(raw, kinds: dict, where: str) -> dict:
    """The typed fields of a JSON object (a config file, or one stored in a model file);
    unknown keys and wrong types refused, naming `where`."""
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: expected a JSON object of config fields, got "
                         f"{type(raw).__name__}")
    unknown = sorted(set(raw) - set(kinds))
    if unknown:
        raise ValueError(f"{where}: unknown config keys {unknown}; valid keys: {', '.join(kinds)}")
    return {k: coerce(kinds[k], k, v, where) for k, v in raw.items()}


class StoredConfig:
    """to_dict / from_dict for a frozen dataclass config stored in model files and hashed
    into model keys (the baselines' CodeNeRFConfig, DiffRFConfig): to_dict is asdict, and
    from_dict reads it back typed (`typed_dict`, tuples from JSON lists)."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, where: str | None = None):
        """A config from its to_dict() (a model file's); unknown keys and wrong types
        refused naming `where` (default: the class name)."""
        return cls(**typed_dict(d, field_kinds(cls), where or cls.__name__))


def read_json_file(path: str, flag: str, limit: int = MAX_CONFIG_BYTES):
    """The JSON value in a regular file of at most `limit` bytes (so `--config /dev/zero`
    is refused instead of read until memory runs out)."""
    try:
        if not os.path.isfile(path):
            raise ValueError("not a regular file" if os.path.exists(path) else "no such file")
        with open(path, "rb") as f:
            blob = f.read(limit + 1)
        if len(blob) > limit:
            raise ValueError(f"larger than {limit} bytes")
        return json.loads(blob.decode("utf-8"))
    except (OSError, ValueError) as e:        # JSONDecodeError and UnicodeDecodeError too
        raise ValueError(f"{flag} {path}: cannot read a JSON config ({e})") from None


def load_json_overrides(path: str, kinds: dict, flag: str = "--config") -> dict:
    """The typed overrides of a JSON config file ({"code_res": 16, ...})."""
    return typed_dict(read_json_file(path, flag), kinds, f"{flag} {path}")
