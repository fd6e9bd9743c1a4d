"""The fleet's fixtures, for the tests of this folder only: starting several servers is not
something every test run should pay for (see servers.py)."""

from tests.functional.fleet.servers import fleet, fleet_servers

__all__ = ["fleet", "fleet_servers"]
