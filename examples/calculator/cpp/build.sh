#!/bin/sh
# Builds the C++ EZ-RPC calculator client (client.c++) into the file given
# as the only argument:
#
#	examples/calculator/cpp/build.sh /tmp/calculator-client
#
# It generates the C++ code of ../calculator/calculator.capnp (the schema
# the Go server uses) into a temporary directory and compiles it with the
# client. Needs capnp, the Cap'n Proto C++ headers and libraries
# (pkg-config capnp-rpc), g++ and go (only to find go.capnp, which the
# schema imports for its Go annotations; set GO_CAPNP_STD to the directory
# holding go.capnp to do without). On Debian/Ubuntu:
#
#	apt-get install -y capnproto libcapnp-dev g++ pkg-config
set -eu

if [ $# -ne 1 ]; then
	echo "usage: $0 OUTPUT" >&2
	exit 2
fi
out=$1
here=$(cd "$(dirname "$0")" && pwd)
schema_dir=$(cd "$here/../calculator" && pwd)
std=${GO_CAPNP_STD:-$(cd "$here" && go list -m -f '{{.Dir}}' capnproto.org/go/capnp/v3)/std}

gen=$(mktemp -d)
trap 'rm -rf "$gen"' EXIT INT TERM

capnp compile -I "$std" --src-prefix="$schema_dir" -oc++:"$gen" "$schema_dir/calculator.capnp"
# shellcheck disable=SC2046 # pkg-config prints several words
g++ -std=c++14 -O1 -Wall -I "$gen" -o "$out" \
	"$here/client.c++" "$gen/calculator.capnp.c++" \
	$(pkg-config --cflags --libs capnp-rpc)
