"""webconf's shared core: the wire protocol, the sans-IO SIP library, Cobblestone and the
deployment plumbing that every wing (focus/, conferencing/, clients/) builds on.

The wings import this package and nothing of each other; see docs/architecture.md.
"""
