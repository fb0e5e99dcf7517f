"""The lab: real Debian servers in namespaces of their own, for tests and rehearsals."""
