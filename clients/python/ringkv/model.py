"""Values the client returns: causal contexts and register reads."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

from .errors import SiblingsError

__all__ = ["Context", "Value"]


@dataclass(frozen=True)
class Context:
    """A causal context: opaque text the cluster hands out with reads and writes.

    Pass the context of a read to the write that replaces what the read saw;
    a write without one is "blind" and becomes a sibling of concurrent values.
    """

    text: str

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class Value:
    """A register read: its value(s) and the context that covers them."""

    #: The values: one, or several siblings written concurrently (server's order).
    values: List[bytes]
    #: The context of this read, for a write that supersedes every value here.
    context: Context = field(repr=False)

    @property
    def has_siblings(self) -> bool:
        """Whether concurrent writes left several values."""
        return len(self.values) > 1

    @property
    def value(self) -> bytes:
        """The single value.

        Raises :class:`ringkv.SiblingsError` when there are several: merge them and
        ``put(key, merged, context=read.context)``.
        """
        if len(self.values) != 1:
            raise SiblingsError(
                "siblings",
                f"the key has {len(self.values)} concurrent values: resolve them with "
                "put(key, value, context=read.context)",
                None,
                values=self.values,
            )
        return self.values[0]
