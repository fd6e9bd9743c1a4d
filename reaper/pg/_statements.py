"""SQL the reaper sends, as named constants. Every value travels as a query parameter.

Only pg_stat_activity columns and functions that exist in PostgreSQL 11 and later are used, so
no statement depends on the server version (we support 13 to 18); `reserved_connections` (16+)
is read with current_setting(name, missing_ok), which is NULL on older servers.
"""

from __future__ import annotations

from typing import Final, LiteralString

# Whether the reaper's role may signal the backend of a row `a` joined to its role `r`, mirroring
# pg_terminate_backend's own check: a superuser's backend only by a superuser; otherwise the
# role must have the privileges of the session's role or of pg_signal_backend. The `r.oid IS
# NULL` branch comes first because pg_has_role() raises on a role dropped since the session began.
_MAY_SIGNAL: Final = """
    CASE
        WHEN a.usesysid IS NULL OR r.oid IS NULL THEN false
        WHEN me.rolsuper THEN true
        WHEN r.rolsuper THEN false
        ELSE pg_has_role(a.usesysid, 'USAGE') OR pg_has_role('pg_signal_backend', 'USAGE')
    END
"""

# One statement for the whole snapshot, so sessions and limits describe the same instant. The
# connection limits repeat on every row: cheaper than a second round trip. `is_listening` looks
# at the last statement of idle sessions only (for active ones `query` is the running one).
SNAPSHOT: Final[LiteralString] = (
    """
WITH me AS (
    SELECT rolsuper FROM pg_roles WHERE rolname = current_user
)
SELECT a.pid,
       a.backend_start,
       a.backend_type,
       a.usename::text AS "user",
       a.datname::text AS database,
       coalesce(a.application_name, '') AS application_name,
       host(a.client_addr) AS client_addr,
       a.state,
       a.state_change,
       a.query_start,
       coalesce(r.rolsuper, false) AS is_superuser,
       coalesce(starts_with(a.state, 'idle') AND a.query ~* '^\\s*listen\\M', false)
           AS is_listening,
"""
    + _MAY_SIGNAL
    + """ AS may_signal,
       statement_timestamp() AS taken_at,
       pg_backend_pid() AS own_pid,
       current_user::text AS role,
       me.rolsuper AS role_is_superuser,
       current_setting('server_version_num')::int AS server_version_num,
       current_setting('max_connections')::int AS max_connections,
       current_setting('superuser_reserved_connections')::int AS superuser_reserved_connections,
       coalesce(current_setting('reserved_connections', true)::int, 0) AS reserved_connections
FROM pg_stat_activity AS a
CROSS JOIN me
LEFT JOIN pg_roles AS r ON r.oid = a.usesysid
ORDER BY a.pid
"""
)

# Re-verify and signal in one statement. Each planned session is matched to a fresh
# pg_stat_activity row (autocommit: a new transaction, so a new activity snapshot) and signalled
# only if it is the same backend (pid and backend_start: pids are reused), still in the same
# state since the same instant (state and state_change: it ran nothing since the plan), still a
# client backend other than ours, and still signallable. Refused sessions are never passed to
# pg_terminate_backend, because one refusal would abort every other termination in the statement.
TERMINATE: Final[LiteralString] = (
    """
WITH me AS (
    SELECT rolsuper FROM pg_roles WHERE rolname = current_user
),
-- Arrays travel in binary format: quoting thousands of timestamps as text costs more than the plan.
planned AS (
    SELECT *
    FROM unnest(%(pid)b::int[], %(backend_start)b::timestamptz[],
                %(state)b::text[], %(state_change)b::timestamptz[])
         AS p(pid, backend_start, state, state_change)
),
live AS (
    SELECT p.pid,
           a.pid IS NOT NULL AND a.backend_start = p.backend_start AS same_backend,
           a.state = p.state AND a.state_change = p.state_change AS unchanged,
           a.backend_type = 'client backend' AND a.pid <> pg_backend_pid() AS other_client,
"""
    + _MAY_SIGNAL
    + """ AS may_signal
    FROM planned AS p
    CROSS JOIN me
    LEFT JOIN pg_stat_activity AS a ON a.pid = p.pid
    LEFT JOIN pg_roles AS r ON r.oid = a.usesysid
)
SELECT pid,
       coalesce(same_backend, false) AS same_backend,
       coalesce(unchanged, false) AS unchanged,
       coalesce(may_signal, false) AS may_signal,
       CASE WHEN same_backend AND unchanged AND other_client AND may_signal
            THEN pg_terminate_backend(pid)
            ELSE false
       END AS signalled
FROM live
"""
)

# The fallback when TERMINATE was refused as a whole (a privilege changed between the check and
# the signal): one session per statement, so each refusal stays its own.
TERMINATE_ONE: Final[LiteralString] = """
SELECT pg_terminate_backend(a.pid)
FROM pg_stat_activity AS a
WHERE a.pid = %(pid)s
  AND a.pid <> pg_backend_pid()
  AND a.backend_type = 'client backend'
  AND a.backend_start = %(backend_start)s
  AND a.state = %(state)s
  AND a.state_change = %(state_change)s
"""

