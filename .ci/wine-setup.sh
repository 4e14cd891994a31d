#!/bin/bash
# wine-setup.sh: prepare Wine to run this project's GOOS=windows tests.
#
# Recipe and reasons: /work/shared/notes/wine-windows.md (§2 and §5). On a
# fresh Debian 12 machine (as root) it installs wine64 and
# binutils-mingw-w64-x86-64, creates a 64-bit prefix under /tmp, starts a
# persistent wineserver detached from our pipes (without it `go test` stalls),
# sets the prefix to Windows 10 with the null graphics driver, builds the bcryptprimitives.dll shim (without
# it no Go 1.23+ binary starts), and writes a go_windows_amd64_exec wrapper.
# Everything is idempotent; a second run takes about a second.
#
# Use it either way:
#   source .ci/wine-setup.sh     # prepares, then exports WINEPREFIX, WINEDEBUG, PATH
#   bash .ci/wine-setup.sh       # prepares, then prints the exports to eval
# Afterwards `GOOS=windows GOARCH=amd64 go test ./...` runs under Wine.
# Stop the wineserver with: /usr/lib/wine/wineserver -k  (with WINEPREFIX set)
#
# Overrides: CAPNSHM_WINEPREFIX (default /tmp/capnshm-wineprefix),
# CAPNSHM_WINE_EXEC_DIR (default /tmp/capnshm-wine-exec).

