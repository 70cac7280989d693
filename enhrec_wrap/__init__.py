"""enhrec-wrap: records every exec, file open and connect of a login session with eBPF."""

__version__ = "0.1.0"
