# webake offline tools: the library every tool sources (POSIX sh). During an Ansible step the
# tools stand in for the image's own systemctl, hostnamectl, modprobe, iptables, mount, ...
# (a lower layer of the step's overlay that only the sandbox has: never in the image).
#
# A bake runs no init system and must not touch the build host. These tools answer roles
# written for live hosts from the image itself: unit files, the files a setting lives in, and
# the state recorded in $W_STATE (what a role started, loaded, mounted or added to a
# firewall). Every runtime action is also written to $W_EVENTS, which the sandbox prints at
# the end of the step (the bake log).

W_LIB=/usr/lib/webake-offline
W_REAL=$W_LIB/real
W_EVENTS=/run/webake/offline/events
W_STATE=/var/lib/webake/offline-state
W_HEADER='# webake offline state: what roles did to services, the kernel and the network during the bake (read by the inventory)'
W_UNIT_DIRS='/etc/systemd/system.control /run/systemd/transient /etc/systemd/system /run/systemd/system /usr/local/lib/systemd/system /usr/lib/systemd/system /lib/systemd/system'

# An event for the bake log.
w_event() {
	mkdir -p "${W_EVENTS%/*}" 2>/dev/null
	printf '%s\n' "$*" >>"$W_EVENTS" 2>/dev/null || :
}

w_die() {
	printf '%s\n' "$*" >&2
	exit 1
}

# The image's own tool NAME (a copy the sandbox took before shadowing it, else one a package
# installed during the step, which is not one of these tools), or nothing.
w_real() {
	if [ -x "$W_REAL/$1" ]; then
		printf '%s\n' "$W_REAL/$1"
		return 0
	fi
	for w_d in /usr/sbin /usr/bin /sbin /bin; do
		[ -x "$w_d/$1" ] || continue
		grep -q "$W_LIB/lib.sh" "$w_d/$1" 2>/dev/null && continue
		printf '%s\n' "$w_d/$1"
		return 0
	done
	return 1
}

# Every state line except those of KIND NAME.
w_without() {
	[ -f "$W_STATE" ] || return 0
	while IFS= read -r w_line; do
		case "$w_line" in
		"$1 $2" | "$1 $2 "*) ;;
		*) printf '%s\n' "$w_line" ;;
		esac
	done <"$W_STATE"
}

# Replace the state lines of KIND NAME by "KIND NAME VALUE..." (no VALUE: remove them).
w_record() {
	w_kind=$1
	w_name=$2
	shift 2
	mkdir -p "${W_STATE%/*}" || return 1
	{
		[ -s "$W_STATE" ] || printf '%s\n' "$W_HEADER"
		w_without "$w_kind" "$w_name"
		if [ $# -gt 0 ]; then
			printf '%s %s %s\n' "$w_kind" "$w_name" "$*"
		fi
	} >"$W_STATE.new" && mv -f "$W_STATE.new" "$W_STATE"
}

# The recorded value of KIND NAME (the rest of its line), or DEFAULT.
w_value() {
	w_found=$3
	if [ -f "$W_STATE" ]; then
		while IFS= read -r w_line; do
			case "$w_line" in
			"$1 $2 "*) w_found=${w_line#"$1 $2 "} ;;
			esac
		done <"$W_STATE"
	fi
	printf '%s\n' "$w_found"
}

# Every NAME recorded under KIND.
w_names() {
	[ -f "$W_STATE" ] || return 0
	while read -r w_k w_n w_rest; do
		if [ "$w_k" = "$1" ]; then
			printf '%s\n' "$w_n"
		fi
	done <"$W_STATE"
}

# A unit name with its type (`ssh` -> `ssh.service`).
w_unit_name() {
	case "$1" in
	*.service | *.socket | *.target | *.timer | *.path | *.mount | *.automount | *.swap | *.slice | *.scope | *.device)
		printf '%s\n' "$1"
		;;
	*) printf '%s.service\n' "$1" ;;
	esac
}

# The unit file of UNIT as systemd would pick it (a template for an instance), or nothing.
w_unit_file() {
	for w_d in $W_UNIT_DIRS; do
		if [ -e "$w_d/$1" ] || [ -L "$w_d/$1" ]; then
			printf '%s\n' "$w_d/$1"
			return 0
		fi
	done
	case "$1" in
	*@*.*)
		w_t="${1%%@*}@.${1##*.}"
		for w_d in $W_UNIT_DIRS; do
			if [ -e "$w_d/$w_t" ]; then
				printf '%s\n' "$w_d/$w_t"
				return 0
			fi
		done
		;;
	esac
	return 1
}

# not-found, masked or loaded.
w_load_state() {
	w_f=$(w_unit_file "$1") || {
		echo not-found
		return
	}
	if [ "$(readlink -f "$w_f")" = /dev/null ] || [ ! -s "$w_f" ]; then
		echo masked
	else
		echo loaded
	fi
}

# The name systemd knows a unit by: an alias resolves to the unit it points at.
w_unit_id() {
	w_f=$(w_unit_file "$1") || {
		printf '%s\n' "$1"
		return
	}
	if [ -L "$w_f" ]; then
		w_target=$(readlink -f "$w_f")
		case "$w_target" in
		/dev/null) ;;
		*.service | *.socket | *.target | *.timer | *.path | *.mount | *.automount | *.swap | *.slice)
			case "$1" in
			*@*) ;;
			*)
				printf '%s\n' "${w_target##*/}"
				return
				;;
			esac
			;;
		esac
	fi
	printf '%s\n' "$1"
}

# active or inactive, as recorded.
w_active_state() {
	w_value unit "$1" inactive
}
