"""Determinism warnings: clocks, random sources and id generators called by orchestration code.

Orchestration code must compute the same thing every time it runs, since a restarted hub
rebuilds an instance by replaying its history through the code. A call to ``time.time()``
or ``random`` inside an orchestrator works until that replay, which then fails with a
``NonDeterminismError`` that seems to blame a code change. This module reports such calls
the first time the code runs, as a ``NonDeterminismWarning`` pointing at the user's line.

How it sees the calls (``install`` does the first part once per process):

- the module functions of ``time``, ``random``, ``uuid``, ``os`` and ``secrets`` listed in
  ``NON_DETERMINISTIC`` are replaced in their modules' dicts by thin wrappers that read one
  thread-local attribute and call the original: nothing else changes for any caller;
- ``datetime.now()`` & co. are methods of a C type, which cannot be patched; while the
  orchestrator runs, its thread has a ``sys.setprofile`` hook that sees their calls
  (and, being there anyway, the originals of the wrapped functions, which a module that
  imported them by name before ``install`` ran still calls: ``from uuid import uuid4``).
  A thread that already has a profiler keeps it, without the hook.

The executor marks its thread with ``watched`` around each run of the orchestrator's code
when it is not replaying; a call counts only when the line making it is the user's: not in
duraray, the standard library, structlog or loguru, nor installed under site-packages,
unless the file defines an orchestration (a replay-safe logger timestamping a record, or a
log handler that Ray installed, is not the user's call). Each call site is reported once per process, whatever the
warning filters say, and the original function's value is always what the code gets.
"""

from __future__ import annotations

import datetime as _dt
import functools
import os
import random
import secrets
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from types import CodeType, FrameType
from typing import Any, TypeVar

import structlog

log = structlog.get_logger("duraray.determinism")

T = TypeVar("T")


class NonDeterminismWarning(UserWarning):
    """Orchestration code called something whose value differs between runs.

    Raised (as a warning) the first time an orchestrator calls a clock, a random source or
    an id generator (``time.time()``, ``datetime.now()``, ``random.random()``,
    ``uuid.uuid4()``, ``os.urandom()``, ``secrets``) from its own code, once per call site
    and process, with the file and line of the call. The value differs when the history is
    replayed (after a restart or an eviction), which then fails with
    ``NonDeterminismError``. Use ``ctx.current_utc_datetime`` and ``ctx.new_uuid()``, or
    do it in an activity. Turn it into an error with
    ``-W error::duraray.NonDeterminismWarning``; the hub option ``determinism_warnings``
    turns the check off.
    """


_TIME = "use ctx.current_utc_datetime"
_UUID = "use ctx.new_uuid()"
_ACTIVITY = "do it in an activity"

_RANDOM = (
    "random",
    "uniform",
    "triangular",
    "randint",
    "randrange",
    "randbytes",
    "getrandbits",
    "choice",
    "choices",
    "sample",
    "shuffle",
    "gauss",
    "normalvariate",
    "lognormvariate",
    "expovariate",
    "vonmisesvariate",
    "gammavariate",
    "betavariate",
    "paretovariate",
    "weibullvariate",
    "binomialvariate",
)
_SECRETS = ("token_bytes", "token_hex", "token_urlsafe", "choice", "randbelow", "randbits")
_CLOCKS = ("time", "time_ns", "monotonic", "monotonic_ns")

#: Every call reported, by qualified name, with its deterministic alternative: what the
#: warnings watch and what ``duraray check`` (``runtime/static_check.py``) looks for.
NON_DETERMINISTIC: dict[str, str] = {
    **{f"time.{name}": _TIME for name in _CLOCKS},
    "datetime.datetime.now": _TIME,
    "datetime.datetime.utcnow": _TIME,
    "datetime.datetime.today": _TIME,
    "datetime.date.today": _TIME,
    **{f"random.{name}": _ACTIVITY for name in _RANDOM},
    "uuid.uuid1": _UUID,
    "uuid.uuid4": _UUID,
    "os.urandom": _ACTIVITY,
    **{f"secrets.{name}": _ACTIVITY for name in _SECRETS},
}

#: The modules whose functions ``install`` wraps (datetime's are methods of a C type).
_WRAPPED_MODULES = (time, random, uuid, os, secrets)


