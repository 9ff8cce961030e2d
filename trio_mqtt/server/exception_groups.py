"""One exception out of ``async with open_broker()``, not an exception group.

The broker's nurseries wrap whatever crosses them in ``BaseExceptionGroup`` (trio's
``strict_exception_groups``), so that a ``ValueError`` raised in the body of
``async with open_broker()`` would come out as ``ExceptionGroup([ExceptionGroup([...])])``
and a program's ``except KeyboardInterrupt:`` around ``trio.run`` would miss Ctrl-C.
``UnwrapGroups`` undoes that for the common case, as trio-websocket's context managers
do (``open_websocket``):

- one exception (``trio.Cancelled`` set aside): that exception, as itself;
- only ``trio.Cancelled``: the body's exception if it was one of them, else the first;
- several, one a ``KeyboardInterrupt``: a ``KeyboardInterrupt`` (the body's if it raised
  one) whose ``__cause__`` is a group of all of them, so that ``except
  KeyboardInterrupt`` still works;
- several others (the body's and a broker task's, or two broker tasks'): one flat
  ``BaseExceptionGroup`` of them all, the body's exception among them.
"""

from __future__ import annotations

from types import TracebackType
from typing import Literal, NoReturn

import attrs
import trio


def leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups, or ``[exc]``."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in leaves(inner)]
    return [exc]


def unwrapped(
    group: BaseExceptionGroup[BaseException], body: BaseException | None
) -> BaseException:
    """What to raise instead of *group*; *body* is what the ``async with`` body raised."""
    found = leaves(group)
    errors = [exc for exc in found if not isinstance(exc, trio.Cancelled)]
    if not errors:
        return body if body is not None and body in found else found[0]
    if len(errors) == 1:
        return errors[0]
    several = BaseExceptionGroup("several errors while running the broker", errors)
    interrupts = [exc for exc in errors if isinstance(exc, KeyboardInterrupt)]
    if interrupts:
        interrupt = body if isinstance(body, KeyboardInterrupt) else interrupts[0]
        chosen = KeyboardInterrupt(*interrupt.args)
        chosen.__cause__ = several
        return chosen
    return several


def _raise(exc: BaseException) -> NoReturn:
    """Raise *exc* without making the group being handled its ``__context__``.

    The group holds *exc* itself: as its context, the traceback would show it twice.
    """
    context = exc.__context__
    try:
        raise exc
    finally:
        exc.__context__ = context
        del exc, context


@attrs.define
class UnwrapGroups:
    """``with UnwrapGroups() as unwrap:`` turns a group leaving the block into
    ``unwrapped(group, unwrap.body)``; set ``body`` to what the user's code raised."""

    body: BaseException | None = None

    def __enter__(self) -> UnwrapGroups:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> Literal[False]:
        if not isinstance(exc, BaseExceptionGroup):
            return False
        _raise(unwrapped(exc, self.body))