# The terminate statement's own limit, set on the reaper's autocommit connection just before it
# (the value is a validated number of milliseconds, passed as text as set_config wants it).
SET_STATEMENT_TIMEOUT: Final[LiteralString] = (
    "SELECT set_config('statement_timeout', %(milliseconds)s, false)"
)

# A session-level advisory lock (core.pass_lock.PASS_LOCK_KEY): two reapers on one database
# never act at once, and the lock is released by the server if the reaper's connection dies.
# Released when the connection closes, at the end of the pass: there is no unlock statement.
TRY_PASS_LOCK: Final[LiteralString] = "SELECT pg_try_advisory_lock(%(key)s)"
# Who holds it, beside the role asking (session_user: the login, as pg_stat_activity's usename
# shows every session's): pg_locks shows a bigint advisory key as its high and low 32 bits
# (classid and objid) with objsubid 1, on this database only. One row without a holder (`held`
# NULL) when the lock is free; several when it is held in shared mode. A prepared transaction
# holds it with a NULL pid.
PASS_LOCK_HOLDERS: Final[LiteralString] = """
SELECT session_user::text AS own_role,
       h.held,
       h.pid,
       h.role,
       h.application_name,
       h.listed
FROM (SELECT 1) AS one
LEFT JOIN (
    SELECT true AS held,
           l.pid,
           a.usename::text AS role,
           a.application_name,
           a.pid IS NOT NULL AS listed
    FROM pg_locks AS l
    LEFT JOIN pg_stat_activity AS a ON a.pid = l.pid
    WHERE l.locktype = 'advisory'
      AND l.granted
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND l.classid = (%(key)s::bigint >> 32)::oid
      AND l.objid = (%(key)s::bigint & 4294967295)::oid
      AND l.objsubid = 1
) AS h ON true
ORDER BY h.pid
"""
# What `reaper doctor` needs to know about the reaper's role and the server, in one statement.
# pg_has_role() on an OID from to_regrole() is NULL where the role does not exist
# (pg_use_reserved_connections before 16, rds_superuser outside RDS) instead of an error.
# A role-level statement_timeout set for this database wins over one set for all databases.
# Application roles are the other login roles that are neither superusers nor administrators
# on RDS (rds_superuser members have RDS's own reserve) nor managed by the provider.
SETUP_FACTS: Final[LiteralString] = """
WITH me AS (
    SELECT oid, rolsuper, rolconnlimit FROM pg_roles WHERE rolname = current_user
)
SELECT current_user::text AS role,
       current_setting('server_version_num')::int AS server_version_num,
       me.rolsuper AS is_superuser,
       coalesce(pg_has_role(to_regrole('rds_superuser'), 'MEMBER'), false) AS is_rds_superuser,
       me.rolsuper OR pg_has_role('pg_read_all_stats', 'USAGE') AS sees_all_sessions,
       me.rolsuper OR pg_has_role('pg_signal_backend', 'USAGE') AS may_signal_others,
       pg_has_role(to_regrole('pg_use_reserved_connections'), 'USAGE')
           AS may_use_reserved_connections,
       current_setting('max_connections')::int AS max_connections,
       current_setting('superuser_reserved_connections')::int AS superuser_reserved_connections,
       coalesce(current_setting('reserved_connections', true)::int, 0) AS reserved_connections,
       me.rolconnlimit AS role_connection_limit,
       (SELECT substr(setting, length('statement_timeout=') + 1)
        FROM pg_db_role_setting AS s
        CROSS JOIN unnest(s.setconfig) AS setting
        WHERE s.setrole = me.oid
          AND s.setdatabase IN (0, (SELECT oid FROM pg_database
                                    WHERE datname = current_database()))
          AND starts_with(setting, 'statement_timeout=')
        ORDER BY s.setdatabase DESC
        LIMIT 1) AS role_statement_timeout,
       (SELECT coalesce(array_agg(rolname::text ORDER BY rolname), '{}')
        FROM pg_roles
        WHERE rolcanlogin AND NOT rolsuper AND rolconnlimit < 0
          AND oid <> me.oid AND rolname !~ %(managed_roles)s
          AND NOT coalesce(pg_has_role(oid, to_regrole('rds_superuser'), 'MEMBER'), false))
           AS uncapped_login_roles,
       (SELECT coalesce(sum(rolconnlimit), 0)::int
        FROM pg_roles
        WHERE rolcanlogin AND NOT rolsuper AND rolconnlimit >= 0
          AND oid <> me.oid AND rolname !~ %(managed_roles)s
          AND NOT coalesce(pg_has_role(oid, to_regrole('rds_superuser'), 'MEMBER'), false))
           AS capped_login_connections,
       (SELECT CASE WHEN ssl THEN version END FROM pg_stat_ssl WHERE pid = pg_backend_pid())
           AS tls_version
FROM me
"""

# Login roles the service provider manages (RDS, Aurora) rather than the customer's apps.
MANAGED_ROLES_PATTERN: Final = "^(pg_|rds)"
