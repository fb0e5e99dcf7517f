"""The two servers of the guide's situation: the old server that dies, and the fresh dummy install.

Each is its own ispcp-setup run (cached): its own DB keys, its own MySQL root, vftp, PMA and admin
passwords, its own address and host name.
"""

from __future__ import annotations

from ispcp_lib.lab.ispcp_server import ServerIdentity

DEAD = ServerIdentity(
    address="127.0.0.2",
    hostname="srv01.ispcp.test",
    sql_root_password="Root-pw-2010",
    vftp_password="Vftp-pw-2010",
    pma_password="Pma-pw-2010",
    admin_password="Admin-pw-2010",
    tag="srv01",
)
DUMMY = ServerIdentity(
    address="127.0.0.3",
    hostname="srv02.ispcp.test",
    sql_root_password="NewRoot-pw-2026",
    vftp_password="NewVftp-pw-2026",
    pma_password="NewPma-pw-2026",
    admin_password="NewAdmin-pw-2026",
    tag="srv02",
)