def label(qualified: str) -> str:
    """How a report names a call: ``time.time()``, ``datetime.now()``, ``date.today()``."""
    return qualified.removeprefix("datetime.") + "()"


#: C methods the profile hook watches (datetime's, which cannot be wrapped): the id of
#: their owner (a class, module or ``Random`` that lives as long as the process) -> method
#: name -> qualified name. ``_index_originals`` adds the wrapped modules' own.
_C_OWNERS: dict[int, dict[str, str]] = {
    id(_dt.datetime): {
        "now": "datetime.datetime.now",
        "utcnow": "datetime.datetime.utcnow",
        "today": "datetime.datetime.today",
    },
    id(_dt.date): {"today": "datetime.date.today"},
}
#: Python functions the profile hook watches: code object -> [(the ``self`` the call
#: must have, or None for a plain function; qualified name)]. ``random.randint`` is a
#: method of a hidden ``Random`` instance whose code a user's own ``Random(seed)`` shares.
_PY_FUNCTIONS: dict[CodeType, list[tuple[Any, str]]] = {}


def _index_originals() -> None:
    """Fill the hook's tables with the original functions of the wrapped modules, so the
    hook also sees the ones a module imported by name (``from uuid import uuid4``) before
    ``install`` wrapped them."""
    for module in _WRAPPED_MODULES:
        prefix = module.__name__ + "."
        for qualified in NON_DETERMINISTIC:
            if not qualified.startswith(prefix):
                continue
            fn = getattr(module, qualified.removeprefix(prefix), None)
            fn = getattr(fn, "__wrapped__", fn) if getattr(fn, "__duraray_guard__", 0) else fn
            if fn is None:
                continue
            code = getattr(getattr(fn, "__func__", fn), "__code__", None)
            if code is not None:  # a Python function or method
                owner = getattr(fn, "__self__", None)
                _PY_FUNCTIONS.setdefault(code, []).append((owner, qualified))
            elif hasattr(fn, "__self__"):  # a C function: its module, or a Random
                _C_OWNERS.setdefault(id(fn.__self__), {})[fn.__name__] = qualified


#: Top-level packages whose calls are never the user's (besides the standard library
#: and whatever is installed under site-packages, such as Ray's log handler).
_LIBRARIES = frozenset({"duraray", "structlog", "loguru"})
_STDLIB = frozenset(sys.stdlib_module_names) - {"__main__"}
_INSTALLED = frozenset({"site-packages", "dist-packages"})


class _Watch(threading.local):
    # The orchestration whose code runs on this thread (None: no orchestrator code runs,
    # the only state the wrappers see on the fast path).
    orchestration: str | None = None
    # The watched C method running now (its own calls are not reported), and the
    # orchestration to watch again when it returns.
    inside: Any = None
    suspended: str | None = None


_watch = _Watch()
_lock = threading.Lock()
_installed = False
# Call sites reported: (file, line, qualified name). Ours, so it stays once under any filter.
_reported: set[tuple[str, int, str]] = set()
# Whether a code object belongs to a library (see _is_library), by code object.
_library_code: dict[CodeType, bool] = {}
# The files that define the watched orchestration functions: the user's, wherever they
# are installed.
_user_files: set[str] = set()
_index_originals()


def install() -> None:
    """Wrap the module functions of ``NON_DETERMINISTIC``, once per process (idempotent).

    Code that bound one of them by name before this ran (``from time import time``)
    keeps the original function, which only the profile hook sees.
    """
    global _installed
    if _installed:
        return
    with _lock:
        if _installed:
            return
        for module in _WRAPPED_MODULES:
            prefix = module.__name__ + "."
            for qualified in NON_DETERMINISTIC:
                if not qualified.startswith(prefix):
                    continue
                name = qualified.removeprefix(prefix)
                original = getattr(module, name, None)
                if original is None or getattr(original, "__duraray_guard__", False):
                    continue
                setattr(module, name, _wrap(original, qualified))
        _installed = True


def watch_code_of(fn: Callable[..., Any] | None) -> None:
    """Count the file that defines ``fn`` (an orchestration function) as the user's even
    if it is installed under site-packages."""
    filename = getattr(getattr(fn, "__code__", None), "co_filename", None)
    if filename is not None and filename not in _user_files:
        with _lock:
            _user_files.add(filename)
            _library_code.clear()


