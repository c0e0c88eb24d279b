#!/bin/sh
# bench/evals.sh: run the KV-policy evaluations behind doc/EVALS.md.
#
#   sh bench/evals.sh KVSCOPE OUTDIR [rps|passkey|passkey-long|recall|heads|all]
#
# Every run appends its --json line to OUTDIR/rps.jsonl or
# OUTDIR/passkey.jsonl (its text table goes to OUTDIR/*.txt); then
# `python3 bench/evals-table.py OUTDIR` prints the markdown tables.
# Sizes come from the environment (defaults = the runs in doc/EVALS.md):
#   RPS_ROUNDS (300), RPS_BUDGETS ("256 512"), RPS_DOMINANT ("rock paper scissors")
#   PK_LENGTHS (2k,4k,8k,16k), PK_FULL_LENGTHS (2k,4k,8k), PK_DEPTHS (10,30,50,70,90),
#   PK_SAMPLES (2), PK_BUDGETS ("1024 2048"), SEED (1), EV_OPTS (options every run gets
#   as well, e.g. "-t 1")
# "passkey-long" runs 32k prompts (depths 10,50,90, one sample, budget 1024)
# for the bounded policies into OUTDIR/passkey-long.jsonl. "recall" runs
# eval recall (every policy, span word and off) into OUTDIR/recall.jsonl:
#   RC_TURNS (10,30), RC_TURNS_512 (30), RC_BUDGETS ("128 256 512"), RC_SAMPLES (2),
#   RC_POLICIES ("sirllm h2o snapkv streaming lminfinite window"; a policy
#   with options of its own, snapkv:heads=1, takes span as one more), RC_SPANS
#   ("word off"), RC_FACTS (every kind; "code" runs the code fact alone),
#   RC_FULL (1; 0 leaves out the full cache's run)
# The 100-turn grid (doc/EVALS.md) is
#   RC_TURNS=100 RC_TURNS_512=100 RC_SAMPLES=1 RC_FACTS=code RC_POLICIES="sirllm h2o
#   snapkv streaming lminfinite window snapkv:heads=1 h2o:heads=1 kvzip" evals.sh ... recall
# "heads" runs the per-head and query-agnostic policies (snapkv:heads=1,
# h2o:heads=1, kvzip) through recall (RC_TURNS as above), passkey (budget
# PK_BUDGETS, PK_LENGTHS) and rps (RPS_ROUNDS, RPS_BUDGETS), into the same
# files; HD_POLICIES overrides the list.
set -eu
bin=${1:?usage: evals.sh KVSCOPE OUTDIR [rps|passkey|passkey-long|recall|heads|all]}
out=${2:?usage: evals.sh KVSCOPE OUTDIR [rps|passkey|passkey-long|recall|heads|all]}
what=${3:-all}
mkdir -p "$out"
seed=${SEED:-1}

# One run: NAME then the command's arguments; appends the JSON line.
run() {
	name=$1
	shift
	echo "== kvscope $*" >&2
	# shellcheck disable=SC2086 # EV_OPTS is a list of options
	"$bin" "$@" ${EV_OPTS:-} --seed "$seed" --json >"$out/run.txt" 2>"$out/run.err" || {
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
	facts=${RC_FACTS:-number,name,code,day}
	if [ "${RC_FULL:-1}" = 1 ]; then
		run recall eval recall --policy full --turns "${RC_TURNS:-10,30}" --samples "$samples" \
			--facts "$facts"
	fi
	for p in ${RC_POLICIES:-sirllm h2o snapkv streaming lminfinite window}; do
		sep=:
		case $p in *:*) sep=, ;; esac
		for sp in ${RC_SPANS:-word off}; do
			for b in ${RC_BUDGETS:-128 256 512}; do
				# at 512 the 10-turn conversations (about 310 tokens) fit whole
				t=${RC_TURNS:-10,30}
				[ "$b" -ge 512 ] && t=${RC_TURNS_512:-30}
				run recall eval recall --policy "$p${sep}span=$sp" --kv-budget "$b" --turns "$t" \
					--samples "$samples" --facts "$facts"
			done
		done
	done
fi

if [ "$what" = heads ] || [ "$what" = all ]; then
	for p in ${HD_POLICIES:-snapkv:heads=1 h2o:heads=1 kvzip}; do
		for b in ${RC_BUDGETS:-128 256 512}; do
			run recall eval recall --policy "$p" --kv-budget "$b" --turns "${RC_TURNS:-10,30}" \
				--samples "${RC_SAMPLES:-2}"
		done
		for b in ${PK_BUDGETS:-1024}; do
			run passkey eval passkey --policy "$p" --kv-budget "$b" \
				--lengths "${PK_LENGTHS:-2k,4k,8k}" --depths "${PK_DEPTHS:-10,30,50,70,90}" \
				--samples "${PK_SAMPLES:-2}"
		done
		for b in ${RPS_BUDGETS:-256 512}; do
			run rps eval rps --rounds "${RPS_ROUNDS:-300}" --dominant rock --policy "$p" \
				--kv-budget "$b"
		done
	done
fi

if [ "$what" = passkey-long ] || [ "$what" = all ]; then
	for p in streaming sirllm lminfinite h2o; do
		run passkey-long eval passkey --policy "$p" --kv-budget 1024 --lengths 32k \
			--depths 10,50,90 --samples 1
	done
fi
