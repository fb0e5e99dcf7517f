"""ispcp-recovery: disaster recovery for ispCP Omega servers, as a parameterized runbook."""

__version__ = "0.1.0"
