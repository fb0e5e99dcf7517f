"""The server's operating system: account files, file trees, ownership and copies."""
