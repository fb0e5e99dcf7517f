"""Typed parameters: one spec per parameter, from which the runbook's parameters cell, the README's
tables and the validation all come (the way an Ansible module declares its `argument_spec`).

Raw values arrive from papermill, a YAML params file or `ispcp-recover run -p NAME VALUE`. `validate`
turns them into typed values, filling in the declared defaults, or raises an `InputError` that names
the parameter, what is wrong and the fix. The rules:

* **Booleans are strict.** `true`/`false`, or the strings `true`, `false`, `yes`, `no` (any case).
  Anything else (`1`, `"on"`, `""`, `"maybe"`) is refused, so that `apply: "false"` can never turn
  `apply` on.
* **Numbers**: an int or a float (a string of digits is read as one); never a boolean; within
  `minimum`/`maximum` when declared.
* **Lists**: a list, or (as Ansible does) a string, which is split at commas: `steps: inventory`
  means `[inventory]`. Each item is checked against the choices.
* **Mappings**: a mapping, never a list or a string. With `fields` its keys are known parameters
  themselves (validated the same way, defaults filled in); otherwise `keys` may restrict the names
  and `choices` the values.
* **Unknown names** are refused, naming the closest known one.
* **Secrets** (`secret=True`) are never parameters: they name entries of the secrets file, and a
  parameter of that name is refused (papermill copies every parameter into the report).

A step reads its parameters with `ctx.param(name)` (validated and defaulted by the session), or all
of them at once as a frozen dataclass with `ctx.step_params(PARAMETERS)`.
"""

from __future__ import annotations

import copy
import difflib
import functools
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, make_dataclass
from typing import Any

from ispcp_lib.core.errors import InputError

_TRUE, _FALSE = ("true", "yes"), ("false", "no")
_INT = re.compile(r"^[+-]?\d+$")


@dataclass(frozen=True, eq=False)
class Param:
    """One parameter: its name, type (bool, int, float, str, list or dict), default and description."""

    name: str
    type: type
    default: Any
    description: str
    _: KW_ONLY
    # Allowed values; for a list: of its items; for a mapping without fields: of its values.
    choices: tuple[Any, ...] = ()
    # What the choices are, when there are too many to list in the README ("step names").
    choices_name: str = ""
    # A secret: an entry of the secrets file, never a parameter.
    secret: bool = False
    # Whether null is allowed; None: exactly when the default is null.
    nullable: bool | None = None
    # The type of a list's items or of a mapping's values.
    item: type = str
    # A mapping with known keys, each itself a Param (see `Param.mapping`).
    fields: tuple[Param, ...] = ()
    # The allowed keys of a mapping without fields (empty: any).
    keys: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    # A regular expression a string must match in full.
    pattern: str | None = None
    # How a correct value is written, for the fix of an error message.
    example: str = ""

    @classmethod
    def mapping(cls, name: str, description: str, fields: Sequence[Param], example: str = "") -> Param:
        """A mapping of known keys; its default holds the fields' defaults that are not null."""
        default = {f.name: copy.deepcopy(f.default) for f in fields if f.default is not None}
        return cls(name, dict, default, description, fields=tuple(fields), example=example)

    @property
    def allows_none(self) -> bool:
        return self.default is None if self.nullable is None else self.nullable

    def initial(self) -> Any:
        """The default, as validated values (a fresh copy: defaults are never shared)."""
        return self.parse(copy.deepcopy(self.default))

    def parse(self, value: Any, label: str | None = None) -> Any:
        """The typed value, or an InputError naming the parameter (label: its dotted name)."""
        label = label or self.name
        if value is None:
            if self.allows_none:
                return None
            raise self._error(label, "is empty (null)", f"give {self.expects()}, or leave it out for {self._dflt()}")
        parser = {bool: self._bool, int: self._number, float: self._number, str: self._str, list: self._list}
        out = self._dict(value, label) if self.type is dict else parser[self.type](value, label)
        if self.choices and self.type not in (list, dict) and out not in self.choices:
            raise self._not_a_choice(label, out)
        return out

    # -- one parser per type -------------------------------------------------------------------------
    def _bool(self, value: Any, label: str) -> bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in (*_TRUE, *_FALSE):
            return value.strip().lower() in _TRUE
        raise self._error(
            label,
            f"is {shown(value)}, not true or false",
            f"write {label}: true or {label}: false (only true, false, yes and no are read as booleans, "
            "so that a typo never turns anything on)",
        )

    def _number(self, value: Any, label: str) -> int | float:
        number: int | float | None = None
        if isinstance(value, bool):
            number = None
        elif self.type is int and isinstance(value, int):
            number = value
        elif self.type is int and isinstance(value, str) and _INT.match(value.strip()):
            number = int(value.strip())
        elif self.type is float and isinstance(value, (int, float)):
            number = float(value)
        elif self.type is float and isinstance(value, str):
            try:
                number = float(value.strip())
            except ValueError:
                number = None
        if number is None or (isinstance(number, float) and not math.isfinite(number)):
            kind = "a whole number" if self.type is int else "a number"
            raise self._error(label, f"is {shown(value)}, not {kind}", f"give {self.expects()}")
        low, high = self.minimum, self.maximum
        if (low is not None and number < low) or (high is not None and number > high):
            raise self._error(label, f"is {number}, out of range", f"give {self.expects()}")
        return number

    def _str(self, value: Any, label: str) -> str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)  # a run id or a port-like name written without quotes
        if not isinstance(value, str):
            raise self._error(label, f"is {shown(value)}, not a string", f"give {self.expects()}")
        if self.pattern is not None and not re.fullmatch(self.pattern, value):
            raise self._error(label, f"is {value!r}, which is not allowed here", f"give {self.expects()}")
        return value

    def _list(self, value: Any, label: str) -> list[Any]:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, (list, tuple)):
            raise self._error(label, f"is {shown(value)}, not a list", f"give {self.expects()}")
        item = Param(self.name, self.item, None, "", choices=self.choices, nullable=False)
        return [item.parse(v, f"{label}[{i}]") for i, v in enumerate(value)]

    def _dict(self, value: Any, label: str) -> dict[str, Any]:
        if not isinstance(value, Mapping):
            raise self._error(label, f"is {shown(value)}, not a mapping", f"give {self.expects()}")
        if self.fields:
            return validate(self.fields, value, prefix=f"{label}.")
        out = {}
        item = Param(self.name, self.item, None, "", choices=self.choices, nullable=False)
        for key, v in value.items():
            key = str(key)
            if self.keys and key not in self.keys:
                raise unknown_name(f"{label}.{key}", self.keys)
            out[key] = item.parse(v, f"{label}.{key}")
        return out

    # -- messages ------------------------------------------------------------------------------------
    def expects(self) -> str:
        """What a correct value looks like, for the fix of an error message."""
        text = self.type_text()
        return f"{text}, e.g. {self.example}" if self.example else text

    def type_text(self) -> str:
        """The type in words, for the README and error messages."""
        choices = self.choices_name or ", ".join(str(c) for c in self.choices)
        if self.type is list:
            text = f"a list of {choices if self.choices else _PLURAL[self.item]}"
        elif self.type is dict and self.fields:
            text = f"a mapping with keys {', '.join(f.name for f in self.fields)}"
        elif self.type is dict:
            keys = self.choices_name if self.keys and self.choices_name else ", ".join(self.keys) or "names"
            values = f"one of {choices}" if self.choices else _PLURAL[self.item]
            text = f"a mapping of {keys} to {values}"
        elif self.choices:
            text = f"one of {choices}"
        else:
            text = _TYPE_WORDS[self.type]
        if self.type in (int, float) and (self.minimum is not None or self.maximum is not None):
            low = "" if self.minimum is None else f" ≥ {_num(self.minimum)}"
            high = "" if self.maximum is None else f" ≤ {_num(self.maximum)}"
            text += low + ("," if low and high else "") + high
        return text + (" (or null)" if self.allows_none else "")

    def _dflt(self) -> str:
        return f"the default {self.default!r}"

    def _not_a_choice(self, label: str, value: Any) -> InputError:
        close = difflib.get_close_matches(str(value), [str(c) for c in self.choices], n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]}?)" if close else ""
        return self._error(
            label,
            f"is {value!r}, not one of {', '.join(str(c) for c in self.choices)}{hint}",
            f"give {self.expects()}",
        )

    def _error(self, label: str, problem: str, fix: str) -> InputError:
        return InputError(f"parameter {label}", problem, fix)


