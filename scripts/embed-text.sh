#!/bin/sh
# embed-text.sh FILE NAME: print a C file defining `const char NAME[]` with
# FILE's bytes (a text file) and `const size_t NAME_len`. The build embeds
# data/tlg-prompts.tsv with it, so `kvscope eval tlg` needs no data files.
set -eu
file=$1
name=$2
printf '/* Generated from %s by scripts/embed-text.sh; do not edit. */\n' "$(basename "$file")"
printf '#include <stddef.h>\n'
printf 'extern const char %s[];\nextern const size_t %s_len;\n' "$name" "$name"
printf 'const char %s[] =\n' "$name"
tab=$(printf '\t')
LC_ALL=C sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' -e "s/$tab/\\\\t/g" -e 's/?/\\?/g' \
	-e 's/^/	"/' -e 's/$/\\n"/' "$file"
printf '\t"";\n'
printf 'const size_t %s_len = sizeof %s - 1;\n' "$name" "$name"
