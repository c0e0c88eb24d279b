#!/bin/sh
# layers.sh: the include graph of src/ and gpu/ against the layer table
# below (doc/HACKING.md, "Layers and the include rule", explains it).
#
# Every `#include "..."` in src/ and gpu/ is resolved the way the compiler
# does (the including file's folder, then src/, then the top) and must go
# from a layer to itself, to a lower layer, or along one of the PEERS
# edges; a file in no layer of the table is an error too. An internal
# header (NAME-int.h) may only be included from its own folder (tests may
# include anything; they are not checked). An optional library's headers
# (Lua, SQLite, curses, libedit, CUDA) may only be included by the layers
# that wrap it (LIBRARIES), so that every other layer builds without it. Each broken rule is one line naming the file,
# the line and the edge; the exit status is 1 when there is one. Last, no
# hand-written source in src/ or gpu/ may exceed 1,000 lines.
#
# Before the checked tree, the checker runs on a small tree of its own
# with one broken rule of each kind and must report exactly those, so the
# test fails if the checker goes blind.
#
# Runs from make check, or by hand from anywhere: sh tests/e2e/layers.sh
set -u
top=${KVSCOPE_SRCDIR:-$(cd "$(dirname "$0")/../.." && pwd)}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# ---------------------------------------------------------------- tables
# The layers, lowest first: rank, name, where. A folder ends with "/"; a
# file named on its own belongs to that layer wherever its folder puts it.
# A file may include its own layer and any layer of lower rank. engine and
# gpu share a rank: they are peers, joined only by the PEERS edges.
LAYERS='
0 base   src/base/
1 model  src/model/
2 engine src/engine/
2 gpu    gpu/
3 kv     src/kv/
4 store  src/store/
5 app    src/app/
6 script src/script/
7 tui    src/tui/
8 cli    src/cli/
'

# Edges between peers: from layer, the one header it may include. The
# engine calls its backends through gpu/gpu.h; a backend implements the
# engine's types from engine/engine.h.
PEERS='
engine gpu/gpu.h
gpu    src/engine/engine.h
'

# Optional libraries: a header (an extended regular expression over the
# <...> name) and the layers allowed to include it.
LIBRARIES='
^(lua|lauxlib|lualib)\.h$                 script
^sqlite3\.h$                              store
^(n?curses|ncursesw/.*|term|panel)\.h$    tui
^(histedit|editline/.*|readline/.*)\.h$   cli tui
^(cuda|cuda_.*|cublas.*|nvml)\.h$         gpu
'

# Headers the build writes (not in the source tree): allowed anywhere.
GENERATED='
config.h
src/store/migrations.inc
'

# Known violations, one "FILE HEADER" per line, reported but not failed
# (none today; an entry needs a comment saying what removes it).
KNOWN='
'

