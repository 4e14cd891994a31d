// The C++ EZ-RPC peer of the bench: what Cap'n Proto's own C++ library
// (0.9.2 here) does over the two-party stream transport, for comparison
// with capnshm. It speaks the bench's schema (internal/echoproto/echo.capnp;
// only ping and echo are implemented). ../cppezrpc.go builds and runs it:
//
//	peer server ADDR
//	    serves Echo with EzRpcServer on ADDR (HOST:PORT, HOST:0, unix:PATH),
//	    prints "listening on ADDR port N" (N is 0 on a unix socket) once it
//	    listens, and exits when its stdin reaches end of file;
//	peer client ADDR WORKLOAD N SIZE
//	    connects with EzRpcClient and makes, after a warm-up, N sequential
//	    calls of WORKLOAD (ping, or echo of SIZE bytes), then prints one
//	    JSON line: {"workload":..,"size":..,"count":N,"p50_ns":..,
//	    "p90_ns":..,"p99_ns":..,"p999_ns":..,"max_ns":..,"mean_ns":..}.
//
// Each call is timed from building its request to having checked its
// answer, as the Go bench times its calls: an echo copies SIZE bytes into
// the request, and its answer is checked for its length and one byte.
//
// Message size: C++ 0.9.2 refuses to send a message larger than its own
// reader's traversal limit on the two-party transport (rpc-twoparty.c++),
// and the default limit is 8 Mi words (64 MiB), so a 64 MiB echo would not
// be sent. Both sides read with a traversal limit of readerWords, which
// fits echoes up to 256 MiB.

#include "echo.capnp.h"

#include <capnp/ez-rpc.h>
#include <kj/async-io.h>
#include <kj/debug.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <vector>

namespace {

constexpr uint64_t readerWords = (512ull << 20) / sizeof(capnp::word);

capnp::ReaderOptions readerOptions() {
  capnp::ReaderOptions o;
  o.traversalLimitInWords = readerWords;
  return o;
}

class EchoServer final : public Echo::Server {
 public:
  kj::Promise<void> ping(PingContext) override { return kj::READY_NOW; }

  kj::Promise<void> echo(EchoContext context) override {
    // Copied into the results, as the Go bench server does.
    context.getResults().setData(context.getParams().getData());
    return kj::READY_NOW;
  }
};

kj::Promise<void> drain(kj::AsyncInputStream& in, kj::ArrayPtr<kj::byte> buf) {
  return in.tryRead(buf.begin(), 1, buf.size()).then([&in, buf](size_t n) -> kj::Promise<void> {
    if (n == 0) {
      return kj::READY_NOW;
    }
    return drain(in, buf);
  });
}

int serve(const char* addr) {
  capnp::EzRpcServer server(kj::heap<EchoServer>(), addr, 0, readerOptions());
  auto& ws = server.getWaitScope();
  uint port = server.getPort().wait(ws);
  std::cout << "listening on " << addr << " port " << port << std::endl;
  auto in = server.getLowLevelIoProvider().wrapInputFd(0);
  auto buf = kj::heapArray<kj::byte>(256);
  drain(*in, buf).wait(ws);
  return 0;
}

int64_t percentile(const std::vector<int64_t>& sorted, double q) {
  // The nearest rank: the smallest value with at least q of the samples at
  // or below it.
  size_t rank = static_cast<size_t>(q * sorted.size() + 0.999999);
  rank = std::min(std::max(rank, size_t(1)), sorted.size());
  return sorted[rank - 1];
}

int client(const char* addr, kj::StringPtr workload, long n, long size) {
  bool isEcho = workload == "echo";
  if (!isEcho && workload != "ping") {
    std::cerr << "peer: unknown workload " << workload.cStr() << " (ping or echo)" << std::endl;
    return 2;
  }
  if (n < 1 || size < 0 || (isEcho && size == 0) || size > (256l << 20)) {
    std::cerr << "peer: need N >= 1 and, for echo, 0 < SIZE <= 256 MiB" << std::endl;
    return 2;
  }
  capnp::EzRpcClient conn(addr, 0, readerOptions());
  auto& ws = conn.getWaitScope();
  Echo::Client echo = conn.getMain<Echo>();

  auto src = kj::heapArray<kj::byte>(size);
  for (long i = 0; i < size; i++) {
    src[i] = static_cast<kj::byte>(3 + i * 7);
  }
  auto call = [&](long i) {
    if (!isEcho) {
      echo.pingRequest().send().wait(ws);
      return;
    }
    auto req = echo.echoRequest(capnp::MessageSize{static_cast<uint64_t>(size) / 8 + 8, 0});
    req.setData(src);
    auto res = req.send().wait(ws);
    auto d = res.getData();
    KJ_REQUIRE(d.size() == src.size(), "echo: wrong length back", d.size(), src.size());
    size_t k = static_cast<size_t>(i * 7919) % src.size();
    KJ_REQUIRE(d[k] == src[k], "echo: wrong byte back", k);
  };

  long warm = std::max(1l, std::min(1000l, n / 10));
  for (long i = 0; i < warm; i++) {
    call(i);
  }
  std::vector<int64_t> lat;
  lat.reserve(n);
  for (long i = 0; i < n; i++) {
    auto t0 = std::chrono::steady_clock::now();
    call(i);
    auto t1 = std::chrono::steady_clock::now();
    lat.push_back(std::chrono::duration_cast<std::chrono::nanoseconds>(t1 - t0).count());
  }
  double sum = 0;
  for (auto v : lat) {
    sum += v;
  }
  std::sort(lat.begin(), lat.end());
  std::cout << "{\"workload\":\"" << workload.cStr() << "\",\"size\":" << (isEcho ? size : 0)
            << ",\"count\":" << n << ",\"p50_ns\":" << percentile(lat, 0.50)
            << ",\"p90_ns\":" << percentile(lat, 0.90) << ",\"p99_ns\":" << percentile(lat, 0.99)
            << ",\"p999_ns\":" << percentile(lat, 0.999) << ",\"max_ns\":" << lat.back()
            << ",\"mean_ns\":" << static_cast<int64_t>(sum / n) << "}" << std::endl;
  return 0;
}

int usage(const char* prog) {
  std::cerr << "usage: " << prog << " server ADDR\n"
            << "       " << prog << " client ADDR ping|echo N SIZE\n"
               "The C++ EZ-RPC peer of capnshm's bench (see the source)." << std::endl;
  return 2;
}

// number parses a decimal argument, or returns -1.
long number(const char* s) {
  char* end = nullptr;
  long v = std::strtol(s, &end, 10);
  return (end == s || *end != '\0') ? -1 : v;
}

}  // namespace

int main(int argc, const char* argv[]) {
  if (argc < 3) {
    return usage(argv[0]);
  }
  kj::StringPtr role = argv[1];
  int rc = 2;
  KJ_IF_MAYBE(e, kj::runCatchingExceptions([&]() {
    if (role == "server" && argc == 3) {
      rc = serve(argv[2]);
    } else if (role == "client" && argc == 6) {
      rc = client(argv[2], argv[3], number(argv[4]), number(argv[5]));
    } else {
      rc = usage(argv[0]);
    }
  })) {
    std::cerr << "peer: " << e->getDescription().cStr() << std::endl;
    return 1;
  }
  return rc;
}
