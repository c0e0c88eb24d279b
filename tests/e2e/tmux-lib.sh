# tmux-lib.sh: watching a program inside tmux, for the workbench's e2e
# scripts (sourced after lib.sh, once T runs tmux on the script's own
# server and the program runs in window kv).
#
#   screen                  the window's text now
#   wait_for PAT [SECONDS]  poll until a line matches (grep -E; default
#                           WAIT_LIMIT, 60 s); fail and show the screen if not
#   wait_count PAT N [SEC]  poll until N lines match
#   wait_stable             poll until two captures a beat apart are equal
#   save NAME               with KVSCOPE_SAVE_SCREENS=DIR, the settled screen
#                           into DIR/NAME.txt (the doc/screens/ files)

screen() { T capture-pane -p -t kv; }

wait_for() {
	pat=$1 limit=${2:-${WAIT_LIMIT:-60}}
	end=$(($(date +%s) + limit))
	while [ "$(date +%s)" -le "$end" ]; do
		if screen | grep -Eq -- "$pat"; then
			return 0
		fi
		sleep 0.1
	done
	fail "screen never showed '$pat' within ${limit}s; it shows:"
	screen | sed 's/^/  | /' >&2
	return 1
}

wait_count() {
	pat=$1 want=$2 limit=${3:-${WAIT_LIMIT:-60}}
	end=$(($(date +%s) + limit))
	while [ "$(date +%s)" -le "$end" ]; do
		[ "$(screen | grep -Ec -- "$pat")" -ge "$want" ] && return 0
		sleep 0.2
	done
	fail "the screen never showed $want lines of '$pat' within ${limit}s; it shows:"
	screen | sed 's/^/  | /' >&2
	return 1
}

wait_stable() {
	prev="" n=0
	while [ $n -lt 100 ]; do
		cur=$(screen)
		[ "$cur" = "$prev" ] && return 0
		prev=$cur
		n=$((n + 1))
		sleep 0.2
	done
	fail "the screen never settled"
}

save() {
	if [ -n "${KVSCOPE_SAVE_SCREENS:-}" ]; then
		wait_stable
		screen >"$KVSCOPE_SAVE_SCREENS/$1.txt"
	fi
}