def _is_library(filename: str, module: str) -> bool:
    """True if a call made from this file is not the user's: duraray, the standard
    library, structlog, loguru, or anything installed under site-packages."""
    if filename in _user_files:
        return False
    top = module.partition(".")[0]
    return top in _LIBRARIES or top in _STDLIB or not _INSTALLED.isdisjoint(Path(filename).parts)


def _wrap(original: Callable[..., T], qualified: str) -> Callable[..., T]:
    @functools.wraps(original)
    def guarded(*args: Any, **kwargs: Any) -> T:
        if _watch.orchestration is not None:
            _report(sys._getframe(1), qualified)
        return original(*args, **kwargs)

    guarded.__duraray_guard__ = True  # type: ignore[attr-defined]  # marks a wrapper, for idempotence
    return guarded


def watched(orchestration: str, hook: bool, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` with this thread marked as running ``orchestration``'s code.

    The executor runs the orchestrator's code through this on its first run (never when
    replaying); what runs on other threads, or after this returns, is not watched.
    ``hook`` adds the profile hook that sees ``datetime.now()`` & co. for that time.
    """
    previous = _watch.orchestration
    _watch.orchestration = orchestration
    hooked = hook and previous is None and sys.getprofile() is None
    if hooked:
        sys.setprofile(_profile)
    try:
        return fn(*args)
    finally:
        if hooked:
            sys.setprofile(None)
            _watch.inside = None
        _watch.orchestration = previous


def _profile(
    frame: FrameType,
    event: str,
    arg: Any,
    # Bound once: the hook runs on every call and return of the orchestrator's episode.
    _functions: dict[CodeType, list[tuple[Any, str]]] = _PY_FUNCTIONS,
    _owners: dict[int, dict[str, str]] = _C_OWNERS,
    _watch: _Watch = _watch,
) -> None:
    if event == "call":
        entries = _functions.get(frame.f_code)
        if entries is not None and _watch.orchestration is not None:
            owner = frame.f_locals.get("self")
            for expected, qualified in entries:
                if expected is None or expected is owner:
                    # Called through the wrapper, the caller is the wrapper (a library).
                    if frame.f_back is not None:
                        _report(frame.f_back, qualified)
                    return
    elif event == "c_call":
        # By the owner's id: hashing it could raise (list.append's owner is a list).
        methods = _owners.get(id(getattr(arg, "__self__", None)))
        if methods is None:
            return
        found = methods.get(arg.__name__)
        orchestration = _watch.orchestration
        if found is not None and orchestration is not None:
            _report(frame, found)
            # What the method calls is not the user's: date.today() reads time.time()
            # through the time module (the wrapper) and must not count twice.
            _watch.inside, _watch.orchestration = arg, None
            _watch.suspended = orchestration
    elif (event == "c_return" or event == "c_exception") and arg is _watch.inside:
        _watch.orchestration, _watch.inside = _watch.suspended, None


def _report(frame: FrameType, qualified: str) -> None:
    """Warn about ``qualified`` called at ``frame``'s line, unless a library made the call
    or that call site was reported before."""
    code = frame.f_code
    library = _library_code.get(code)
    if library is None:
        module = str(frame.f_globals.get("__name__") or "")
        library = _library_code[code] = _is_library(code.co_filename, module)
    if library:
        return
    filename, lineno = code.co_filename, frame.f_lineno
    site = (filename, lineno, qualified)
    with _lock:
        if site in _reported:
            return
        _reported.add(site)
    orchestration = _watch.orchestration
    # What reporting calls (the logger's clock, the warning machinery) is not the user's.
    _watch.orchestration = None
    try:
        where = f"{Path(filename).name}:{lineno}"
        call, advice = label(qualified), NON_DETERMINISTIC[qualified]
        message = (
            f"orchestration {orchestration!r} calls {call} at {where}: orchestration "
            "code must be deterministic, and this gives another value when the history "
            f"is replayed (after a restart or an eviction); {advice}"
        )
        log.warning(
            "non-deterministic call in orchestration code",
            orchestration=orchestration,
            call=call,
            file=filename,
            line=lineno,
            advice=advice,
        )
        warnings.warn_explicit(
            message,
            NonDeterminismWarning,
            filename,
            lineno,
            module=str(frame.f_globals.get("__name__") or "<unknown>"),
            module_globals=frame.f_globals,
        )
    finally:
        _watch.orchestration = orchestration
