"""Tests of a fleet of servers (targets discovered in RDS); their fixtures come from conftest.py."""
