"""MySQL/MariaDB: service control, SQL dumps and customer databases."""