# ---------------------------------------------------------------- checker
# check_tree DIR: print every broken rule in DIR's src/ and gpu/ as
# "FILE:LINE: message" (known violations as "known: ..."); the file list
# and includes come from find and the awk program below.
check_tree() {
	(
		cd "$1" || exit 2
		find src gpu -type f \( -name '*.c' -o -name '*.h' -o -name '*.cu' -o -name '*.inc' \) \
			2>/dev/null | LC_ALL=C sort >"$tmp/files"
		[ -s "$tmp/files" ] || { echo "layers.sh: no sources under $1" >&2; exit 2; }
		# (the tables go through the environment: -v would expand the
		# backslashes in LIBRARIES' expressions)
		# shellcheck disable=SC2046
		LAYERS=$LAYERS PEERS=$PEERS LIBRARIES=$LIBRARIES GENERATED=$GENERATED KNOWN=$KNOWN \
			awk -v list="$tmp/files" '
		function trim(s) { gsub(/^[ \t]+|[ \t]+$/, "", s); return s }
		# The layer of path p: its own line first, else the longest folder.
		function layer_of(p,   best, n, d) {
			if (p in file_layer)
				return file_layer[p]
			best = ""; n = 0
			for (d in dir_layer)
				if (substr(p, 1, length(d)) == d && length(d) > n) {
					best = dir_layer[d]; n = length(d)
				}
			return best
		}
		# "a/b/../c" -> "a/c", "./x" -> "x".
		function norm(p,   parts, n, i, out, k) {
			n = split(p, parts, "/"); k = 0
			for (i = 1; i <= n; i++) {
				if (parts[i] == "." || parts[i] == "")
					continue
				if (parts[i] == ".." && k > 0) { k--; continue }
				out[++k] = parts[i]
			}
			p = ""
			for (i = 1; i <= k; i++)
				p = p (i > 1 ? "/" : "") out[i]
			return p
		}
		function dirname(p) { sub(/\/[^\/]*$/, "", p); return p }
		function report(where, msg) {
			print where ": " msg
		}
		BEGIN {
			layers = ENVIRON["LAYERS"]; peers = ENVIRON["PEERS"]; libs = ENVIRON["LIBRARIES"]
			gen = ENVIRON["GENERATED"]; known = ENVIRON["KNOWN"]
			n = split(layers, L, "\n")
			for (i = 1; i <= n; i++) {
				if (split(trim(L[i]), f, /[ \t]+/) < 3) continue
				rank[f[2]] = f[1] + 0
				if (f[3] ~ /\/$/) dir_layer[f[3]] = f[2]; else file_layer[f[3]] = f[2]
			}
			n = split(peers, L, "\n")
			for (i = 1; i <= n; i++)
				if (split(trim(L[i]), f, /[ \t]+/) == 2) peer[f[1] " " f[2]] = 1
			n = split(libs, L, "\n")
			nlib = 0
			for (i = 1; i <= n; i++) {
				m = split(trim(L[i]), f, /[ \t]+/)
				if (m < 2) continue
				nlib++; lib_re[nlib] = f[1]; lib_who[nlib] = " "
				for (k = 2; k <= m; k++) lib_who[nlib] = lib_who[nlib] f[k] " "
			}
			n = split(gen, L, "\n")
			for (i = 1; i <= n; i++) if (trim(L[i]) != "") generated[trim(L[i])] = 1
			n = split(known, L, "\n")
			for (i = 1; i <= n; i++)
				if (split(trim(L[i]), f, /[ \t]+/) == 2) known_edge[f[1] " " f[2]] = 1
			while ((getline p < list) > 0) exists[p] = 1
			close(list)
		}
		FNR == 1 {
			from = FILENAME; from_layer = layer_of(from); nfiles++
			if (from_layer == "") { report(from, "in no layer of the table (add its folder to LAYERS)"); bad++ }
		}
		/^[ \t]*#[ \t]*include[ \t]*"/ {
			inc = $0; sub(/^[^"]*"/, "", inc); sub(/".*$/, "", inc)
			where = from ":" FNR
			nincludes++
			# resolve as the compiler does: own folder, -I src, -I top
			to = ""
			if (norm(dirname(from) "/" inc) in exists) to = norm(dirname(from) "/" inc)
			else if (norm("src/" inc) in exists) to = norm("src/" inc)
			else if (norm(inc) in exists) to = norm(inc)
			else if (inc in generated) next
			else { report(where, "#include \"" inc "\" names no file in src/ or gpu/"); bad++; next }
			to_layer = layer_of(to)
			if (to ~ /-int\.h$/ && dirname(to) != dirname(from)) {
				report(where, "#include \"" inc "\": " to " is internal to " dirname(to) "/ (included from " dirname(from) "/)")
				bad++
			}
			if (from_layer == "" || to_layer == "" || from_layer == to_layer) next
			if (rank[to_layer] < rank[from_layer]) next
			if (rank[to_layer] == rank[from_layer] && ((from_layer " " inc) in peer || (from_layer " " to) in peer)) next
			msg = from_layer " -> " to_layer ": #include \"" inc "\" (" from_layer " may include only lower layers" \
			      (rank[to_layer] == rank[from_layer] ? " and its peer edges" : "") ")"
			if ((from " " to) in known_edge) { report("known: " where, msg); seen_known[from " " to] = 1; next }
			report(where, msg); bad++
		}
		/^[ \t]*#[ \t]*include[ \t]*</ {
			inc = $0; sub(/^[^<]*</, "", inc); sub(/>.*$/, "", inc)
			for (i = 1; i <= nlib; i++)
				if (inc ~ lib_re[i] && index(lib_who[i], " " from_layer " ") == 0) {
					report(from ":" FNR, "#include <" inc ">: an optional library, only for" lib_who[i] "(" from_layer " builds without it)")
					bad++
				}
		}
		END {
			for (e in known_edge)
				if (!(e in seen_known)) print "stale: the known violation \"" e "\" is gone: delete its line in KNOWN"
			printf "checked: %d files, %d includes\n", nfiles, nincludes
			exit (bad > 0 ? 1 : 0)
		}
		' $(cat "$tmp/files")
	)
}

