module github.com/capnshm/capnshm

go 1.26.8

require (
	capnproto.org/go/capnp/v3 v3.0.1-alpha.2
	github.com/HdrHistogram/hdrhistogram-go v1.4.0
	github.com/edsrzf/mmap-go v1.2.0
	github.com/jezek/xgb v1.1.1
	github.com/schollz/progressbar/v3 v3.19.1
	golang.org/x/sync v0.7.0
	golang.org/x/sys v0.49.0
)

require (
	github.com/colega/zeropool v0.0.0-20230505084239-6fb4a4f75381 // indirect
	github.com/mitchellh/colorstring v0.0.0-20190213212951-d06e56a500db // indirect
	github.com/rivo/uniseg v0.4.7 // indirect
	golang.org/x/term v0.44.0 // indirect
)