_TYPE_WORDS = {bool: "true or false", int: "a whole number", float: "a number", str: "a string", list: "a list"}
_TYPE_WORDS[dict] = "a mapping"
_PLURAL = {bool: "true or false", int: "whole numbers", float: "numbers", str: "strings"}


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def shown(value: Any) -> str:
    """A raw value as an error message names it: its kind, and the value itself when it is short."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f"the string {value!r}" if len(value) <= 40 else "a long string"
    if isinstance(value, (int, float)):
        return f"the number {value}"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, Mapping):
        return "a mapping"
    return f"a {type(value).__name__}"


def unknown_name(label: str, known: Sequence[str]) -> InputError:
    """An unknown parameter (or key of a mapping), naming the closest known one."""
    prefix, _, name = label.rpartition(".")
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    if close:
        fix = f"did you mean {prefix + '.' if prefix else ''}{close[0]}?"
    elif prefix:
        fix = f"use one of {', '.join(known)}"
    else:
        fix = "check the spelling against the runbook's parameters cell or the README's parameter tables"
    return InputError(f"parameter {label}", "is not a known parameter", fix)


def validate(spec: Sequence[Param], raw: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Every parameter of spec as a typed value (defaults filled in); unknown names are refused."""
    known = {p.name: p for p in spec}
    for name in raw:
        if str(name) not in known:
            raise unknown_name(f"{prefix}{name}", list(known))
    return {p.name: p.parse(raw[p.name], f"{prefix}{p.name}") if p.name in raw else p.initial() for p in spec}


@functools.cache
def _settings_class(spec: tuple[Param, ...]) -> type:
    return make_dataclass("StepParameters", [(p.name, _annotation(p)) for p in spec], frozen=True)


def _annotation(p: Param) -> Any:
    kind: Any = {list: tuple[p.item, ...], dict: dict[str, Any]}.get(p.type, p.type)
    return kind | None if p.allows_none else kind


def settings(spec: Sequence[Param], values: Mapping[str, Any]) -> Any:
    """The parameters of spec as a frozen dataclass (lists become tuples), validated from values."""
    parsed = {p.name: p.parse(values[p.name]) if p.name in values else p.initial() for p in spec}
    frozen = {k: tuple(v) if isinstance(v, list) else v for k, v in parsed.items()}
    return _settings_class(tuple(spec))(**frozen)
