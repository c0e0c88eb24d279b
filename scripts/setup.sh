#!/bin/sh
# setup.sh: one command from a fresh Debian 12 machine to a running kvscope.
#
#   sh scripts/setup.sh run [KVSCOPE ARGS]   set up, then start kvscope on the default model
#   sh scripts/setup.sh test                 set up, then run the whole test suite
#   sh scripts/setup.sh build                set up only
#
# Set-up is idempotent and cheap when nothing changed: Debian packages are
# installed only when missing, configure runs only when its inputs changed,
# make rebuilds only what changed, and the model is fetched only when it is
# absent (its sha256 is pinned in scripts/model.sha256).
# Works as root or through sudo. CUDA is used when nvcc is installed.
# Each of the four steps says when it starts and how long it took
# ("setup: [2/4] configure ... 41 s"); make prints a line every 25 files
# it compiles, so a slow machine never sits on one silent line.
set -eu

mode=${1:-build}
[ $# -gt 0 ] && shift
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"

say() { echo "setup: $*" >&2; }
# step N WHAT: a step begins; done_step: it ended (its seconds)
step() { step_t0=$(date +%s); say "[$1/4] $2"; }
done_step() { say "      $1 ($(($(date +%s) - step_t0)) s)"; }
die() { echo "setup: $*" >&2; exit 1; }

case $mode in
run|test|build) ;;
*) die "unknown mode '$mode'; expected run, test or build" ;;
esac

# ---- Debian packages
step 1 "Debian packages"
pkgs="build-essential autoconf automake pkg-config libncurses-dev liblua5.4-dev
libsqlite3-dev libedit-dev python3 python3-pip tmux ncurses-term"
missing=""
for p in $pkgs; do
	st=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
	case $st in *" installed") ;; *) missing="$missing $p" ;; esac
done
if [ -n "$missing" ]; then
	if [ "$(id -u)" = 0 ]; then sudo=""; else
		command -v sudo >/dev/null 2>&1 || die "need root (or sudo) to install:$missing"
		sudo=sudo
	fi
	say "installing Debian packages:$missing"
	$sudo apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq $missing >/dev/null
	done_step "installed"
else
	done_step "all installed"
fi

# ---- build
jobs=$(nproc 2>/dev/null || echo 2)
step 2 "configure"
if [ ! -x configure ] || [ configure.ac -nt configure ] || [ Makefile.am -nt configure ]; then
	say "      autoreconf (about 20 s)"
	autoreconf -fi >/dev/null 2>&1 || autoreconf -fi
fi
# Out-of-tree build in build/ (the source tree stays clean, and other build
# directories such as build-asan/ can sit beside it).
mkdir -p build
if [ ! -f build/Makefile ] || [ configure -nt build/config.status ]; then
	say "      ./configure (about a minute on a busy machine)"
	(cd build && ../configure -q ${KVSCOPE_CONFIGURE_FLAGS:-})
	done_step "configured"
else
	done_step "up to date"
fi
step 3 "make -j$jobs"
# the build's "CC file.o" lines counted as they come, one progress line
# per 25; anything else it says (warnings, errors) passes through
rcf=build/.setup-make-rc
{ make -C build -j"$jobs" --no-print-directory; echo $? >"$rcf"; } 2>&1 | awk '
	/^ *(CC|CCLD|NVCC|GEN|AR|RANLIB) / { n++; if (n % 25 == 0) { printf "setup:       %d files built\n", n; fflush() }; next }
	/^Making (all|check) in / || /^make +all-am$/ || /Nothing to be done/ { next }
	{ print; fflush() }' >&2
[ "$(cat "$rcf")" = 0 ] || die "make failed (see above)"
done_step "built"

# ---- default model
step 4 "the default model"
model=$(sh scripts/fetch-model.sh) || die "the default model could not be installed (see above)"
done_step "$model"

case $mode in
build)
	say "ready: build/kvscope (model: $model)"
	;;
run)
	exec build/kvscope "$@"
	;;
test)
	exec sh scripts/check.sh
	;;
esac
