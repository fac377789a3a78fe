"""Tables of the metadata store.

Portable SQLAlchemy Core only (SQLite embedded, PostgreSQL for scale-out): no
dialect-specific types or SQL. Timestamps are UNIX seconds as floats, which compare the
same way everywhere. Nothing here holds a plaintext key, file name or content type: keys
are wrapped, names and types are sealed under a key derived from the item's DEK.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    UniqueConstraint,
    false,
    true,
)

metadata = MetaData()

tenants = Table(
    "tenants",
    metadata,
    Column("domain", String(255), primary_key=True),
    Column("current_key_version", Integer, nullable=False),
    Column("created_at", Float, nullable=False),
)

# An operator's per-tenant settings (`webconf tenant set`, conferencing/tenant_settings.py).
# A row of its own, not `tenants`'s: a tenant may be configured before its first join made
# its key. No row means every default.
tenant_settings = Table(
    "tenant_settings",
    metadata,
    Column("tenant", String(255), primary_key=True),
    # `GET .../document` (the decrypting download, docs/protocol.md §8.3) is served.
    Column("server_decrypt", Boolean, nullable=False, server_default=true()),
    # Shred a conference's content when it ends instead of after the grace period
    # (`wcs.content_grace_seconds`, docs/protocol.md §8.6).
    Column("shred_content_at_end", Boolean, nullable=False, server_default=false()),
    Column("updated_at", Float, nullable=False),
)

# One row per tenant key (TIK) version. A service-managed version is wrapped by a root key
# (`wrapped_key`, `root_key_version`); a version protected by the tenant's Customer Key has
# both NULL and its wraps, under each HSM key and the availability key, in
# `customer_wraps` (JSON, conferencing/crypto/customer_wrap.py; docs/protocol.md §8.4).
tenant_keys = Table(
    "tenant_keys",
    metadata,
    Column("tenant", String(255), ForeignKey("tenants.domain"), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("wrapped_key", LargeBinary, nullable=True),
    Column("root_key_version", Integer, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("customer_wraps", String, nullable=True),
)

# A tenant's Customer Key (docs/protocol.md §8.4): how every WCS node reaches its HSM (the
# module path and PIN file must be the same on every node; the PIN itself is never stored
# here) and the labels of its AES keys. `revoked_at`: when a node last found every customer
# key gone or disabled; while set, the availability key is refused for the tenant.
customer_keys = Table(
    "customer_keys",
    metadata,
    Column("tenant", String(255), ForeignKey("tenants.domain"), primary_key=True),
    Column("module", String(1024), nullable=False),
    Column("token", String(255), nullable=False),
    Column("pin_file", String(1024), nullable=False),
    Column("labels", String, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("revoked_at", Float, nullable=True),
)

# A conference is its organizer's (docs/protocol.md §2.1): the URI's id is unique only per
# (tenant, organizer), so no tenant or organizer can take or detect another's ids. `id` is
# the WCS's own random public id, which the cookie, the HTTP API and the item keys name.
conferences = Table(
    "conferences",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("tenant", String(255), ForeignKey("tenants.domain"), nullable=False),
    Column("organizer", String(512), nullable=False),
    Column("uri_id", String(64), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("ended_at", Float, nullable=True),
    # The seq of the conference's newest event (conference_events): bumped in the
    # transaction that appends one, so its row lock orders the log (docs/protocol.md §4.4).
    Column("last_seq", BigInteger, nullable=False, server_default="0"),
    # Attendees may download items (`/content`, `/document`); the organizer's
    # `PATCH /v1/conferences/{conf}` sets it (docs/protocol.md §8.3).
    Column("downloads", Boolean, nullable=False, server_default=true()),
    # No new joins but the organizer's (the organizer's `PATCH`, docs/protocol.md §9.2).
    Column("locked", Boolean, nullable=False, server_default=false()),
    UniqueConstraint("tenant", "organizer", "uri_id", name="uq_conferences_uri"),
)

participants = Table(
    "participants",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("conference_id", String(64), ForeignKey("conferences.id"), nullable=False),
    Column("tenant", String(255), nullable=False),
    Column("user", String(512), nullable=False),
    Column("role", String(16), nullable=False),
    Column("jti", String(64), nullable=False, unique=True),
    Column("joined_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("left_at", Float, nullable=True),
    # The focus process ("node/incarnation") holding the participant's SIP dialog: its
    # lease (focus_nodes) going stale revokes the participant. NULL: admitted by no focus.
    Column("focus_node", String(128), nullable=True),
    Index("ix_participants_conference", "conference_id"),
    Index("ix_participants_focus_node", "focus_node"),
)

items = Table(
    "items",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("conference_id", String(64), ForeignKey("conferences.id"), nullable=False),
    Column("tenant", String(255), nullable=False),
    Column("presenter_pid", String(64), nullable=False),
    Column("presenter", String(512), nullable=False),
    Column("blob_id", String(32), nullable=False),
    Column("wrapped_dek", LargeBinary, nullable=False),
    Column("tenant_key_version", Integer, nullable=False),
    Column("sealed_name", LargeBinary, nullable=False),
    Column("sealed_content_type", LargeBinary, nullable=False),
    Column("sealed_sha256", LargeBinary, nullable=True),
    # A PDF's page count, sealed like the name (docs/protocol.md §9.1); NULL: not counted.
    Column("sealed_pages", LargeBinary, nullable=True),
    Column("plaintext_size", BigInteger, nullable=False),
    Column("ciphertext_size", BigInteger, nullable=False),
    Column("created_at", Float, nullable=False),
    # The item this one was made from: a deck's PDF names its deck (docs/protocol.md §9.4).
    # No foreign key: deleting the deck deletes its PDF in a step of its own.
    Column("derived_from", String(64), nullable=True),
    UniqueConstraint("blob_id", name="uq_items_blob"),
    Index("ix_items_conference", "conference_id"),
    Index("ix_items_derived_from", "derived_from"),
)

revoked_cookies = Table(
    "revoked_cookies",
    metadata,
    Column("jti", String(64), primary_key=True),
    Column("revoked_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    # The periodic purge deletes by expiry (docs/protocol.md §3); created with the table.
    Index("ix_revoked_cookies_expires", "expires_at"),
)

# The per-conference event log (docs/protocol.md §4.4): one row per change clients hear of,
# written in the transaction of the change, numbered 1, 2, 3... per conference without gaps.
# `payload` is the event's JSON without its seq and never holds a key: an `item.shared` row
# names the item, and the delivering node unwraps its key from `items`.
conference_events = Table(
    "conference_events",
    metadata,
    Column("conference_id", String(64), ForeignKey("conferences.id"), primary_key=True),
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("type", String(32), nullable=False),
    # Only this participant's channels get the event (NULL: the whole conference).
    Column("participant_id", String(64), nullable=True),
    # The event ends its recipients' channels (revoked, conference.ended).
    Column("final", Boolean, nullable=False),
    Column("payload", String, nullable=False),
    Column("created_at", Float, nullable=False),
    Index("ix_conference_events_created", "created_at"),
)

# Focus leases (docs/protocol.md §7.4): each focus process heartbeats here through the
# internal API; a row older than focus.node_timeout_seconds revokes its participants.
focus_nodes = Table(
    "focus_nodes",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("started_at", Float, nullable=False),
    Column("heartbeat_at", Float, nullable=False),
)

# What each conference presents now (docs/protocol.md §9.1): one row at most; no row, or a
# row whose item is gone, means nothing is presented. `seq`: the seq of the
# `presentation.changed` event that set it (written in the same transaction).
presentations = Table(
    "presentations",
    metadata,
    Column("conference_id", String(64), ForeignKey("conferences.id"), primary_key=True),
    Column("item_id", String(64), nullable=False),
    Column("page", Integer, nullable=False),
    Column("presenter_pid", String(64), nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("updated_at", Float, nullable=False),
)
