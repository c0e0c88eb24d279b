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
set -eu

mode=${1:-build}
[ $# -gt 0 ] && shift
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"

say() { echo "setup: $*" >&2; }
die() { echo "setup: $*" >&2; exit 1; }

case $mode in
run|test|build) ;;
*) die "unknown mode '$mode'; expected run, test or build" ;;
esac

# ---- Debian packages
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
fi

# ---- build
jobs=$(nproc 2>/dev/null || echo 2)
if [ ! -x configure ] || [ configure.ac -nt configure ] || [ Makefile.am -nt configure ]; then
	say "autoreconf"
	autoreconf -fi >/dev/null 2>&1 || autoreconf -fi
fi
# Out-of-tree build in build/ (the source tree stays clean, and other build
# directories such as build-asan/ can sit beside it).
mkdir -p build
if [ ! -f build/Makefile ] || [ configure -nt build/config.status ]; then
	say "configure"
	(cd build && ../configure -q ${KVSCOPE_CONFIGURE_FLAGS:-})
fi
make -C build -s -j"$jobs" >/dev/null

# ---- default model
model=$(sh scripts/fetch-model.sh) || die "the default model could not be installed (see above)"

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
