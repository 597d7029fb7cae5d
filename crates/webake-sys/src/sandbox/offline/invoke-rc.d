#!/bin/sh
# webake offline invoke-rc.d: maintainer scripts and roles never start a service in a bake;
# the action is recorded by the offline systemctl instead.
. /usr/lib/webake-offline/lib.sh

query=no
skip_native=no
while [ $# -gt 0 ]; do
	case "$1" in
	--query) query=yes ;;
	--skip-systemd-native) skip_native=yes ;;
	--quiet | --force | --try-anyway | --disclose-deny | --no-fallback) ;;
	--*) ;;
	*) break ;;
	esac
	shift
done
[ $# -ge 2 ] || w_die "usage: invoke-rc.d [options] <basename> <action> [extra parameters]"
name=$1
action=$2
if [ "$query" = yes ]; then
	# "action denied by policy": nothing runs during a bake.
	exit 101
fi
if [ "$skip_native" = yes ] && w_unit_file "$name.service" >/dev/null; then
	exit 0
fi
case "$action" in
start | stop | restart | reload | force-reload | try-restart)
	exec systemctl "$action" "$name"
	;;
status) exec systemctl status "$name" ;;
*) exit 0 ;;
esac
