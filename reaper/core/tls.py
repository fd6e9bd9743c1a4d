"""When the reaper's connection counts as verified TLS, and when a server counts as local.

Pure rules shared by the settings (the default sslmode of secret and IAM logins), the DSN
defaults (`pg.conninfo`), the command line's warning and the doctor's connection check.

Only `verify-ca` and `verify-full` check the server's certificate. Under `require` any server on
the path can present a certificate of its own making and receive the password or IAM token;
under libpq's default `prefer` (and `allow`, `disable`) the connection may not use TLS at all.
That is a risk only off this machine: a server reached over a Unix socket, `localhost` or a
loopback address is local.
"""

from __future__ import annotations

import ipaddress

# The sslmodes that check the server's certificate against a CA bundle (verify-full also
# checks that the certificate names the host).
VERIFYING_SSLMODES = ("verify-ca", "verify-full")
# libpq's own default: TLS when the server offers it, plaintext otherwise.
LIBPQ_DEFAULT_SSLMODE = "prefer"
TLS_DOC = "docs/deploying.md#tls-verification"


def verifies_server(sslmode: str) -> bool:
    """True when `sslmode` checks the server's certificate."""
    return sslmode in VERIFYING_SSLMODES


def is_local_host(host: str) -> bool:
    """True for a server on this machine, as libpq names it in `host` or `hostaddr`.

    Local: no host at all (libpq's default Unix socket), a socket directory (`/...`) or abstract
    socket (`@...`), `localhost`, and any loopback address (127.0.0.0/8, ::1).
    """
    host = host.strip()
    if not host or host.startswith(("/", "@")):
        return True
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def all_hosts_local(hosts: str) -> bool:
    """True when every host of a libpq host list (comma-separated) is local."""
    return all(is_local_host(host) for host in hosts.split(","))
