"""The working zone file a DNS manager would have written on the add path, from the target's db_e.tpl."""

from __future__ import annotations

from ispcp_lib.facts.ispcp_conf import IspcpConf
from ispcp_lib.ispcp.bind_zones import Zone, zone_text

# Lines of ispCP 1.0.7's configs/debian/bind/parts/db_e.tpl.
TEMPLATE = """$ORIGIN {DMN_NAME}.
; dmn [{DMN_NAME}] timestamp entry BEGIN.
                {TIMESTAMP}     ; Serial
; dmn [{DMN_NAME}] timestamp entry END.
{DMN_NAME}.     IN              A               {DMN_IP}
{DMN_NAME}.     IN              TXT             "v=spf1 a mx ip4:{DMN_IP} ip4:{BASE_SERVER_IP} ~all"
ns1             IN              A               {BASE_SERVER_IP}
ns2             IN              A               {SECONDARY_DNS_IP}
; sub [{SUB_NAME}] entry BEGIN.
; sub [{SUB_NAME}] entry END.
"""


def test_the_four_values_are_filled_the_managers_own_tags_stay() -> None:
    conf = IspcpConf.parse("BASE_SERVER_IP = 192.0.2.20\nSECONDARY_DNS =\n")
    text = zone_text(TEMPLATE, Zone("shop.example", "192.0.2.21"), conf)
    assert "$ORIGIN shop.example." in text and "; dmn [shop.example] timestamp entry BEGIN." in text
    assert "shop.example.     IN              A               192.0.2.21" in text
    assert "ip4:192.0.2.21 ip4:192.0.2.20" in text
    assert "ns1             IN              A               192.0.2.20" in text
    assert "ns2             IN              A               192.0.2.21" in text  # no secondary: the zone's IP
    # getSerialNumber() and the subdomain manager fill these later, as on the add path
    assert "{TIMESTAMP}" in text and "; sub [{SUB_NAME}] entry BEGIN." in text


def test_a_secondary_dns_is_used_when_set() -> None:
    conf = IspcpConf.parse("BASE_SERVER_IP = 192.0.2.20\nSECONDARY_DNS = 198.51.100.7\n")
    assert "ns2             IN              A               198.51.100.7" in zone_text(
        TEMPLATE, Zone("a.example", "192.0.2.21"), conf
    )
