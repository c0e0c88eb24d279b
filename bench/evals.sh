#!/bin/sh
# bench/evals.sh: run the KV-policy evaluations behind doc/EVALS.md.
#
#   sh bench/evals.sh KVSCOPE OUTDIR [rps|passkey|passkey-long|recall|all]
#
# Every run appends its --json line to OUTDIR/rps.jsonl or
# OUTDIR/passkey.jsonl (its text table goes to OUTDIR/*.txt); then
# `python3 bench/evals-table.py OUTDIR` prints the markdown tables.
# Sizes come from the environment (defaults = the runs in doc/EVALS.md):
#   RPS_ROUNDS (300), RPS_BUDGETS ("256 512"), RPS_DOMINANT ("rock paper scissors")
#   PK_LENGTHS (2k,4k,8k,16k), PK_FULL_LENGTHS (2k,4k,8k), PK_DEPTHS (10,30,50,70,90),
#   PK_SAMPLES (2), PK_BUDGETS ("1024 2048"), SEED (1)
# "passkey-long" runs 32k prompts (depths 10,50,90, one sample, budget 1024)
# for the bounded policies into OUTDIR/passkey-long.jsonl. "recall" runs
# eval recall (every policy, span word and off) into OUTDIR/recall.jsonl:
#   RC_TURNS (10,30), RC_TURNS_512 (30), RC_BUDGETS ("128 256 512"), RC_SAMPLES (2)
set -eu
bin=${1:?usage: evals.sh KVSCOPE OUTDIR [rps|passkey|passkey-long|recall|all]}
out=${2:?usage: evals.sh KVSCOPE OUTDIR [rps|passkey|passkey-long|recall|all]}
what=${3:-all}
mkdir -p "$out"
seed=${SEED:-1}

# One run: NAME then the command's arguments; appends the JSON line.
run() {
	name=$1
	shift
	echo "== kvscope $*" >&2
	"$bin" "$@" --seed "$seed" --json >"$out/run.txt" 2>"$out/run.err" || {
		echo "failed: kvscope $*" >&2
		cat "$out/run.err" >&2
		return 1
	}
	tail -n 1 "$out/run.txt" >>"$out/$name.jsonl"
	sed '$d' "$out/run.txt" >>"$out/$name.txt"
}

if [ "$what" = rps ] || [ "$what" = all ]; then
	rounds=${RPS_ROUNDS:-300}
	for dom in ${RPS_DOMINANT:-rock paper scissors}; do
		run rps eval rps --rounds "$rounds" --dominant "$dom" --policy full
		for b in ${RPS_BUDGETS:-256 512}; do
			for p in streaming sirllm sirllm:mode=compat lminfinite h2o snapkv; do
				run rps eval rps --rounds "$rounds" --dominant "$dom" --policy "$p" --kv-budget "$b"
			done
		done
	done
fi

if [ "$what" = passkey ] || [ "$what" = all ]; then
	depths=${PK_DEPTHS:-10,30,50,70,90}
	samples=${PK_SAMPLES:-2}
	run passkey eval passkey --policy full --lengths "${PK_FULL_LENGTHS:-2k,4k,8k}" \
		--depths "$depths" --samples "$samples"
	for b in ${PK_BUDGETS:-1024 2048}; do
		for p in streaming sirllm lminfinite h2o snapkv; do
			run passkey eval passkey --policy "$p" --kv-budget "$b" \
				--lengths "${PK_LENGTHS:-2k,4k,8k,16k}" --depths "$depths" --samples "$samples"
		done
	done
fi

if [ "$what" = recall ] || [ "$what" = all ]; then
	samples=${RC_SAMPLES:-2}
	run recall eval recall --policy full --turns "${RC_TURNS:-10,30}" --samples "$samples"
	for p in sirllm h2o snapkv streaming lminfinite window; do
		for sp in word off; do
			for b in ${RC_BUDGETS:-128 256 512}; do
				# at 512 the 10-turn conversations (about 310 tokens) fit whole
				t=${RC_TURNS:-10,30}
				[ "$b" -ge 512 ] && t=${RC_TURNS_512:-30}
				run recall eval recall --policy "$p:span=$sp" --kv-budget "$b" --turns "$t" \
					--samples "$samples"
			done
		done
	done
fi

if [ "$what" = passkey-long ] || [ "$what" = all ]; then
	for p in streaming sirllm lminfinite h2o; do
		run passkey-long eval passkey --policy "$p" --kv-budget 1024 --lengths 32k \
			--depths 10,50,90 --samples 1
	done
fi
