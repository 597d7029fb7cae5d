#!/bin/sh
# role network: DHCP on the first NIC, a release marker
set -e
mkdir -p /etc/network/interfaces.d
printf 'auto lo\niface lo inet loopback\n\nallow-hotplug ens3\niface ens3 inet dhcp\n' > /etc/network/interfaces.d/ens3
echo "baked for the webake benchmark" > /etc/bench-release
