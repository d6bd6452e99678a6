"""squirrel-core's plugin hook: registers :class:`squirrel_store.MessagepackDriver` (driver name
``"squirrel_store"``) so a squirrel ``Catalog`` source can name it.

squirrel loads this module through the ``squirrel`` entry-point group (pluggy's
``load_setuptools_entrypoints``); it is never imported otherwise, so pluggy is only needed
where squirrel-core, which depends on it, is installed.
"""

from __future__ import annotations

from typing import List

import pluggy

from . import MessagepackDriver

_hookimpl = pluggy.HookimplMarker("squirrel")


@_hookimpl
def squirrel_drivers() -> List[type]:
    """The drivers this package adds to squirrel."""
    return [MessagepackDriver]
