#!/bin/sh
# Builds the C++ EZ-RPC calculator client (client.c++) and server
# (server.c++) into the directory given as the only argument:
#
#	examples/calculator/cpp/build.sh /tmp/calc
#	/tmp/calc/calculator-server 127.0.0.1:4000 &
#	/tmp/calc/calculator-client 127.0.0.1:4000
#
# It generates the C++ code of ../calculator/calculator.capnp (the official
# calculator schema, which the Go server and client use too) into a
# temporary directory and compiles both programs with it. Needs capnp, the
# Cap'n Proto C++ headers and libraries (pkg-config capnp-rpc), g++ and go
# (only to find go.capnp, which the schema imports for its Go annotations;
# set GO_CAPNP_STD to the directory holding go.capnp to do without). On
# Debian/Ubuntu:
#
#	apt-get install -y capnproto libcapnp-dev g++ pkg-config
set -eu

if [ $# -ne 1 ]; then
	echo "usage: $0 OUTDIR" >&2
	exit 2
fi
mkdir -p "$1"
out=$(cd "$1" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
schema_dir=$(cd "$here/../calculator" && pwd)
std=${GO_CAPNP_STD:-$(cd "$here" && go list -m -f '{{.Dir}}' capnproto.org/go/capnp/v3)/std}

gen=$(mktemp -d)
trap 'rm -rf "$gen"' EXIT INT TERM

capnp compile -I "$std" --src-prefix="$schema_dir" -oc++:"$gen" "$schema_dir/calculator.capnp"
flags="-std=c++14 -O1 -Wall -I $gen"
# shellcheck disable=SC2046,SC2086 # pkg-config and $flags are several words
g++ $flags $(pkg-config --cflags capnp-rpc) -c -o "$gen/calculator.capnp.o" "$gen/calculator.capnp.c++"
for prog in client server; do
	# shellcheck disable=SC2046,SC2086
	g++ $flags -o "$out/calculator-$prog" "$here/$prog.c++" "$gen/calculator.capnp.o" \
		$(pkg-config --cflags --libs capnp-rpc)
done
