#!/usr/bin/env bash
# docs/config.md embeds `switchyard config reference`: fail when the docs and the code disagree.
# Usage: config_reference_test.sh <switchyard binary> <docs/config.md>
set -eu
bin=$1
doc=$2
generated=$("$bin" config reference)
documented=$(sed -n '/<!-- BEGIN generated: switchyard config reference -->/,/<!-- END generated -->/p' "$doc" |
  sed '1d;$d')
if [ "$generated" != "$documented" ]; then
  echo "docs/config.md is out of date: regenerate its table with 'switchyard config reference'"
  diff <(echo "$documented") <(echo "$generated") || true
  exit 1
fi
echo "docs/config.md matches the config schema"
