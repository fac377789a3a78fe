"""The core's per-agent memos: the Contact it hands out per conference URI and transport,
and the Digest algorithms it offers per User-Agent (both asked on every join)."""

from __future__ import annotations

from collections.abc import Sequence

from webconf.sip.message import SipURI

from .addresses import ContactSettings, make_contact

MEMO_MAX = 1024
"""Entries of each memo before it starts afresh."""
MEMO_MAX_VALUE = 512
"""Longer keys or values are not memoised (bounds the memos' memory)."""


class Memos:
    """Contacts and offered algorithms, memoised (bounded: see `MEMO_MAX`)."""

    def __init__(self, contact_settings: ContactSettings, algorithms: Sequence[str],
                 md5_only_user_agents: Sequence[str]) -> None:
        self._contact_settings = contact_settings
        self._algorithms = tuple(algorithms)
        self._md5_only = tuple(md5_only_user_agents)
        self._contacts: dict[tuple[str, str | None, str, tuple[tuple[str, str | None], ...]],
                             str] = {}
        """Contact value per (scheme, conference user, transport, gruu/opaque)."""
        self._agent_algorithms: dict[str, tuple[str, ...]] = {}
        """Algorithms offered per User-Agent value."""

    def contact(self, uri: SipURI, transport: str) -> str:
        """Our Contact for a dialog with the conference `uri` over `transport` (lower case)."""
        key = (uri.scheme, uri.user, transport, tuple(
            (name, value) for name, value in uri.params.items() if name in ("gruu", "opaque")))
        contact = self._contacts.get(key)
        if contact is None:
            contact = make_contact(self._contact_settings, uri, transport)
            if len(contact) <= MEMO_MAX_VALUE:
                if len(self._contacts) >= MEMO_MAX:
                    self._contacts.clear()
                self._contacts[key] = contact
        return contact

    def algorithms(self, user_agent: str) -> list[str]:
        """The Digest algorithms to offer an agent with this User-Agent."""
        offered = self._agent_algorithms.get(user_agent)
        if offered is None:
            ua = user_agent.lower()
            offered = ("MD5",) if any(
                agent.lower() in ua for agent in self._md5_only if agent
            ) else self._algorithms
            if len(user_agent) <= MEMO_MAX_VALUE:
                if len(self._agent_algorithms) >= MEMO_MAX:
                    self._agent_algorithms.clear()
                self._agent_algorithms[user_agent] = offered
        return list(offered)
