"""ispCP itself: password crypto, key files, encrypted columns, the update driver, health checks."""
