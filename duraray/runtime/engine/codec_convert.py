"""Type-hint conversion: decoded payloads shaped to the types their reader names.

A payload decodes to plain values (a dataclass was written as a dict of its fields);
``convert`` rebuilds the hinted dataclasses, recursively through lists, tuples, dicts,
unions and ``Annotated``/``NewType`` hints. Converters are built once per hint and cached.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Callable
from typing import Any

from duraray._errors import SerializationError
from duraray.runtime.engine.codec_ext import _Conv


def _identity(value: Any) -> Any:
    # The converter of values that need none; codec_records uses it for items carried as is.
    return value


_CONVERTERS: dict[Any, _Conv] = {}


def convert(value: Any, type_hint: Any) -> Any:
    """Shape ``value`` to ``type_hint``: dicts become the hinted dataclasses, recursively.

    Anything that already matches, or that the hint does not describe, passes through
    unchanged; only a dict that cannot build its target dataclass raises SerializationError.
    """
    if type_hint is None or type_hint is Any:
        return value
    return _converter(type_hint)(value)


def _converter(hint: Any) -> _Conv:
    try:
        return _CONVERTERS[hint]
    except KeyError:
        conv = _CONVERTERS[hint] = _build_converter(hint)
        return conv
    except TypeError:  # an unhashable hint (e.g. Annotated with a list): build, don't cache
        return _build_converter(hint)


def _build_converter(hint: Any) -> _Conv:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Annotated:
        return _converter(args[0])
    if origin is typing.Union or origin is types.UnionType:
        return _union_converter([a for a in args if a is not type(None)])
    if isinstance(hint, typing.NewType):
        return _converter(hint.__supertype__)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        # Bound lazily: the class's field converters are built on first use, so a dataclass
        # that refers to itself (a tree node) does not recurse here.
        return functools.partial(_to_dataclass, hint)
    if hint is tuple or origin is tuple:
        if args and args[-1] is not Ellipsis:
            items = [_converter(a) for a in args]
            return lambda v: (
                tuple([c(x) for c, x in zip(items, v, strict=True)])
                if isinstance(v, (list, tuple)) and len(v) == len(items)
                else v
            )
        return _sequence_converter(tuple, _converter(args[0]) if args else _identity)
    if hint is list or origin is list:
        return _sequence_converter(list, _converter(args[0]) if args else _identity)
    if origin is dict and len(args) == 2:
        key, item = _converter(args[0]), _converter(args[1])
        if key is _identity and item is _identity:
            return _identity
        return lambda v: {key(k): item(x) for k, x in v.items()} if isinstance(v, dict) else v
    return _identity  # plain classes, Any, Literal, TypeVars, unresolved strings


def _sequence_converter(target: type, item: _Conv) -> _Conv:
    # A list or tuple is shaped to the hinted container; anything else passes through.
    def conv(value: Any) -> Any:
        if not isinstance(value, (list, tuple)) or (item is _identity and type(value) is target):
            return value
        return target([item(x) for x in value]) if target is tuple else [item(x) for x in value]

    return conv


def _union_converter(members: list[Any]) -> _Conv:
    if len(members) == 1:  # Optional[T]: every converter passes None through
        return _converter(members[0])
    dataclasses_ = [m for m in members if isinstance(m, type) and dataclasses.is_dataclass(m)]
    others = [(typing.get_origin(m) or m, _converter(m)) for m in members if m not in dataclasses_]
    others = [(cls, conv) for cls, conv in others if isinstance(cls, type)]
    as_dict = next((conv for cls, conv in others if issubclass(cls, dict)), None)

    def conv(value: Any) -> Any:
        if isinstance(value, dict) and dataclasses_:
            errors = []
            for cls in dataclasses_:  # the first dataclass the dict fits wins
                try:
                    return _to_dataclass(cls, value)
                except SerializationError as exc:
                    errors.append(str(exc))
            if as_dict is None:
                raise SerializationError("; ".join(errors))
            return as_dict(value)
        return next((c(value) for cls, c in others if isinstance(value, cls)), value)

    return conv


class _DataclassPlan:
    __slots__ = ("converters", "name", "not_init", "required")

    def __init__(self, cls: type) -> None:
        try:
            hints = typing.get_type_hints(cls)
        except Exception:  # unresolvable forward references: fields pass through as is
            hints = {}
        fields = dataclasses.fields(cls)
        self.name = cls.__qualname__
        self.converters = {f.name: _converter(hints.get(f.name, Any)) for f in fields if f.init}
        self.not_init = frozenset(f.name for f in fields if not f.init)
        self.required = frozenset(f.name for f in fields if f.init and _no_default(f))


def _no_default(f: dataclasses.Field[Any]) -> bool:
    # A field every instance must be given (record plans in codec_records use it too).
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


_dataclass_plan: Callable[[type], _DataclassPlan] = functools.cache(_DataclassPlan)


def _to_dataclass(cls: type, value: Any) -> Any:
    if not isinstance(value, dict):
        return value
    plan = _dataclass_plan(cls)
    kwargs, unknown = {}, []
    for key, item in value.items():
        conv = plan.converters.get(key)
        if conv is not None:
            kwargs[key] = conv(item)
        elif key not in plan.not_init:  # an init=False field was encoded too: skip it
            unknown.append(key)
    missing = sorted(plan.required - kwargs.keys())
    if unknown or missing:
        problems = [f"missing fields {missing}"] if missing else []
        problems += [f"unknown fields {unknown}"] if unknown else []
        raise SerializationError(
            f"cannot build a {plan.name} from a dict: {' and '.join(problems)}"
        )
    return cls(**kwargs)