# ------------------------------------------------------------- self-test
# A tree with one broken rule of each kind (and one allowed edge of each
# kind); the checker must name exactly the broken ones.
mk() { mkdir -p "$tmp/self/$(dirname "$1")" && printf '%s\n' "$2" >"$tmp/self/$1"; }
mk src/base/base.h '#include <stdio.h>'
mk src/base/up.c '#include "app/app.h"'
mk src/model/model.h '#include "base/base.h"'
mk src/model/model-int.h '#include "model.h"'
mk src/engine/engine.h '#include "model/model.h"
#include "gpu/gpu.h"'
mk src/engine/cpu.c '#include "gpu/gpuplan.h"
#include "model/model-int.h"'
mk gpu/gpu.h '#include "engine/engine.h"'
mk gpu/gpuplan.h '#include "base/base.h"'
mk src/app/app.h '#include "engine/engine.h"
#include <lua.h>'
mk src/misc/x.c '#include "base/base.h"'
mk src/script/script.h '#include "app/app.h"
#include <lua.h>
#include "config.h"
#include "nowhere.h"'
check_tree "$tmp/self" >"$tmp/self.out" 2>/dev/null
rc=$?
cat >"$tmp/self.want" <<'EOF'
src/app/app.h:2: #include <lua.h>
src/base/up.c:1: base -> app
src/engine/cpu.c:1: engine -> gpu
src/engine/cpu.c:2: #include "model/model-int.h": src/model/model-int.h is internal
src/misc/x.c: in no layer
src/script/script.h:4: #include "nowhere.h" names no file
EOF
fails=0
if [ "$rc" -ne 1 ] || [ "$(grep -Evc '^(stale|checked):' "$tmp/self.out")" -ne "$(wc -l <"$tmp/self.want")" ]; then
	echo "FAIL: layers.sh self-test: exit $rc, expected 1 with $(wc -l <"$tmp/self.want") reports:" >&2
	cat "$tmp/self.out" >&2
	fails=$((fails + 1))
fi
while IFS= read -r want; do
	grep -qF -- "$want" "$tmp/self.out" || { echo "FAIL: layers.sh self-test: no report '$want'" >&2; fails=$((fails + 1)); }
done <"$tmp/self.want"

# ------------------------------------------------------------- the tree
check_tree "$top" >"$tmp/tree.out"
rc=$?
grep -v '^checked: ' "$tmp/tree.out"
if [ "$rc" -ne 0 ]; then
	echo "FAIL: layers.sh: includes against the layer rule (tests/e2e/layers.sh, doc/HACKING.md)" >&2
	fails=$((fails + 1))
fi

# ------------------------------------------------------------- file sizes
# one object per file: no hand-written source over 1,000 lines (a file that
# says "generated" in its first lines is exempt; doc/HACKING.md)
for f in "$top"/src/*/*.[ch] "$top"/gpu/*.cu "$top"/gpu/*.h "$top"/gpu/*.c; do
	[ -f "$f" ] || continue
	head -5 "$f" | grep -qi generated && continue
	n=$(wc -l <"$f")
	if [ "$n" -gt 1000 ]; then
		echo "FAIL: ${f#"$top"/} has $n lines: split it by object (at most 1,000; doc/HACKING.md)" >&2
		fails=$((fails + 1))
	fi
done

[ "$fails" -eq 0 ] || exit 1
echo "layers.sh: every include follows the layer table ($(sed -n 's/^checked: //p' "$tmp/tree.out"))"
