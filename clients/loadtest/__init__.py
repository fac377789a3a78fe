"""`webconf loadtest`: simulated meetings against a real deployment, with a latency report.

Target: by default a fresh deployment in a temp dir (`init_deployment` on free loopback ports,
users added to the tenant directory, `webconf serve` as a subprocess, always stopped and
removed at the end); `--dir DIR` an existing deployment whose servers already run (its
load-test users are added for the run and removed after), with `--focus HOST:PORT` joined
through that address instead (a load balancer in front of DIR's nodes); or `--focus
HOST:PORT --ca FILE --password-env VAR --user-pattern 'user{i}@domain'` alone, a remote
focus whose users exist. HTTP and the data channels always go to the join answer's
`webconf_url` (`wcs.public_url`: the balancer's, in a scaled-out deployment).

Scenario, per conference m (tenant-wide conference id `LOAD<m>`): the organizer joins first
and creates the conference; the participants (spread over the conferences) join with at
most `--join-concurrency` INVITEs in flight and open their data channels; then every
organizer shares `--items` items of `--item-size` random bytes (generated in memory and
streamed with a precomputed SHA-256); each participant reacts to `item.shared` on its channel
by downloading, decrypting and verifying the item (nothing is written to disk); then everyone
leaves with BYE. Errors are counted by kind and never abort the run.

Measured: join latency (INVITE sent to 200 OK, Digest round trip included), joins/s,
share-to-all-decrypted latency per item (upload start to the moment the last participant of
its conference verified it) and per participant, download MB/s (verified plaintext bytes
over the wall time of the share phase), and the servers' peak RSS (VmHWM) when their
processes are visible in /proc. Exit status 0 only if no error occurred.
"""

from .command import add_loadtest_arguments, run_loadtest
from .errors import LoadtestError, error_kind
from .plan import ItemSource, Plan, parse_size

__all__ = ["ItemSource", "LoadtestError", "Plan", "add_loadtest_arguments", "error_kind",
           "parse_size", "run_loadtest"]
