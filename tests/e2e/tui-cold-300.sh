#!/bin/sh
# tui-cold-300.sh: the "done when" run at the size make check
# allows: tui-cold.sh with 300 filler turns on a tiny random-weight model
# (KVSCOPE_TUI_COLD_MODEL=tiny). The fact is stated in turn 1; three
# hundred exchanges later the question brings it back from the cold tier,
# the KV pane counts a recalled region and the fact's first token in the
# retention strip says "recalled from turn 1" (or the turn before, where
# its block began), with a summary score and a BM25 above 0. The same run
# on the default model is KVSCOPE_TUI_COLD_TURNS=300 sh tests/e2e/tui-cold.sh
# (doc/EVALS.md has its time).
KVSCOPE_TUI_COLD_TURNS=${KVSCOPE_TUI_COLD_TURNS:-300}
KVSCOPE_TUI_COLD_MODEL=tiny
export KVSCOPE_TUI_COLD_TURNS KVSCOPE_TUI_COLD_MODEL
exec sh "${KVSCOPE_SRCDIR:?}/tests/e2e/tui-cold.sh"