capnshm_wine_setup() {
	local prefix="${CAPNSHM_WINEPREFIX:-/tmp/capnshm-wineprefix}"
	local execdir="${CAPNSHM_WINE_EXEC_DIR:-/tmp/capnshm-wine-exec}"
	local wine=/usr/lib/wine/wine64 wineserver=/usr/lib/wine/wineserver

	# 1. Packages (notes §1): wine64 only (no wine32, no /usr/bin/wine
	# wrapper), and binutils for the shim.
	local missing=()
	[ -x "$wine" ] && [ -x "$wineserver" ] || missing+=(wine64)
	command -v x86_64-w64-mingw32-as >/dev/null 2>&1 &&
		command -v x86_64-w64-mingw32-ld >/dev/null 2>&1 &&
		command -v x86_64-w64-mingw32-dlltool >/dev/null 2>&1 || missing+=(binutils-mingw-w64-x86-64)
	if [ ${#missing[@]} -gt 0 ]; then
		echo "wine-setup: installing ${missing[*]}" >&2
		local sudo=
		[ "$(id -u)" -eq 0 ] || sudo=sudo
		$sudo apt-get update -qq >&2 || return 1
		DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2 || return 1
	fi

	# 2. Environment: headless, quiet, 64-bit, prefix under /tmp.
	export WINEPREFIX="$prefix" WINEDEBUG=-all WINEARCH=win64
	unset DISPLAY WAYLAND_DISPLAY

	# 3. Persistent wineserver, then the prefix, both detached from our
	# stdout/stderr so that Wine's services never hold a test's pipes open.
	mkdir -p "$WINEPREFIX" || return 1
	# Starting a second server on the same prefix fails harmlessly.
	"$wineserver" -p </dev/null >/dev/null 2>&1 || true
	# About 8 s the first time, 0.7 s on an existing prefix; it also starts
	# the services in the (now persistent) wineserver session.
	"$wine" wineboot --init </dev/null >/dev/null 2>&1 || true
	local sys32="$WINEPREFIX/drive_c/windows/system32"
	if [ ! -d "$sys32" ]; then
		echo "wine-setup: wineboot did not create $sys32" >&2
		return 1
	fi
	# Go supports Windows 10 and later; Debian's default prefix says Windows 7.
	local marker="$WINEPREFIX/.capnshm-win10"
	if [ ! -e "$marker" ]; then
		"$wine" winecfg -v win10 </dev/null >/dev/null 2>&1 || {
			echo "wine-setup: winecfg -v win10 failed" >&2
			return 1
		}
		: >"$marker"
	fi

	# Windows without a display (notes/loop-windows.md): the null graphics
	# driver lets a test create real top-level windows (the loop's
	# examples/window); message-only windows work without it.
	local gmarker="$WINEPREFIX/.capnshm-graphics-null"
	if [ ! -e "$gmarker" ]; then
		"$wine" reg add 'HKCU\Software\Wine\Drivers' /v Graphics /t REG_SZ /d null /f </dev/null >/dev/null 2>&1 || {
			echo "wine-setup: setting the null graphics driver failed" >&2
			return 1
		}
		: >"$gmarker"
	fi

	# 4. bcryptprimitives.dll shim (notes §2.1, §5): ProcessPrng forwards to
	# advapi32!SystemFunction036 (RtlGenRandom), BOOLEAN widened to BOOL. It
	# must be in system32: the Go runtime loads it with a system32-only search.
	local dll="$sys32/bcryptprimitives.dll"
	if [ ! -s "$dll" ]; then
		local s
		s=$(mktemp -d /tmp/capnshm-bcp.XXXXXX) || return 1
		printf '%s\n' \
			'.text' \
			'.globl ProcessPrng' \
			'ProcessPrng:' \
			'subq $40,%rsp' \
			'call *__imp_SystemFunction036(%rip)' \
			'movzbl %al,%eax' \
			'addq $40,%rsp' \
			'ret' \
			'.globl DllMain' \
			'DllMain:' \
			'movl $1,%eax' \
			'ret' >"$s/prng.s"
		printf '%s\n' 'LIBRARY advapi32.dll' 'EXPORTS' 'SystemFunction036' >"$s/advapi32.def"
		printf '%s\n' 'LIBRARY bcryptprimitives.dll' 'EXPORTS' 'ProcessPrng' >"$s/bcp.def"
		if ! { x86_64-w64-mingw32-as -o "$s/prng.o" "$s/prng.s" &&
			x86_64-w64-mingw32-dlltool -d "$s/advapi32.def" -l "$s/libadvapi32.a" &&
			x86_64-w64-mingw32-ld -shared --entry DllMain -o "$s/bcryptprimitives.dll" \
				"$s/prng.o" "$s/bcp.def" "$s/libadvapi32.a" &&
			mv "$s/bcryptprimitives.dll" "$dll"; }; then
			echo "wine-setup: building bcryptprimitives.dll failed" >&2
			rm -rf "$s"
			return 1
		fi
		rm -rf "$s"
	fi

	# 5. The exec wrapper `go test` and `go run` look up by name. It carries
	# the environment itself, so PATH alone is enough later; `exec` lets a
	# go test timeout kill reach the Windows process.
	mkdir -p "$execdir" || return 1
	local w="$execdir/go_windows_amd64_exec"
	local want
	want=$(printf '%s\n' \
		'#!/bin/sh' \
		'# Generated by capnshm .ci/wine-setup.sh: runs GOOS=windows binaries under Wine.' \
		"export WINEPREFIX='$WINEPREFIX' WINEDEBUG=-all WINEARCH=win64" \
		'unset DISPLAY WAYLAND_DISPLAY' \
		"exec $wine \"\$@\"")
	if [ ! -x "$w" ] || [ "$(cat "$w")" != "$want" ]; then
		printf '%s\n' "$want" >"$w.tmp.$$" && chmod 755 "$w.tmp.$$" && mv "$w.tmp.$$" "$w" || return 1
	fi
	case ":$PATH:" in
	*":$execdir:"*) ;;
	*) export PATH="$execdir:$PATH" ;;
	esac
	export CAPNSHM_WINE_EXEC_DIR="$execdir" CAPNSHM_WINEPREFIX="$WINEPREFIX"
	return 0
}

if [ "${BASH_SOURCE[0]}" != "$0" ]; then
	# Sourced: prepare and leave the environment exported in the caller.
	capnshm_wine_setup
else
	set -u
	capnshm_wine_setup || exit 1
	printf 'export WINEPREFIX=%q WINEDEBUG=-all WINEARCH=win64 PATH=%q\nunset DISPLAY WAYLAND_DISPLAY\n' "$WINEPREFIX" "$PATH"
fi
